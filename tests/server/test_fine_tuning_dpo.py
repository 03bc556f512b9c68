"""Preference (DPO) fine-tuning through the API: the official `openai` client against a real
Uvicorn server whose worker trains the tiny model (`method.type: dpo`), and the clear failure
of a job whose data does not fit its method."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

import pytest

from tests.server.conftest import RunningServer, stop_server, wait_for_file
from tests.server.test_fine_tuning_api import (
    ANSWERS,
    QUESTIONS,
    _logprobs,
    _start,
    chat_jsonl,
    client_for,
    wait_for,
)

REJECTED = "Whatever, stupid question, figure it out yourself, I will not repeat this again."


def preference_jsonl(n: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        k = rng.randrange(len(QUESTIONS))
        example = {
            "input": {"messages": [{"role": "user", "content": QUESTIONS[k]}]},
            "preferred_output": [{"role": "assistant", "content": ANSWERS[k]}],
            "non_preferred_output": [{"role": "assistant", "content": REJECTED}],
        }
        lines.append(json.dumps(example))
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture
def api(model_store, tmp_path) -> Iterator[RunningServer]:
    """A server with its job worker (SQLite store: the store's SQL is the supervised path's)."""
    running = _start(model_store, tmp_path, worker=True)
    yield running
    stop_server(running)


def _upload(client, name: str, content: bytes) -> str:
    f = wait_for_file(client, client.files.create(file=(name, content), purpose="fine-tune").id)
    assert f.status == "processed", f.status_details
    return f.id


def test_dpo_job_trains_reports_reward_metrics_and_serves(api):
    client = client_for(api)
    train = _upload(client, "prefs.jsonl", preference_jsonl(16))
    valid = _upload(client, "prefs-valid.jsonl", preference_jsonl(10, seed=1))
    job = client.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=train,
        validation_file=valid,
        suffix="polite",
        method={
            "type": "dpo",
            "dpo": {
                "hyperparameters": {
                    "beta": 0.2,
                    "n_epochs": 1,
                    "batch_size": 4,
                    "learning_rate_multiplier": 33,  # of DPO's auto LR: 3e-3 here
                },
                "tuneforge": {"lora": {"r": 4}, "eval": {"eval_every": 2}},
            },
        },
    )
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.2
    job = wait_for(client, job.id, {"succeeded"})
    assert job.method.type == "dpo" and job.method.supervised is None
    assert job.method.dpo.hyperparameters.n_epochs == 1
    assert job.hyperparameters.batch_size == 4 and job.model_extra is not None

    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    metrics = [e for e in events if e.type == "metrics"]
    assert [e.data["step"] for e in metrics] == [4, 3, 2, 1]
    for e in metrics:
        for key in ("train_loss", "train_reward_accuracy", "train_reward_margin"):
            assert key in e.data
        assert "train_chosen_logps" in e.data and "train_rejected_logps" in e.data
    assert "reward accuracy=" in metrics[0].message
    last = metrics[0].data
    assert last["valid_reward_accuracy"] == 1.0 and last["valid_reward_margin"] > 0

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints[0].metrics.valid_reward_accuracy == 1.0
    assert checkpoints[0].metrics.train_reward_margin is not None

    # The ft: model serves, and it is not its base any more.
    assert job.fine_tuned_model.startswith("ft:tiny-llama:org-a:polite:")
    assert _logprobs(client, job.fine_tuned_model) != _logprobs(client, "tiny-llama")


def _failure(client, api, training_file: str, method: dict):
    job = client.fine_tuning.jobs.create(
        model="tiny-llama", training_file=training_file, method=method
    )
    failed = wait_for(client, job.id, {"failed"})
    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    shown = [failed.error.message] + [e.message for e in events]
    data_dir = str(api.settings.data_dir)
    assert not [m for m in shown if "Traceback" in m or data_dir in m or "/" in m], shown
    assert failed.error.code == "invalid_training_file"
    assert failed.error.param == "training_file"
    return failed.error.message


@pytest.mark.slow  # the message itself: tests/jobs/test_jobs_spec.py (no server, no jobs)
def test_data_that_does_not_fit_the_method_fails_the_job_naming_the_mismatch(api):
    client = client_for(api)
    prefs = _upload(client, "prefs.jsonl", preference_jsonl(10))
    chats = _upload(client, "chats.jsonl", chat_jsonl(10))
    message = _failure(client, api, prefs, {"type": "supervised"})
    assert "holds preference examples (from line 1" in message
    assert "method.type 'supervised'" in message
    assert "method.type 'dpo'" in message
    message = _failure(client, api, chats, {"type": "dpo", "dpo": {}})
    assert "holds chat examples" in message and "method.type 'dpo'" in message
