"""A real TuneForge server on a loopback port: a tiny base model and two tiny LoRA adapters."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from tests.inference.adapters import build_adapter
from tuneforge.modeling.tiny import build_model, save_model_folder
from tuneforge.server.app import create_app
from tuneforge.server.settings import ServerSettings

API_KEY = "sk-test-key"
# Two organizations, one key each (an API keys file's contents).
KEYS = {"sk-org-a": "org-a", "sk-org-b": "org-b"}


def settings_for(model_dir: Path, data_dir: Path | None = None, **overrides: Any) -> ServerSettings:
    """A test server's settings: base `tiny-llama` from `model_dir`, one torch thread, the
    job store in `data_dir` (the settings' default when None); `overrides` on top."""
    values: dict[str, Any] = {
        "model_dir": model_dir,
        "base_model": "tiny-llama",
        "torch_threads": 1,
    }
    if data_dir is not None:
        values["data_dir"] = data_dir
    return ServerSettings(**{**values, **overrides})


def keys_file(folder: Path, keys: dict[str, str] = KEYS) -> Path:
    """`folder/keys.json` holding `keys` (key -> organization), for `api_keys_file`."""
    path = folder / "keys.json"
    path.write_text(json.dumps(keys))
    return path


@pytest.fixture(scope="session")
def model_store(tmp_path_factory, tiny_tokenizer) -> Path:
    """models/ with the base `tiny-llama` and adapters `acme/support:v1`, `acme/sales:v1`."""
    root = tmp_path_factory.mktemp("store") / "models"
    base = save_model_folder(
        build_model(tiny_tokenizer, arch="llama"), tiny_tokenizer, root / "tiny-llama"
    )
    build_adapter(tiny_tokenizer, base, root / "acme" / "support:v1", seed=1)
    build_adapter(tiny_tokenizer, base, root / "acme" / "sales:v1", seed=2)
    return root


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    url: str
    settings: ServerSettings
    app: object
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def v1(self) -> str:
        return self.url + "/v1"


def start_server(settings: ServerSettings) -> RunningServer:
    """Start Uvicorn in a thread and wait until /health answers 200."""
    app = create_app(settings)
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return RunningServer(url, settings, app, server, thread)
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    server.should_exit = True
    raise RuntimeError("server did not become ready")


def stop_server(running: RunningServer) -> None:
    running.server.should_exit = True
    running.thread.join(timeout=20)


@pytest.fixture(scope="session")
def server(model_store, tmp_path_factory) -> Iterator[RunningServer]:
    """The main server: API key required, base `tiny-llama`, adapters on first use."""
    settings = settings_for(
        model_store,
        tmp_path_factory.mktemp("data"),
        api_keys=[API_KEY],
        max_batch_size=8,
        max_tokens_cap=256,
        max_body_bytes=64 * 1024,
    )
    running = start_server(settings)
    yield running
    stop_server(running)


@pytest.fixture()
def client(server):
    from openai import OpenAI

    with OpenAI(base_url=server.v1, api_key=API_KEY, max_retries=0, timeout=60) as c:
        yield c


def fuzzed_api(settings: ServerSettings) -> Iterator[Any]:
    """Start a server with `settings`, yield schemathesis' view of its own OpenAPI document
    (fuzzing only: the exhaustive coverage phase takes minutes here), then stop it."""
    import schemathesis

    running = start_server(settings)
    schema = schemathesis.openapi.from_url(
        running.url + "/openapi.json", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    schema.config.phases.coverage.enabled = False
    yield schema
    stop_server(running)


def call_without_5xx(case: Any) -> None:
    """Send a generated request with the key; the answer must not be a server error."""
    from schemathesis.checks import not_a_server_error

    case.call_and_validate(
        headers={"Authorization": f"Bearer {API_KEY}"}, checks=[not_a_server_error], timeout=60
    )


def wait_for_file(client, file_id: str, timeout: float = 30):
    """The file once validated (`processed` or `error`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        f = client.files.retrieve(file_id)
        if f.status != "uploaded":
            return f
        time.sleep(0.05)
    raise AssertionError(f"file {file_id} was not validated within {timeout}s")
