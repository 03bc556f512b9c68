"""A real TuneForge server on a loopback port: a tiny base model and two tiny LoRA adapters."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from tests.inference.adapters import build_adapter
from tuneforge.modeling.tiny import build_model, save_model_folder
from tuneforge.server.app import create_app
from tuneforge.server.settings import ServerSettings

API_KEY = "sk-test-key"


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
    settings = ServerSettings(
        model_dir=model_store,
        base_model="tiny-llama",
        data_dir=tmp_path_factory.mktemp("data"),
        api_keys=[API_KEY],
        max_batch_size=8,
        max_tokens_cap=256,
        max_body_bytes=64 * 1024,
        torch_threads=1,
    )
    running = start_server(settings)
    yield running
    stop_server(running)


@pytest.fixture()
def client(server):
    from openai import OpenAI

    with OpenAI(base_url=server.v1, api_key=API_KEY, max_retries=0, timeout=60) as c:
        yield c


def wait_for_file(client, file_id: str, timeout: float = 30):
    """The file once validated (`processed` or `error`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        f = client.files.retrieve(file_id)
        if f.status != "uploaded":
            return f
        time.sleep(0.05)
    raise AssertionError(f"file {file_id} was not validated within {timeout}s")
