"""One interface over the job store for the `tuneforge jobs` / `tuneforge models` commands:
directly on a data directory (`StoreClient`, the operator's view: every organization unless
one is given) or through a running server's HTTP API (`HttpClient`, as one API key's
organization). Both return OpenAI's JSON shapes as dicts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from tuneforge.jobs.schemas import CheckpointPublic, EventPublic, JobPublic
from tuneforge.jobs.store import JobStore

__all__ = ["HttpClient", "JobsClient", "StoreClient"]


class JobsClient(Protocol):
    def list_jobs(self, limit: int) -> list[dict[str, Any]]: ...
    def get_job(self, job_id: str) -> dict[str, Any]: ...
    def events(self, job_id: str, limit: int) -> list[dict[str, Any]]: ...
    def checkpoints(self, job_id: str) -> list[dict[str, Any]]: ...
    def cancel(self, job_id: str) -> dict[str, Any]: ...
    def pause(self, job_id: str) -> dict[str, Any]: ...
    def resume(self, job_id: str) -> dict[str, Any]: ...
    def models(self) -> list[dict[str, Any]]: ...


class StoreClient:
    """Reads and changes the store in `data_dir` directly (no server needed)."""

    def __init__(self, data_dir: Path, url: str | None = None, org: str | None = None):
        self.store = JobStore.open(data_dir, url)
        self.org = org

    def list_jobs(self, limit: int) -> list[dict[str, Any]]:
        page = self.store.list_jobs(self.org, limit=limit)
        return [JobPublic.of(j).model_dump(mode="json") for j in page.data]

    def get_job(self, job_id: str) -> dict[str, Any]:
        return JobPublic.of(self.store.get_job(self.org, job_id)).model_dump(mode="json")

    def events(self, job_id: str, limit: int) -> list[dict[str, Any]]:
        page = self.store.list_events(self.org, job_id, limit=limit)
        return [EventPublic.of(e).model_dump(mode="json") for e in page.data]

    def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        page = self.store.list_checkpoints(self.org, job_id, limit=100)
        return [CheckpointPublic.of(c).model_dump(mode="json") for c in page.data]

    def cancel(self, job_id: str) -> dict[str, Any]:
        return JobPublic.of(self.store.cancel_job(self.org, job_id)).model_dump(mode="json")

    def pause(self, job_id: str) -> dict[str, Any]:
        return JobPublic.of(self.store.pause_job(self.org, job_id)).model_dump(mode="json")

    def resume(self, job_id: str) -> dict[str, Any]:
        return JobPublic.of(self.store.resume_job(self.org, job_id)).model_dump(mode="json")

    def models(self) -> list[dict[str, Any]]:
        return [
            {
                "id": m.id,
                "object": "model",
                "created": m.created,
                "owned_by": m.org,
                "kind": m.kind,
                "base_model": m.base_model,
                "path": m.path,
            }
            for m in self.store.list_models(self.org)
        ]

    def model_path(self, model_id: str) -> Path:
        for m in self.store.list_models(self.org):
            if m.id == model_id:
                return Path(m.path)
        raise KeyError(model_id)


class HttpClient:
    """Talks to a TuneForge (or OpenAI-compatible) server's fine-tuning API."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 30.0):
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        r = self.http.request(method, path, **kw)
        if r.status_code >= 400:
            try:
                message = r.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = r.text
            raise RuntimeError(f"HTTP {r.status_code}: {message}")
        return r.json()

    def list_jobs(self, limit: int) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/fine_tuning/jobs", params={"limit": limit})["data"]

    def get_job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/fine_tuning/jobs/{job_id}")

    def events(self, job_id: str, limit: int) -> list[dict[str, Any]]:
        path = f"/v1/fine_tuning/jobs/{job_id}/events"
        return self._call("GET", path, params={"limit": limit})["data"]

    def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        path = f"/v1/fine_tuning/jobs/{job_id}/checkpoints"
        return self._call("GET", path, params={"limit": 100})["data"]

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/fine_tuning/jobs/{job_id}/cancel")

    def pause(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/fine_tuning/jobs/{job_id}/pause")

    def resume(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/fine_tuning/jobs/{job_id}/resume")

    def models(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/models")["data"]
