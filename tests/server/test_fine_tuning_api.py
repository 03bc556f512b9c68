"""The fine-tuning API end to end: the official `openai` client against a real Uvicorn server
with its in-process worker training a tiny model in a subprocess.

Each test starts its own server on its own data directory (job store, files, outputs); the
base model comes from the session's model store (`tiny-llama`, see conftest.py).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai import OpenAI
from typer.testing import CliRunner

from tests.server.conftest import (
    RunningServer,
    keys_file,
    settings_for,
    start_server,
    stop_server,
    wait_for_file,
)
from tuneforge.cli import app as cli_app

QUESTIONS = ["How can I reset my password?", "What is my balance?", "I lost my card."]
ANSWERS = [
    "Sure, I have sent a reset link to your email address.",
    "Your balance is 120 dollars and 50 cents.",
    "I have blocked it and a new card is on its way.",
]


def chat_jsonl(n: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        k = rng.randrange(len(QUESTIONS))
        messages = [
            {"role": "user", "content": QUESTIONS[k]},
            {"role": "assistant", "content": ANSWERS[k]},
        ]
        lines.append(json.dumps({"messages": messages}))
    return ("\n".join(lines) + "\n").encode()


def _method(n_epochs: int, batch_size: int, **tuneforge) -> dict:
    return {
        "type": "supervised",
        "supervised": {
            "hyperparameters": {
                "n_epochs": n_epochs,
                "batch_size": batch_size,
                "learning_rate_multiplier": 10,
            },
            "tuneforge": {"lora": {"r": 4, "dropout": 0.0}, **tuneforge},
        },
    }


def client_for(running: RunningServer, key: str = "sk-org-a") -> OpenAI:
    return OpenAI(base_url=running.v1, api_key=key, max_retries=0, timeout=60)


def _start(
    model_store: Path, tmp_path: Path, worker: bool, database_url: str | None = None, **extra
) -> RunningServer:
    settings = settings_for(
        model_store,
        tmp_path / "data",
        database_url=database_url,
        api_keys_file=keys_file(tmp_path),
        worker=worker,
        worker_lease_s=3,
        **extra,
    )
    return start_server(settings)


@pytest.fixture
def api(model_store, tmp_path, store_url) -> Iterator[RunningServer]:
    """A server with its job worker, on SQLite and on PostgreSQL (`store_url`)."""
    running = _start(model_store, tmp_path, worker=True, database_url=store_url)
    yield running
    stop_server(running)


@pytest.fixture
def api_no_worker(model_store, tmp_path, store_url) -> Iterator[RunningServer]:
    """A server whose jobs stay queued (nothing trains), on SQLite and on PostgreSQL."""
    running = _start(
        model_store, tmp_path, worker=False, database_url=store_url, max_upload_bytes=4096
    )
    yield running
    stop_server(running)


def wait_for(client: OpenAI, job_id: str, statuses: set[str], timeout: float = 240, step=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        progress = (job.model_extra or {}).get("tuneforge", {}).get("step", 0)
        if job.status in statuses and (step is None or progress >= step):
            return job
        if job.status == "failed" and "failed" not in statuses:
            raise AssertionError(f"job failed: {job.error}")
        time.sleep(0.25)
    raise AssertionError(f"job {job_id} did not reach {statuses} (now {job.status})")


def _logprobs(client: OpenAI, model: str) -> tuple[str, list[float]]:
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": QUESTIONS[1]}],
        max_tokens=6,
        temperature=0,
        logprobs=True,
    )
    return r.choices[0].message.content, [t.logprob for t in r.choices[0].logprobs.content]


def test_fine_tune_end_to_end_then_continue_from_the_fine_tune(api):
    client = client_for(api)
    uploaded = client.files.create(file=("train.jsonl", chat_jsonl(16)), purpose="fine-tune")
    assert uploaded.status == "uploaded" and uploaded.filename == "train.jsonl"
    assert wait_for_file(client, uploaded.id).status == "processed"
    assert client.files.content(uploaded.id).content == chat_jsonl(16)

    valid = client.files.create(file=("valid.jsonl", chat_jsonl(10, seed=9)), purpose="fine-tune")
    assert (
        wait_for_file(client, valid.id).status == "processed"
    )  # else the job waits in validating_files
    job = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=uploaded.id,
        validation_file=valid.id,
        suffix="bank",
        seed=3,
        metadata={"run": "e2e"},
        method=_method(1, 4, checkpoint={"save_every": 2}, eval={"eval_every": 2}),
    )
    assert job.object == "fine_tuning.job" and job.status == "queued"
    assert job.fine_tuned_model is None and job.finished_at is None and job.error is None
    job = wait_for(client, job.id, {"succeeded"})
    short_id = job.id.removeprefix("ftjob-")
    assert job.fine_tuned_model == f"ft:tiny-llama:org-a:bank:{short_id}"
    assert job.trained_tokens > 0 and job.finished_at >= job.created_at
    assert job.hyperparameters.n_epochs == 1 and job.hyperparameters.batch_size == 4
    assert job.hyperparameters.learning_rate_multiplier == pytest.approx(10)
    assert job.seed == 3 and job.metadata == {"run": "e2e"} and job.organization_id == "org-a"
    listed = client.fine_tuning.jobs.list(metadata={"run": "e2e"})
    assert [j.id for j in listed.data] == [job.id]

    # Events: newest first, paginated; one metrics event per step with OpenAI's fields.
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert events[0].message == "The job has successfully completed"
    metrics = [e for e in events if e.type == "metrics"]
    assert [e.data["step"] for e in metrics] == list(range(4, 0, -1))
    assert all(e.data["train_loss"] > 0 and "train_mean_token_accuracy" in e.data for e in metrics)
    assert [e.data["step"] for e in metrics if e.data.get("valid_loss")] == [4, 2]
    page = client.fine_tuning.jobs.list_events(job.id, limit=3)
    assert page.has_more and len(page.data) == 3
    nxt = client.fine_tuning.jobs.list_events(job.id, limit=3, after=page.data[-1].id)
    assert nxt.data[0].id == events[3].id

    # Checkpoints: servable ids with metrics.
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [4, 2]
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-4"
    assert checkpoints[0].metrics.train_loss is not None
    assert checkpoints[0].metrics.valid_loss is not None

    # The results file: OpenAI's CSV columns, a row per step.
    (result_id,) = job.result_files
    assert client.files.retrieve(result_id).purpose == "fine-tune-results"
    rows = client.files.content(result_id).text.strip().splitlines()
    assert rows[0].startswith("step,train_loss,train_accuracy") and len(rows) == 5

    # The fine-tune is listed and served, and it answers differently from its base.
    model_ids = {m.id for m in client.models.list().data}
    assert job.fine_tuned_model in model_ids
    assert checkpoints[0].fine_tuned_model_checkpoint in model_ids
    other = client_for(api, "sk-org-b")
    assert job.fine_tuned_model not in {m.id for m in other.models.list().data}
    with pytest.raises(openai.NotFoundError):
        _logprobs(other, job.fine_tuned_model)
    base = _logprobs(client, "tiny-llama")
    tuned = _logprobs(client, job.fine_tuned_model)
    assert tuned != base
    _logprobs(client, checkpoints[-1].fine_tuned_model_checkpoint)

    # Regular updates: continue from the fine-tune on new data.
    more = client.files.create(file=("more.jsonl", chat_jsonl(12, seed=5)), purpose="fine-tune")
    child = client.fine_tuning.jobs.create(
        model=job.fine_tuned_model,
        training_file=more.id,
        suffix="bank-v2",
        method=_method(1, 4),
    )
    child = wait_for(client, child.id, {"succeeded"})
    assert child.model == job.fine_tuned_model
    assert child.fine_tuned_model.startswith("ft:tiny-llama:org-a:bank-v2:")
    assert child.model_extra["tuneforge"]["parent_model"] == job.fine_tuned_model
    assert _logprobs(client, child.fine_tuned_model) != tuned


def test_uploads_tenancy_idempotency_and_refusals(api_no_worker):
    a, b = client_for(api_no_worker, "sk-org-a"), client_for(api_no_worker, "sk-org-b")
    lines = chat_jsonl(12).decode().splitlines()
    lines[1] = '{"messages": [{"role": "user", "content": "hi"}'  # broken JSON
    lines[4] = json.dumps({"messages": [{"role": "robot", "content": "x"}]})
    bad = a.files.create(file=("bad.jsonl", "\n".join(lines).encode()), purpose="fine-tune")
    bad = wait_for_file(a, bad.id)  # validated off the request path
    assert bad.status == "error"
    assert "line 2:" in bad.status_details and "line 5:" in bad.status_details
    with pytest.raises(openai.BadRequestError, match="failed validation"):
        a.fine_tuning.jobs.create(model="tiny-llama", training_file=bad.id)
    with pytest.raises(openai.APIStatusError) as too_big:
        a.files.create(file=("big.jsonl", chat_jsonl(100)), purpose="fine-tune")
    assert too_big.value.status_code == 413

    good = a.files.create(file=("train.jsonl", chat_jsonl(12)), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="not supported yet"):
        a.fine_tuning.jobs.create(
            model="tiny-llama", training_file=good.id, method={"type": "reinforcement"}
        )
    with pytest.raises(openai.BadRequestError, match=r"lora\.r"):
        a.fine_tuning.jobs.create(
            model="tiny-llama",
            training_file=good.id,
            method={"type": "supervised", "supervised": {"tuneforge": {"lora": {"r": 0}}}},
        )
    with pytest.raises(openai.NotFoundError):
        a.fine_tuning.jobs.create(model="no-such-model", training_file=good.id)

    # One Idempotency-Key, two sends: one job.
    key = {"Idempotency-Key": "create-once"}
    first = a.fine_tuning.jobs.create(model="tiny-llama", training_file=good.id, extra_headers=key)
    again = a.fine_tuning.jobs.create(model="tiny-llama", training_file=good.id, extra_headers=key)
    assert again.id == first.id
    assert [j.id for j in a.fine_tuning.jobs.list().data] == [first.id]
    # The deprecated top-level hyperparameters are accepted.
    old = a.fine_tuning.jobs.create(
        model="tiny-llama", training_file=good.id, hyperparameters={"n_epochs": 1}
    )
    assert old.hyperparameters.n_epochs == 1

    # Another organization sees none of it: 404, not 403.
    for call in (
        lambda: b.files.retrieve(good.id),
        lambda: b.files.content(good.id),
        lambda: b.files.delete(good.id),
        lambda: b.fine_tuning.jobs.retrieve(first.id),
        lambda: b.fine_tuning.jobs.cancel(first.id),
        lambda: b.fine_tuning.jobs.list_events(first.id),
        lambda: b.fine_tuning.jobs.checkpoints.list(first.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert b.files.list().data == [] and b.fine_tuning.jobs.list().data == []
    with pytest.raises(openai.BadRequestError, match="not found"):
        b.fine_tuning.jobs.create(model="tiny-llama", training_file=good.id)

    # The CLI sees the same through the API, as the key's organization.
    url = ["--base-url", api_no_worker.url]
    listed = CliRunner().invoke(cli_app, ["jobs", "list", *url, "--api-key", "sk-org-a", "--json"])
    assert listed.exit_code == 0, listed.output
    assert {j["id"] for j in json.loads(listed.output)} == {first.id, old.id}
    hidden = CliRunner().invoke(cli_app, ["jobs", "show", first.id, *url, "--api-key", "sk-org-b"])
    assert hidden.exit_code == 1 and "404" in hidden.output

    # Files: cursor pagination, delete.
    page = a.files.list(limit=1)
    assert page.has_more and page.data[0].id == good.id
    assert a.files.delete(bad.id).deleted
    assert {f.id for f in a.files.list().data} == {good.id}

    # A queued job cancels at once, and again (idempotent).
    assert a.fine_tuning.jobs.cancel(first.id).status == "cancelled"
    assert a.fine_tuning.jobs.cancel(first.id).status == "cancelled"


@pytest.mark.slow  # two training runs (pause, resume) of 24 steps: about a minute on CPU
def test_pause_resume_and_cancel_a_running_job(api):
    client = client_for(api)
    f = client.files.create(file=("train.jsonl", chat_jsonl(16)), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=f.id,
        method=_method(3, 2, checkpoint={"save_every": 1}),  # 24 steps
    )
    wait_for(client, job.id, {"running"}, step=2)
    assert client.fine_tuning.jobs.pause(job.id).status == "running"  # asked, not forced
    client.fine_tuning.jobs.pause(job.id)  # idempotent
    paused = wait_for(client, job.id, {"paused"})
    paused_step = paused.model_extra["tuneforge"]["step"]
    assert 2 <= paused_step < 24
    time.sleep(1.0)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "paused"  # nothing trains

    client.fine_tuning.jobs.resume(job.id)
    wait_for(client, job.id, {"running"}, step=paused_step + 2)
    client.fine_tuning.jobs.cancel(job.id)
    cancelled = wait_for(client, job.id, {"cancelled"})
    assert cancelled.fine_tuned_model is None and cancelled.finished_at is not None

    events = list(reversed(client.fine_tuning.jobs.list_events(job.id, limit=200).data))
    steps = [e.data["step"] for e in events if e.type == "metrics"]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) < 24
    messages = [e.message for e in events]
    assert f"Fine-tuning job paused at step {paused_step}" in messages
    assert f"Fine-tuning job resumed from the checkpoint at step {paused_step}" in messages
    assert messages[-1] == "Fine-tuning job cancelled"


def test_job_settings_are_allowlisted_capped_and_quotas_answer_429(model_store, tmp_path):
    running = _start(
        model_store,
        tmp_path,
        worker=False,
        job_max_steps=50,
        org_max_active_jobs=1,
        org_max_file_bytes=3 * len(chat_jsonl(12)) - 1,
    )
    try:
        a, b = client_for(running, "sk-org-a"), client_for(running, "sk-org-b")
        good = a.files.create(file=("train.jsonl", chat_jsonl(12)), purpose="fine-tune")

        def create(client, file_id, **tuneforge):
            return client.fine_tuning.jobs.create(
                model="tiny-llama",
                training_file=file_id,
                method={"type": "supervised", "supervised": {"tuneforge": tuneforge}},
            )

        # The server's switch stays the server's: 400 naming the setting.
        with pytest.raises(openai.BadRequestError) as refused:
            create(a, good.id, model={"trust_remote_code": True})
        assert refused.value.param == "method.supervised.tuneforge.model.trust_remote_code"
        assert refused.value.code == "invalid_tuneforge_config"
        # Every costly setting is refused at once, against the operator's caps.
        with pytest.raises(openai.BadRequestError) as refused:
            create(
                a,
                good.id,
                optim={"max_steps": 10**9, "epochs": 10**6},
                data={"max_length": 10**9},
                lora={"r": 10**6},
                checkpoint={"keep_last": 10**6, "save_every": 1},
                freeze={"patterns": ["(a+)+$"]},
            )
        message = refused.value.message
        assert "optim.max_steps: at most 50 on this server" in message
        for key in ("optim.epochs", "data.max_length", "lora.r", "checkpoint.keep_last"):
            assert f"{key}: at most" in message
        assert "(a+)+$' nests a repeat inside a repeat" in message
        with pytest.raises(openai.BadRequestError, match="at most 50"):
            create(a, good.id, optim={"max_steps": 51})
        job = create(a, good.id, optim={"max_steps": 50})

        # One active job per organization here: the next is refused (429, not retried).
        with pytest.raises(openai.RateLimitError) as limited:
            create(a, good.id)
        assert limited.value.code == "rate_limit_exceeded"
        assert limited.value.response.headers["x-should-retry"] == "false"
        assert "1 active fine-tuning jobs" in limited.value.message
        other = b.files.create(file=("train.jsonl", chat_jsonl(12)), purpose="fine-tune")
        create(b, other.id)  # another organization's quota
        a.fine_tuning.jobs.cancel(job.id)
        create(a, good.id)  # a finished job frees its slot

        # Stored bytes: the third file of this size is over the quota.
        a.files.create(file=("two.jsonl", chat_jsonl(12)), purpose="fine-tune")
        with pytest.raises(openai.RateLimitError) as over:
            a.files.create(file=("three.jsonl", chat_jsonl(12)), purpose="fine-tune")
        assert over.value.code == "insufficient_quota" and "Storage quota" in over.value.message
        assert len(a.files.list().data) == 2
    finally:
        stop_server(running)


def test_untrainable_data_fails_the_job_with_a_clear_error_and_no_paths(api):
    client = client_for(api)
    # Valid at upload; but every example is longer than 8 tokens, so training drops them all.
    f = client.files.create(file=("train.jsonl", chat_jsonl(12)), purpose="fine-tune")
    f = wait_for_file(client, f.id)
    assert f.status == "processed", f.status_details
    job = client.fine_tuning.jobs.create(
        model="tiny-llama", training_file=f.id, method=_method(1, 2, data={"max_length": 8})
    )
    failed = wait_for(client, job.id, {"failed"})
    assert failed.error.code == "invalid_training_file"
    assert failed.error.param == "training_file"
    assert "data.max_length = 8" in failed.error.message
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    shown = [failed.error.message] + [e.message for e in events]
    shown += [json.dumps(e.data) for e in events if e.data]
    data_dir = str(api.settings.data_dir)
    assert not [m for m in shown if "Traceback" in m or data_dir in m or "/" in m], shown
    assert events[0].message.startswith("Fine-tuning job failed: No example")
