"""What the server reveals and to whom: the bind check, the Host allowlist (DNS rebinding),
the OpenAPI document behind the key, `/health` without folders, no server paths in errors,
foreign ids answered as unknown ones, and schema errors as OpenAI's 400 with `param`.

Real servers on loopback ports, driven by the official client and raw HTTP.
"""

from __future__ import annotations

import json
import shutil
import time

import httpx
import openai
import pytest
from openai import OpenAI

from tests.server.conftest import API_KEY, keys_file, settings_for, start_server, stop_server
from tuneforge.server.app import create_app
from tuneforge.server.settings import ServerSettings

CHAT = [{"role": "user", "content": "Hello!"}]


def _chat_jsonl(n: int = 12) -> bytes:
    lines = []
    for i in range(n):
        messages = [
            {"role": "user", "content": f"Question number {i}?"},
            {"role": "assistant", "content": f"Answer number {i}."},
        ]
        lines.append(json.dumps({"messages": messages}))
    return ("\n".join(lines) + "\n").encode()


# -- binding -------------------------------------------------------------------------------------


def test_public_bind_without_keys_is_refused(model_store):
    public = {"model_dir": model_store, "base_model": "tiny-llama", "host": "0.0.0.0"}
    with pytest.raises(ValueError, match="without API keys"):
        create_app(ServerSettings(**public))
    with pytest.raises(ValueError, match="without API keys"):
        create_app(ServerSettings(**{**public, "host": "::"}))
    # Explicitly allowed, or with a key, or on loopback: it starts.
    create_app(ServerSettings(**public, allow_public_without_keys=True))
    create_app(ServerSettings(**public, api_keys=["sk-x"]))
    create_app(ServerSettings(**{**public, "host": "127.0.0.1"}))


def test_public_bind_is_refused_by_the_cli(model_store, tmp_path):
    from typer.testing import CliRunner

    from tuneforge.cli import app as cli_app

    args = ["serve", "--model-dir", str(model_store), "--base-model", "tiny-llama"]
    args += ["--data-dir", str(tmp_path / "data"), "--host", "0.0.0.0", "--port", "1"]
    result = CliRunner().invoke(cli_app, args, env={"TUNEFORGE_API_KEYS": ""})
    assert result.exit_code == 2, result.output
    assert "--allow-public-without-keys" in result.output


# -- one shared server with keys of two organizations -------------------------------------------


