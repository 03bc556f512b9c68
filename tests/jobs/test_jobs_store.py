"""The job store without training: files, validation, job requests, idempotency, tenancy,
pagination, cooperative control, and the lease that lets a dead worker's job be taken over."""

from __future__ import annotations

import json
import time

import pytest
from jobs_data import write_chat
from sqlalchemy import inspect

from tuneforge.jobs import Conflict, InvalidRequest, JobCreate, JobStore, NotFound
from tuneforge.jobs.db import schema_revision
from tuneforge.jobs.store import fine_tuned_model_id


def _job(file_id: str, **kw) -> JobCreate:
    return JobCreate(model="tiny-base", training_file=file_id, **kw)


def test_store_migrates_once_and_reopens(tmp_path):
    s = JobStore.open(tmp_path / "d")
    assert schema_revision(s.engine) == "0001"
    tables = set(inspect(s.engine).get_table_names())
    assert {"organizations", "files", "jobs", "job_events", "job_checkpoints", "models"} <= tables
    assert "idempotency_keys" in tables
    s.close()
    again = JobStore.open(tmp_path / "d")  # upgrading a current database is a no-op
    assert schema_revision(again.engine) == "0001"
    with again.engine.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    again.close()


def test_upload_is_validated_with_line_numbers(store, upload, tmp_path):
    good = upload("org-a", write_chat(tmp_path / "good.jsonl", 12))
    assert good.status == "processed" and good.status_details is None
    assert good.report["examples_valid"] == 12
    assert store.file_path(good).name == f"{good.id}.jsonl"  # stored by id, not by name

    lines = write_chat(tmp_path / "x.jsonl", 12).read_text().splitlines()
    lines[2] = "{not json"
    lines[6] = json.dumps({"messages": [{"role": "user"}]})
    bad_path = tmp_path / "bad.jsonl"
    bad_path.write_text("\n".join(lines) + "\n")
    bad = upload("org-a", bad_path)
    assert bad.status == "error"
    assert "line 3:" in bad.status_details and "line 7:" in bad.status_details
    with pytest.raises(InvalidRequest, match="failed validation") as err:
        store.create_job("org-a", _job(bad.id))
    assert err.value.param == "training_file"


def test_create_job_maps_hyperparameters_and_extension(store, upload, tmp_path):
    f = upload("org-a", write_chat(tmp_path / "t.jsonl"))
    req = JobCreate(
        model="tiny-base",
        training_file=f.id,
        suffix="support",
        seed=7,
        metadata={"team": "bank"},
        method={
            "type": "supervised",
            "supervised": {
                "hyperparameters": {"n_epochs": 2, "learning_rate_multiplier": 0.5},
                "tuneforge": {"lora": {"r": 4}, "optim.max_steps": 3},
            },
        },
    )
    job = store.create_job("org-a", req, resolve_base=lambda m: "/models/tiny")
    assert job.status == "queued" and job.seed == 7
    o = job.train_overrides
    assert o["model.name_or_path"] == "/models/tiny" and o["optim.epochs"] == 2
    assert o["optim.lr"] == pytest.approx(1e-4) and o["lora.r"] == 4 and o["optim.max_steps"] == 3
    assert o["checkpoint.resume"] == "auto" and o["seed"] == 7
    assert job.hyperparameters["batch_size"] == "auto"
    assert fine_tuned_model_id("tiny-base", "org-a", "support", job.id) == (
        f"ft:tiny-base:org-a:support:{job.id.removeprefix('ftjob-')}"
    )
    assert "data.valid" not in o and "eval.eval_every" not in o
    # With a validation file, validation metrics come periodically.
    v = upload("org-a", write_chat(tmp_path / "v.jsonl", seed=1))
    with_valid = store.create_job("org-a", _job(f.id, validation_file=v.id))
    assert with_valid.train_overrides["data.valid"] == str(store.file_path(v))
    assert with_valid.train_overrides["eval.eval_every"] == 10
    # The deprecated top-level hyperparameters still work.
    old = store.create_job("org-a", _job(f.id, hyperparameters={"n_epochs": 1}))
    assert old.train_overrides["optim.epochs"] == 1


