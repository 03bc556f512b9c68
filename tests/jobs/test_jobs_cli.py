"""`tuneforge jobs ...` and `tuneforge models list/export` against the store directly."""

from __future__ import annotations

import json

from jobs_data import write_chat
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.jobs import JobCreate

runner = CliRunner()


def test_jobs_and_models_commands_on_the_store(store, store_args, upload, tmp_path):
    f = upload("org-a", write_chat(tmp_path / "t.jsonl"))
    job = store.create_job("org-a", JobCreate(model="tiny-base", training_file=f.id))
    data = store_args

    listed = runner.invoke(app, ["jobs", "list", *data, "--json"])
    assert listed.exit_code == 0, listed.output
    assert [j["id"] for j in json.loads(listed.output)] == [job.id]
    assert (
        runner.invoke(app, ["jobs", "list", *data, "--org", "org-b", "--json"]).output.strip()
        == "[]"
    )

    shown = json.loads(runner.invoke(app, ["jobs", "show", job.id, *data]).output)
    assert shown["object"] == "fine_tuning.job" and shown["status"] == "queued"
    assert shown["error"] is None and shown["checkpoints"] == []

    events = runner.invoke(app, ["jobs", "events", job.id, *data])
    assert "Validating training file" in events.output

    cancelled = runner.invoke(app, ["jobs", "cancel", job.id, *data])
    assert cancelled.exit_code == 0 and "cancelled" in cancelled.output
    missing = runner.invoke(app, ["jobs", "show", "ftjob-nope", *data])
    assert missing.exit_code == 1 and "No such fine-tuning job" in missing.output

    # A fine-tuned model folder registered in the store lists and exports (training state
    # such as optimizer.pt is left behind).
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(b"x")
    (folder / "optimizer.pt").write_bytes(b"x")
    model_id = store.register_model(job, folder)
    models = json.loads(runner.invoke(app, ["models", "list", *data, "--json"]).output)
    assert [m["id"] for m in models] == [model_id]
    dest = tmp_path / "exported"
    exported = runner.invoke(app, ["models", "export", model_id, "--out", str(dest), *data])
    assert exported.exit_code == 0, exported.output
    assert sorted(p.name for p in dest.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