@pytest.fixture(scope="module")
def orgs(model_store, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exposure")
    running = start_server(
        settings_for(
            model_store, tmp / "data", api_keys_file=keys_file(tmp), allowed_hosts=["tuneforge.lan"]
        )
    )
    yield running
    stop_server(running)


def test_dns_rebinding_hosts_are_refused(orgs):
    port = orgs.url.rsplit(":", 1)[1]
    auth = {"Authorization": "Bearer sk-org-a"}
    for host in ("attacker.example", f"attacker.example:{port}", "127.0.0.1.nip.io", ""):
        response = httpx.get(orgs.url + "/v1/models", headers={**auth, "Host": host})
        assert response.status_code == 421, host
        assert response.json()["error"]["code"] == "invalid_host"
        assert httpx.get(orgs.url + "/health", headers={"Host": host}).status_code == 421
    for host in ("localhost", f"localhost:{port}", f"127.0.0.1:{port}", "[::1]", "tuneforge.lan"):
        response = httpx.get(orgs.url + "/v1/models", headers={**auth, "Host": host})
        assert response.status_code == 200, host


def test_openapi_needs_a_key_and_health_says_only_its_status(orgs):
    assert httpx.get(orgs.url + "/openapi.json").status_code == 401
    document = httpx.get(orgs.url + "/openapi.json", headers={"Authorization": "Bearer sk-org-b"})
    assert document.status_code == 200 and "/v1/chat/completions" in document.json()["paths"]
    for page in ("/docs", "/redoc"):  # a browser cannot send the key: off with keys on
        assert httpx.get(orgs.url + page).status_code == 404
    health = httpx.get(orgs.url + "/health")
    assert health.status_code == 200 and health.json() == {"status": "ok"}


def test_open_server_keeps_its_docs(model_store, tmp_path):
    from fastapi.testclient import TestClient

    app = create_app(settings_for(model_store))
    http = TestClient(app, base_url="http://localhost")  # no `with`: nothing loads
    assert http.get("/openapi.json").status_code == 200
    assert http.get("/docs").status_code == 200


def test_foreign_ids_look_like_unknown_ones(orgs):
    a = OpenAI(base_url=orgs.v1, api_key="sk-org-a", max_retries=0, timeout=60)
    b = OpenAI(base_url=orgs.v1, api_key="sk-org-b", max_retries=0, timeout=60)
    file_a = a.files.create(file=("a.jsonl", _chat_jsonl()), purpose="fine-tune")
    file_b = b.files.create(file=("b.jsonl", _chat_jsonl()), purpose="fine-tune")
    job_a = a.fine_tuning.jobs.create(model="tiny-llama", training_file=file_a.id)
    job_b = b.fine_tuning.jobs.create(model="tiny-llama", training_file=file_b.id)
    event_a = a.fine_tuning.jobs.list_events(job_a.id).data[0].id
    assert b.files.list(after=file_b.id).data == []  # own ids page as before
    calls = {
        "files.list after": lambda c, ids: c.files.list(after=ids["file"]),
        "jobs.list after": lambda c, ids: c.fine_tuning.jobs.list(after=ids["job"]),
        "events after": lambda c, ids: c.fine_tuning.jobs.list_events(job_b.id, after=ids["event"]),
        "files.retrieve": lambda c, ids: c.files.retrieve(ids["file"]),
        "files.content": lambda c, ids: c.files.content(ids["file"]),
        "files.delete": lambda c, ids: c.files.delete(ids["file"]),
        "jobs.retrieve": lambda c, ids: c.fine_tuning.jobs.retrieve(ids["job"]),
        "jobs.cancel": lambda c, ids: c.fine_tuning.jobs.cancel(ids["job"]),
        "jobs.events": lambda c, ids: c.fine_tuning.jobs.list_events(ids["job"]),
        "jobs.checkpoints": lambda c, ids: c.fine_tuning.jobs.checkpoints.list(ids["job"]),
    }
    foreign = {"file": file_a.id, "job": job_a.id, "event": event_a}
    unknown = {"file": "file-nosuchfile0000000000", "job": "ftjob-nosuchjob", "event": "x"}
    for name, call in calls.items():
        answers = []
        for ids in (foreign, unknown):
            with pytest.raises(openai.NotFoundError) as err:
                call(b, ids)
            body = dict(err.value.body)
            answers.append((body.get("param"), body.get("code")))
        assert answers[0] == answers[1], name  # the same answer: nothing tells them apart
    assert a.files.retrieve(file_a.id).id == file_a.id  # still there for its owner
    assert a.fine_tuning.jobs.retrieve(job_a.id).status != "cancelled"


# -- no server paths or tracebacks in responses --------------------------------------------------


def test_a_failed_load_reveals_no_paths(model_store, tmp_path):
    broken = tmp_path / "secret-folder" / "broken"
    shutil.copytree(model_store / "tiny-llama", broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    app = create_app(settings_for(tmp_path / "empty", tmp_path / "data", base_model=str(broken)))
    from fastapi.testclient import TestClient

    with TestClient(app, base_url="http://localhost") as http:
        deadline = time.monotonic() + 60
        while http.get("/health").json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert app.state.engine.failed and "secret-folder" in app.state.engine.failed
        health = http.get("/health")
        assert health.status_code == 503 and health.json() == {"status": "failed"}
        body = {"model": "broken", "messages": CHAT, "max_tokens": 2}
        chat = http.post("/v1/chat/completions", json=body)
        assert chat.status_code == 503
        for response in (health, chat, http.get("/v1/models/no/such")):
            assert "secret-folder" not in response.text and str(tmp_path) not in response.text
            assert "Traceback" not in response.text


# -- OpenAI's 400 for schema errors ---------------------------------------------------------------


def test_schema_errors_are_400_invalid_request_error_with_param(server, client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny-llama", messages=CHAT, temperature=7)
    assert err.value.body["type"] == "invalid_request_error"
    assert err.value.body["param"] == "temperature"
    assert "temperature" in err.value.body["message"]
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    bad_content = {"model": "tiny-llama", "messages": [{"role": "user", "content": 5}]}
    cases = [
        (json.dumps(bad_content).encode(), "messages[0].content"),
        (b'{"model": "tiny-llama"}', "messages"),
        (b"{not json", None),
    ]
    for body, param in cases:
        response = httpx.post(server.v1 + "/chat/completions", content=body, headers=headers)
        assert response.status_code == 400, body
        error = response.json()["error"]
        assert (error["type"], error["param"]) == ("invalid_request_error", param), error
    response = httpx.get(server.v1 + "/fine_tuning/jobs?limit=many", headers=headers)
    assert response.status_code == 400 and response.json()["error"]["param"] == "limit"


def test_openapi_documents_400_not_422(server):
    doc = httpx.get(server.url + "/openapi.json", headers={"Authorization": f"Bearer {API_KEY}"})
    text = json.dumps(doc.json())
    assert "HTTPValidationError" not in text
    responses = doc.json()["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert "422" not in responses and "400" in responses


def test_error_bodies_never_name_server_folders(model_store, tmp_path):
    """Defence in depth for messages built from exceptions (engine errors in JSON and in SSE
    error events both render through `APIError.body`): the server's folders are scrubbed."""
    from tuneforge.server.errors import APIError

    data_dir = tmp_path / "state"
    create_app(settings_for(model_store, data_dir))
    inner = f"cannot open {model_store.resolve()}/acme/x and {data_dir.absolute()}/jobs/y"
    message = APIError(400, f"loading model 'acme/x' failed: {inner}").body()["error"]["message"]
    assert str(model_store.resolve()) not in message and str(data_dir) not in message
    assert message.startswith("loading model 'acme/x' failed: cannot open <server path>")