@pytest.mark.parametrize(
    ("method", "match", "param"),
    [
        ({"type": "reinforcement", "reinforcement": {}}, "not supported yet", "method.type"),
        (
            {"type": "supervised", "supervised": {"tuneforge": {"lora": {"r": 0}, "nope": 1}}},
            r"lora\.r: .*; nope: unknown key",
            "method.supervised.tuneforge.lora.r",
        ),
        (
            {"type": "supervised", "supervised": {"tuneforge": {"output": {"dir": "/etc"}}}},
            "output.dir: set by the job's output folder",
            "method.supervised.tuneforge.output.dir",
        ),
    ],
)
def test_create_job_refuses_bad_requests(store, upload, tmp_path, method, match, param):
    f = upload("org-a", write_chat(tmp_path / "t.jsonl"))
    with pytest.raises(InvalidRequest, match=match) as err:
        store.create_job("org-a", _job(f.id, method=method))
    assert err.value.param == param
    assert store.count_jobs() == 0


def test_idempotency_key_makes_one_job(store, upload, tmp_path):
    f = upload("org-a", write_chat(tmp_path / "t.jsonl"))
    first = store.create_job("org-a", _job(f.id, seed=1), idempotency_key="k1")
    again = store.create_job("org-a", _job(f.id, seed=1), idempotency_key="k1")
    assert again.id == first.id and store.count_jobs() == 1
    with pytest.raises(Conflict):
        store.create_job("org-a", _job(f.id, seed=2), idempotency_key="k1")
    # Keys are per organization.
    g = upload("org-b", write_chat(tmp_path / "t.jsonl"))
    other = store.create_job("org-b", _job(g.id, seed=1), idempotency_key="k1")
    assert other.id != first.id and store.count_jobs() == 2


def test_organizations_see_only_their_own(store, upload, tmp_path):
    f = upload("org-a", write_chat(tmp_path / "t.jsonl"))
    job = store.create_job("org-a", _job(f.id))
    with pytest.raises(NotFound):
        store.get_file("org-b", f.id)
    with pytest.raises(NotFound):
        store.get_job("org-b", job.id)
    with pytest.raises(NotFound):
        store.list_events("org-b", job.id)
    with pytest.raises(NotFound):
        store.cancel_job("org-b", job.id)
    with pytest.raises(InvalidRequest, match="not found"):  # b cannot train on a's file
        store.create_job("org-b", _job(f.id))
    assert store.list_files("org-b").data == [] and store.list_jobs("org-b").data == []
    assert [j.id for j in store.list_jobs(None).data] == [job.id]  # the operator sees all


def test_cursor_pagination_and_metadata_filter(store, upload, tmp_path):
    files = [upload("org-a", write_chat(tmp_path / f"t{i}.jsonl")) for i in range(5)]
    page = store.list_files("org-a", limit=2)
    assert [x.id for x in page.data] == [files[4].id, files[3].id] and page.has_more
    page = store.list_files("org-a", limit=2, after=page.data[-1].id)
    assert [x.id for x in page.data] == [files[2].id, files[1].id] and page.has_more
    page = store.list_files("org-a", limit=2, after=page.data[-1].id)
    assert [x.id for x in page.data] == [files[0].id] and not page.has_more
    asc = store.list_files("org-a", order="asc", limit=10)
    assert [x.id for x in asc.data] == [x.id for x in files]

    jobs = [store.create_job("org-a", _job(files[0].id, metadata={"team": t})) for t in "xyx"]
    found = store.list_jobs("org-a", metadata={"team": "x"})
    assert [j.id for j in found.data] == [jobs[2].id, jobs[0].id]
    first = store.list_jobs("org-a", metadata={"team": "x"}, limit=1)
    assert first.has_more
    rest = store.list_jobs("org-a", metadata={"team": "x"}, after=first.data[0].id)
    assert [j.id for j in rest.data] == [jobs[0].id]


def test_cancel_pause_resume_are_idempotent(store, upload, tmp_path):
    f = upload("org-a", write_chat(tmp_path / "t.jsonl"))
    job = store.create_job("org-a", _job(f.id))
    assert store.pause_job("org-a", job.id).status == "paused"
    assert store.pause_job("org-a", job.id).status == "paused"
    assert store.resume_job("org-a", job.id).status == "queued"
    assert store.resume_job("org-a", job.id).status == "queued"
    assert store.cancel_job("org-a", job.id).status == "cancelled"
    assert store.cancel_job("org-a", job.id).status == "cancelled"
    with pytest.raises(InvalidRequest, match="already finished"):
        store.pause_job("org-a", job.id)

    # A running job is asked, not forced: the worker acts on `control`.
    running = store.create_job("org-a", _job(f.id))
    claimed = store.claim("w1", lease_s=60)
    assert claimed.id == running.id
    store.update_job(running.id, "w1", status="running")
    assert store.cancel_job("org-a", running.id).control == "cancel"
    assert store.heartbeat(running.id, "w1", 60) == (True, "cancel")
    assert store.cancel_job("org-a", running.id).status == "running"  # still idempotent


