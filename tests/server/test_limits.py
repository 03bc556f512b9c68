"""Back-pressure and lifecycle: 429 when the queue is full, disconnects free slots, 503 while
loading, organizations from a keys file, fine-tunes registered by another component."""

from __future__ import annotations

import shutil
import threading
import time

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from tests.server.conftest import keys_file, settings_for, start_server, stop_server
from tuneforge.inference.registry import ModelEntry
from tuneforge.server.app import create_app

CHAT = [{"role": "user", "content": "Hello!"}]


@pytest.fixture(scope="module")
def small_server(model_store, tmp_path_factory):
    """One batch slot and one queue place; no API keys (every caller is org "default")."""
    settings = settings_for(
        model_store, tmp_path_factory.mktemp("data"), max_batch_size=1, max_queue=1, retry_after_s=3
    )
    running = start_server(settings)
    yield running
    stop_server(running)


def _long_stream(url: str):
    """A streaming request that holds the only slot for a while."""
    return httpx.stream(
        "POST",
        url + "/v1/chat/completions",
        json={
            "model": "tiny-llama",
            "messages": CHAT,
            "max_tokens": 400,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        timeout=60,
    )


def _await_tokens(lines) -> None:
    """Read events until the first generated token: the request holds a batch slot.

    `lines` is one `response.iter_lines()` iterator that the caller keeps: dropping a
    half-read httpx iterator closes the connection, which the server sees as a disconnect.
    """
    for line in lines:
        if line.startswith("data: {") and '"content":""' not in line:
            return


def _wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_queue_full_is_429_with_retry_after(small_server):
    engine = small_server.app.state.engine
    client = OpenAI(base_url=small_server.v1, api_key="unused", max_retries=0, timeout=60)
    with _long_stream(small_server.url) as running:
        lines = running.iter_lines()
        _await_tokens(lines)
        # The second request waits in the queue; a third finds it full.
        with httpx.Client(timeout=60) as http:
            queued: dict = {}

            def send_queued():
                queued["response"] = http.post(
                    small_server.v1 + "/chat/completions",
                    json={"model": "tiny-llama", "messages": CHAT, "max_tokens": 2},
                )

            thread = threading.Thread(target=send_queued)
            thread.start()
            assert _wait_until(lambda: engine.queue_depth() == 1)
            with pytest.raises(openai.RateLimitError) as err:
                client.chat.completions.create(model="tiny-llama", messages=CHAT, max_tokens=2)
            assert err.value.response.headers["retry-after"] == "3"
            assert err.value.body["type"] == "rate_limit_error"
            running.close()  # the client goes away: its slot is freed, the queued one runs
            thread.join(timeout=30)
    assert queued["response"].status_code == 200
    assert _wait_until(lambda: engine._running_rows() == 0)


def test_disconnect_frees_the_slot(small_server):
    engine = small_server.app.state.engine
    # Streaming: read one event, hang up.
    with _long_stream(small_server.url) as response:
        lines = response.iter_lines()
        _await_tokens(lines)
        assert _wait_until(lambda: engine._running_rows() == 1)
        assert engine._running_rows() == 1
    assert _wait_until(lambda: engine._running_rows() == 0, timeout=3)
    # Non-streaming: the client times out while the server is generating.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            small_server.v1 + "/chat/completions",
            json={"model": "tiny-llama", "messages": CHAT, "max_tokens": 450, "ignore_eos": True},
            timeout=0.5,
        )
    assert _wait_until(lambda: engine._running_rows() == 0, timeout=3)


def test_503_while_loading(model_store, tmp_path):
    app = create_app(settings_for(model_store))
    http = TestClient(
        app, base_url="http://localhost"
    )  # no `with`: lifespan (and so loading) never runs
    health = http.get("/health")
    assert health.status_code == 503 and health.json()["status"] == "loading"
    chat = http.post("/v1/chat/completions", json={"model": "tiny-llama", "messages": CHAT})
    assert chat.status_code == 503
    assert chat.json()["error"]["code"] == "model_loading"


def test_keys_file_organizations_and_registered_fine_tunes(model_store, tmp_path):
    """The seam for the job store: `registry.add_source`, scoped by organization."""
    keys = keys_file(tmp_path, {"sk-a": "org-a", "sk-b": "org-b"})
    app = create_app(settings_for(model_store, api_keys_file=keys))
    jobs_root = tmp_path / "jobs"
    jobs_root.mkdir()
    shutil.copytree(model_store / "acme" / "support:v1", jobs_root / "job-1")
    deleted: list[str] = []

    class JobModels:
        def list_models(self):
            if "ft:tiny-llama:org-a::job1" in deleted:
                return []
            return [
                ModelEntry(
                    id="ft:tiny-llama:org-a::job1",
                    path=jobs_root / "job-1",
                    owned_by="org-a",
                    org="org-a",
                    created=1,
                ),
                # Outside the source's root: ignored.
                ModelEntry(id="ft:evil", path=model_store / "tiny-llama", org="org-a"),
            ]

        def delete_model(self, model_id):
            deleted.append(model_id)
            return True

    app.state.registry.add_source(JobModels(), root=jobs_root)
    with TestClient(app, base_url="http://localhost") as http:
        assert _wait_until(lambda: http.get("/health").status_code == 200)
        a = {"Authorization": "Bearer sk-a"}
        b = {"Authorization": "Bearer sk-b"}
        ids_a = [m["id"] for m in http.get("/v1/models", headers=a).json()["data"]]
        ids_b = [m["id"] for m in http.get("/v1/models", headers=b).json()["data"]]
        assert "ft:tiny-llama:org-a::job1" in ids_a and "ft:evil" not in ids_a
        assert "ft:tiny-llama:org-a::job1" not in ids_b
        body = {"model": "ft:tiny-llama:org-a::job1", "messages": CHAT, "max_tokens": 3}
        assert http.post("/v1/chat/completions", json=body, headers=a).status_code == 200
        assert http.post("/v1/chat/completions", json=body, headers=b).status_code == 404
        assert http.get("/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
        gone = http.delete("/v1/models/ft:tiny-llama:org-a::job1", headers=a)
        assert gone.status_code == 200 and gone.json()["deleted"] is True
        assert deleted == ["ft:tiny-llama:org-a::job1"]
