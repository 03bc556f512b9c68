"""`DELETE /v1/models/{id}` against a real server, driven by the official client, with two
organizations: the base is never deleted (even when its folder carries `tuneforge.json`),
folders of the model store only by an admin key, and a fine-tune goes with its files and
checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import openai
import pytest
from openai import OpenAI

from tests.server.conftest import (
    KEYS,
    RunningServer,
    keys_file,
    settings_for,
    start_server,
    stop_server,
)
from tuneforge.jobs import JobStore
from tuneforge.jobs.spec import JobCreate

ADMIN = "sk-admin"
CHAT = [{"role": "user", "content": "Hello!"}]


@pytest.fixture
def models(model_store, tmp_path) -> Path:
    """A store whose base `tiny-llama` HAS tuneforge.json (a fine-tune made the base), and a
    TuneForge-made adapter `acme/old:v0`."""
    root = tmp_path / "models"
    shutil.copytree(model_store / "tiny-llama", root / "tiny-llama")
    (root / "tiny-llama" / "tuneforge.json").write_text(json.dumps({"base_model": "gpt2"}))
    shutil.copytree(model_store / "acme" / "support:v1", root / "acme" / "old:v0")
    assert (root / "acme" / "old:v0" / "tuneforge.json").is_file()
    return root


def _start(models: Path, tmp_path: Path, **extra) -> RunningServer:
    settings = settings_for(models, tmp_path / "data", api_keys_file=keys_file(tmp_path), **extra)
    return start_server(settings)


def _client(running: RunningServer, key: str) -> OpenAI:
    return OpenAI(base_url=running.v1, api_key=key, max_retries=0, timeout=60)


def test_base_with_manifest_is_never_deleted(models, tmp_path):
    running = _start(models, tmp_path)
    try:
        for key in KEYS:
            with _client(running, key) as client, pytest.raises(openai.BadRequestError) as err:
                client.models.delete("tiny-llama")
            assert err.value.body["code"] == "not_deletable"
        assert (models / "tiny-llama" / "model.safetensors").is_file()
        with _client(running, "sk-org-a") as client:  # and it still serves
            out = client.chat.completions.create(model="tiny-llama", messages=CHAT, max_tokens=2)
        assert out.choices[0].message.content is not None
    finally:
        stop_server(running)


def test_store_folders_are_deleted_only_with_an_admin_key(models, tmp_path):
    running = _start(models, tmp_path, admin_keys=[ADMIN])
    try:
        for key in KEYS:  # every organization sees the store: none may delete from it
            with _client(running, key) as client:
                with pytest.raises(openai.PermissionDeniedError):
                    client.models.delete("acme/old:v0")
                assert client.models.retrieve("acme/old:v0").id == "acme/old:v0"
        assert (models / "acme" / "old:v0").is_dir()
        with _client(running, ADMIN) as admin:
            assert admin.models.delete("acme/old:v0").deleted
            assert not (models / "acme" / "old:v0").exists()
            with pytest.raises(openai.NotFoundError):
                admin.models.retrieve("acme/old:v0")
            with pytest.raises(openai.BadRequestError):  # not even an admin deletes the base
                admin.models.delete("tiny-llama")
        assert (models / "tiny-llama" / "model.safetensors").is_file()
    finally:
        stop_server(running)


def _chat_jsonl() -> bytes:
    lines = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]}
        for i in range(12)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def _finished_fine_tune(data_dir: Path, adapter: Path, tmp_path: Path) -> tuple[str, str, Path]:
    """A job of org-a that produced an adapter and one checkpoint, recorded through the
    store as the worker records them. Returns (model id, checkpoint model id, output)."""
    store = JobStore.open(data_dir)
    try:
        train = tmp_path / "train.jsonl"
        line = {
            "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
        }
        train.write_text((json.dumps(line) + "\n") * 12)
        f = store.add_file("org-a", "train.jsonl", "fine-tune", train)
        job = store.create_job("org-a", JobCreate(model="tiny-llama", training_file=f.id))
        claimed = store.claim("w-test", 60)
        assert claimed is not None and claimed.id == job.id
        out = store.job_dir(job.id) / "output"
        shutil.copytree(adapter, out)
        ckpt = out / "checkpoints" / "step-000002"
        shutil.copytree(adapter, ckpt)
        assert store.sync_checkpoints(claimed, [(2, ckpt, {"train_loss": 1.0})], "w-test") == [2]
        model_id = store.register_model(claimed, out)
        ckpt_id = store.list_checkpoints("org-a", job.id).data[0].model_id
        return model_id, ckpt_id, out
    finally:
        store.close()


def test_deleting_a_fine_tune_removes_its_files_and_checkpoints(models, tmp_path):
    data_dir = tmp_path / "data"
    model_id, ckpt_id, out = _finished_fine_tune(data_dir, models / "acme" / "old:v0", tmp_path)
    running = _start(models, tmp_path)
    try:
        with _client(running, "sk-org-b") as other, pytest.raises(openai.NotFoundError):
            other.models.delete(model_id)  # another organization's: as if it did not exist
        with _client(running, "sk-org-a") as client:
            for served in (model_id, ckpt_id):
                reply = client.chat.completions.create(model=served, messages=CHAT, max_tokens=2)
                assert reply.model == served
            with pytest.raises(openai.BadRequestError):  # it goes with its fine-tune
                client.models.delete(ckpt_id)
            # A job continuing from the fine-tune needs its folder: refused while it waits.
            train = client.files.create(file=("t.jsonl", _chat_jsonl()), purpose="fine-tune")
            child = client.fine_tuning.jobs.create(model=model_id, training_file=train.id)
            with pytest.raises(openai.ConflictError):
                client.models.delete(model_id)
            assert out.is_dir()
            client.fine_tuning.jobs.cancel(child.id)
            deleted = client.models.delete(model_id)
            assert deleted.deleted and deleted.id == model_id
            assert not out.exists()  # the adapter and checkpoints/ inside it
            listed = {m.id for m in client.models.list().data}
            for gone in (model_id, ckpt_id):
                assert gone not in listed
                with pytest.raises(openai.NotFoundError):
                    client.models.retrieve(gone)
                with pytest.raises(openai.NotFoundError):
                    client.chat.completions.create(model=gone, messages=CHAT, max_tokens=2)
            with pytest.raises(openai.NotFoundError):
                client.models.delete(model_id)
    finally:
        stop_server(running)