def test_expired_lease_lets_another_worker_take_over(store, upload, tmp_path):
    f = upload("org-a", write_chat(tmp_path / "t.jsonl"))
    job = store.create_job("org-a", _job(f.id))
    assert store.claim("w1", lease_s=0.3).id == job.id
    store.update_job(job.id, "w1", status="running")
    assert store.claim("w2", lease_s=0.3) is None  # the lease holds
    assert store.heartbeat(job.id, "w1", 0.3)[0]
    time.sleep(0.5)  # w1 goes silent
    taken = store.claim("w2", lease_s=30)
    assert taken.id == job.id and taken.worker_id == "w2" and taken.attempts == 2
    assert store.heartbeat(job.id, "w1", 30) == (False, None)  # w1 lost it for good
    assert not store.update_job(job.id, "w1", status="failed")
    messages = [e.message for e in store.all_events(job.id)]
    assert any("lease expired" in m for m in messages)


def test_non_finite_metrics_become_null(store, upload, tmp_path):
    f = upload("org-a", write_chat(tmp_path / "t.jsonl"))
    job = store.create_job("org-a", _job(f.id))
    store.claim("w1", lease_s=60)
    store.record_metrics(job.id, "w1", [{"step": 1, "train_loss": float("nan")}], 5)
    (event,) = [e for e in store.all_events(job.id) if e.type == "metrics"]
    assert event.data["train_loss"] is None and event.data["total_steps"] == 5
    assert store.get_job("org-a", job.id).last_step == 1


def test_a_job_held_under_a_live_lease_is_never_claimed(store, upload, tmp_path):
    f = upload("org-a", write_chat(tmp_path / "t.jsonl"))
    job = store.create_job("org-a", _job(f.id))
    assert job.status == "queued"  # waiting for a worker
    claimed = store.claim("w1", lease_s=60)
    # The claim and the move to running are one step: no window in which it looks free.
    assert claimed.id == job.id and claimed.status == "running" and claimed.worker_id == "w1"
    assert store.claim("w2", lease_s=60) is None
    assert store.get_job("org-a", job.id).worker_id == "w1"


def test_pause_and_cancel_of_a_claimed_job_go_through_the_control_flag(store, upload, tmp_path):
    f = upload("org-a", write_chat(tmp_path / "t.jsonl"))
    job = store.create_job("org-a", _job(f.id))
    store.claim("w1", lease_s=60)  # claimed, training not started yet
    paused = store.pause_job("org-a", job.id)
    assert paused.status == "running" and paused.control == "pause"
    assert store.heartbeat(job.id, "w1", 60) == (True, "pause")
    assert store.finish_job(job.id, "w1", "paused", "Fine-tuning job paused at step 0")
    done = store.get_job("org-a", job.id)
    assert done.status == "paused" and done.worker_id is None and done.control is None

    other = store.create_job("org-a", _job(f.id))
    store.claim("w2", lease_s=60)
    assert store.cancel_job("org-a", other.id).control == "cancel"
    assert store.heartbeat(other.id, "w2", 60) == (True, "cancel")


def test_a_dead_workers_job_pauses_at_once_and_its_worker_can_write_nothing(
    store, upload, tmp_path
):
    f = upload("org-a", write_chat(tmp_path / "t.jsonl"))
    job = store.create_job("org-a", _job(f.id))
    store.claim("w1", lease_s=0.2)
    time.sleep(0.4)  # w1 went silent: nobody holds the job
    paused = store.pause_job("org-a", job.id)
    assert paused.status == "paused" and paused.worker_id is None
    assert store.heartbeat(job.id, "w1", 60) == (False, None)
    assert not store.update_job(job.id, "w1", status="running")
    assert store.claim("w2", lease_s=60) is None  # paused jobs are not runnable


def test_a_bare_postgresql_url_opens_with_the_installed_driver(postgres, tmp_path):
    url = postgres.new_database()
    bare = url.replace("postgresql+psycopg://", "postgresql://")  # as the docs show it
    other = JobStore(tmp_path / "other", bare)
    try:
        assert other.engine.dialect.driver == "psycopg"
        assert other.count_jobs() == 0
    finally:
        other.close()
        postgres.drop_database(url)
