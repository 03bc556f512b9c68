"""What a job's settings may reach and what a job may cost (tuneforge.jobs.spec and .limits),
and how a failed job reports (tuneforge.jobs.failures), on a real store and worker.

The worker tests use small stand-in runners (`python -c ...`): the worker's side of the
protocol (environment, wall-clock limit, error shaping) is what they check; the real training
subprocess is covered through the API in tests/server/test_fine_tuning_api.py.
"""

from __future__ import annotations

import json
import sys
import time

import pytest
from jobs_data import write_chat
from pydantic import BaseModel

from tuneforge.jobs import InvalidRequest, JobCreate, Worker
from tuneforge.jobs.failures import public_message
from tuneforge.jobs.limits import JobLimits, QuotaExceeded, regex_problem


def _request(file_id: str, **tuneforge) -> JobCreate:
    return JobCreate(
        model="tiny-base",
        training_file=file_id,
        method={"type": "supervised", "supervised": {"tuneforge": tuneforge}},
    )


@pytest.fixture
def train_file(upload, tmp_path):
    return upload("org-a", write_chat(tmp_path / "train.jsonl"))


# ---------------------------------------------------------------- the allowlist


def test_trust_remote_code_is_the_servers_switch_not_the_clients(store, train_file):
    with pytest.raises(InvalidRequest) as refused:
        store.create_job("org-a", _request(train_file.id, model={"trust_remote_code": True}))
    assert refused.value.param == "method.supervised.tuneforge.model.trust_remote_code"
    assert refused.value.code == "invalid_tuneforge_config"
    assert "not settable over the API" in refused.value.message


def test_only_allowlisted_settings_pass_and_every_refusal_is_listed(store, train_file):
    with pytest.raises(InvalidRequest) as refused:
        store.create_job(
            "org-a",
            _request(
                train_file.id,
                **{
                    "model.trust_remote_code": True,
                    "data.train": "/etc/passwd",
                    "checkpoint.resume": "/tmp",
                    "no_such": {"key": 1},
                    "lora.r": 0,  # allowed key, invalid value: reported with the others
                },
            ),
        )
    message = refused.value.message
    assert "model.trust_remote_code: not settable over the API" in message
    assert "data.train: set by `training_file`" in message
    assert "checkpoint.resume: set by the worker" in message
    assert "no_such.key: unknown key" in message
    assert "lora.r:" in message
    # Settings of the allowlist, nested or dotted, pass (empty sections set nothing).
    job = store.create_job(
        "org-a",
        _request(
            train_file.id,
            method="lora",
            lora={"r": 8, "target_modules": ["q_proj", "v_proj"]},
            optim={"max_steps": 100, "schedule": "cosine"},
            freeze={"patterns": [r"^model\.embed_tokens\.", r".*mlp.*"]},
            eval={},
            **{"checkpoint.save_every": 10, "data.max_length": 512},
        ),
    )
    assert job.train_overrides["lora.r"] == 8 and job.train_overrides["optim.max_steps"] == 100


def test_every_allowlisted_key_is_a_config_key_and_none_is_reserved():
    from tuneforge.jobs.limits import CLIENT_KEYS
    from tuneforge.jobs.spec import RESERVED_KEYS
    from tuneforge.training.config import TrainConfig

    def keys(model, prefix=""):
        for name, field in model.model_fields.items():
            sub = field.annotation
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                yield from keys(sub, f"{prefix}{name}.")
            else:
                yield prefix + name

    config_keys = set(keys(TrainConfig))
    assert config_keys >= CLIENT_KEYS, CLIENT_KEYS - config_keys  # a renamed key is caught
    assert not CLIENT_KEYS & set(RESERVED_KEYS)
    assert "model.trust_remote_code" in config_keys - CLIENT_KEYS


# ---------------------------------------------------------------- caps


def test_costly_settings_are_capped_all_at_once(store, train_file):
    costly = {
        "optim": {"max_steps": 1e9, "epochs": 10**6},
        "data": {"max_length": 10**9},
        "lora": {"r": 10**6},
        "checkpoint": {"keep_last": 10**6, "save_every": 1},
        "freeze": {"patterns": ["(a+)+$"]},
    }
    with pytest.raises(InvalidRequest) as refused:
        store.create_job("org-a", _request(train_file.id, **costly))
    message = refused.value.message
    for expected in (
        "optim.max_steps: at most 100000 on this server (got 1000000000)",
        "optim.epochs: at most 100",
        "data.max_length: at most 32768",
        "lora.r: at most 256",
        "checkpoint.keep_last: at most 10",
        "freeze.patterns: '(a+)+$' nests a repeat inside a repeat",
    ):
        assert expected in message, message
    assert refused.value.param == "method.supervised.tuneforge.optim.max_steps"
    # OpenAI's own hyperparameters are held to the same caps, and named as sent.
    with pytest.raises(InvalidRequest, match=r"optim\.epochs: at most 100 ") as refused:
        store.create_job(
            "org-a",
            JobCreate(
                model="tiny-base",
                training_file=train_file.id,
                hyperparameters={"n_epochs": 1000},
            ),
        )
    assert refused.value.param == "hyperparameters.n_epochs"


def test_a_refusal_shows_no_server_path(store, train_file):
    store.file_path(train_file).unlink()  # gone from disk behind the store's back
    with pytest.raises(InvalidRequest) as refused:
        store.create_job("org-a", _request(train_file.id))
    assert "data.train: file not found" in refused.value.message
    assert str(store.data_dir) not in refused.value.message


def test_the_caps_are_the_operators(store, train_file):
    store.limits = JobLimits(max_steps=5, max_lora_r=4)
    with pytest.raises(InvalidRequest, match=r"optim\.max_steps: at most 5 .*lora\.r: at most 4"):
        store.create_job("org-a", _request(train_file.id, optim={"max_steps": 6}, lora={"r": 8}))
    job = store.create_job("org-a", _request(train_file.id, optim={"max_steps": 5}, lora={"r": 4}))
    assert job.train_overrides["optim.max_steps"] == 5


@pytest.mark.parametrize(
    "pattern",
    [
        "(a+)+$",
        r"(\w+\s?)*$",
        "(.*)*x",
        "(ab|a)*c",
        r"(x)\1",
        "(?=a)b",
        ".*.*.*x",
        "a" * 200,
        "[",
    ],
)
def test_dangerous_or_invalid_regexes_are_refused(pattern):
    assert regex_problem(pattern) is not None


@pytest.mark.parametrize(
    "pattern",
    [r"^model\.layers\.[0-5]\.", ".*mlp.*", "(q|k|v)_proj", "lm_head", r"layers\.\d+\.self_attn"],
)
def test_ordinary_freeze_patterns_pass(pattern):
    assert regex_problem(pattern) is None


# ---------------------------------------------------------------- per-organization quotas


def test_active_jobs_per_organization_are_limited(store, upload, tmp_path, train_file):
    store.limits = JobLimits(max_active_jobs=2)
    first = store.create_job("org-a", _request(train_file.id))
    store.create_job("org-a", _request(train_file.id))
    with pytest.raises(QuotaExceeded) as refused:
        store.create_job("org-a", _request(train_file.id))
    assert refused.value.status == 429 and refused.value.code == "rate_limit_exceeded"
    assert "2 active fine-tuning jobs" in refused.value.message
    other = upload("org-b", write_chat(tmp_path / "b.jsonl"))
    store.create_job("org-b", _request(other.id))  # a quota per organization
    store.cancel_job("org-a", first.id)  # a finished job frees its slot
    store.create_job("org-a", _request(train_file.id))


def test_stored_bytes_per_organization_are_limited(store, upload, tmp_path):
    data = write_chat(tmp_path / "t.jsonl")
    size = data.stat().st_size
    store.limits = JobLimits(max_file_bytes=2 * size + size // 2)
    upload("org-a", data)
    upload("org-a", data)
    tmp = tmp_path / "third.upload"
    tmp.write_bytes(data.read_bytes())
    with pytest.raises(QuotaExceeded) as refused:
        store.add_file("org-a", "t.jsonl", "fine-tune", tmp)
    assert refused.value.status == 429 and refused.value.code == "insufficient_quota"
    assert f"the limit is {2 * size + size // 2} bytes" in refused.value.message
    assert not tmp.exists()  # the refused upload is not left behind
    assert len(store.list_files("org-a").data) == 2
    upload("org-b", data)  # another organization has its own quota
    # A job's results file is always kept: the job must not fail at the very end.
    results = tmp_path / "results.csv"
    results.write_text("step,train_loss\n1,0.5\n")
    store.add_file("org-a", "step_metrics.csv", "fine-tune-results", results)


# ---------------------------------------------------------------- the worker


def _fake(code: str) -> list[str]:
    """A runner stand-in: `code` runs with `job_dir` (a Path) and `json` defined."""
    prelude = "import json, os, sys, time; from pathlib import Path; job_dir = Path(sys.argv[1])\n"
    return [sys.executable, "-c", prelude + code]


def test_the_training_process_gets_no_server_secret(store, train_file, tmp_path):
    job = store.create_job("org-a", _request(train_file.id))
    environ = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "TUNEFORGE_API_KEYS": "sk-secret-1,sk-secret-2",
        "TUNEFORGE_API_KEYS_FILE": str(tmp_path / "keys.json"),
        "TUNEFORGE_DATABASE_URL": "postgresql://tf:hunter2@db/tuneforge",
        "DATABASE_URL": "postgresql://tf:hunter2@db/tuneforge",
        "PGPASSWORD": "hunter2",
        "HF_HOME": str(tmp_path / "hf"),
    }
    dump = "(job_dir / 'env.json').write_text(json.dumps(dict(os.environ))); sys.exit(1)"
    Worker(store, poll_s=0.05, prewarm=False, command=_fake(dump), env=environ).run(once=True)
    seen = json.loads((store.job_dir(job.id) / "env.json").read_text())
    assert not [k for k in seen if k.startswith("TUNEFORGE_") and k != "TUNEFORGE_WORKER_PID"]
    assert "DATABASE_URL" not in seen and "PGPASSWORD" not in seen
    assert "hunter2" not in json.dumps(seen) and "sk-secret" not in json.dumps(seen)
    assert seen["HF_HOME"] == environ["HF_HOME"] and seen["PATH"] == environ["PATH"]


def test_a_job_past_its_wall_clock_limit_is_stopped_and_fails(store, train_file):
    job = store.create_job("org-a", _request(train_file.id))
    endless = "import signal; signal.signal(signal.SIGTERM, lambda *a: sys.exit(130))\n"
    endless += "while True: time.sleep(0.05)"
    start = time.monotonic()
    Worker(
        store, poll_s=0.05, lease_s=2, prewarm=False, command=_fake(endless), max_wall_s=1.0
    ).run(once=True)
    assert time.monotonic() - start < 20
    failed = store.get_job("org-a", job.id)
    assert failed.status == "failed"
    assert failed.error["code"] == "wall_clock_limit_exceeded"
    assert "wall-clock limit of 1 seconds" in failed.error["message"]


def test_a_failed_job_reports_no_traceback_and_no_server_path(store, train_file):
    job = store.create_job("org-a", _request(train_file.id))
    secret_path = str(store.data_dir / "files" / f"{train_file.id}.jsonl")
    crash = (
        "print('Traceback (most recent call last):', file=sys.stderr)\n"
        f"print('  File \"{store.data_dir}/x.py\", line 1', file=sys.stderr)\n"
        f"msg = 'ValueError: cannot read {secret_path}'\n"
        "print(msg, file=sys.stderr)\n"
        "(job_dir / 'result.json').write_text(json.dumps({'status': 'failed', 'error': msg}))\n"
        "sys.exit(1)"
    )
    Worker(store, poll_s=0.05, prewarm=False, command=_fake(crash)).run(once=True)
    failed = store.get_job("org-a", job.id)
    assert failed.status == "failed"
    assert failed.error == {
        "code": "training_failed",
        "message": f"ValueError: cannot read {train_file.id}.jsonl",
        "param": None,
    }
    shown = [failed.error["message"]] + [e.message for e in store.all_events(job.id)]
    shown += [json.dumps(e.data) for e in store.all_events(job.id) if e.data]
    assert not [m for m in shown if str(store.data_dir) in m or "Traceback" in m], shown
    # The operator still has the traceback in the job's log.
    log = (store.job_dir(job.id) / "logs" / "attempt-1.log").read_text()
    assert "Traceback" in log and secret_path in log


def test_public_message_cuts_paths_and_tracebacks():
    assert public_message("OSError: /srv/a/models/tiny-llama/ missing") == (
        "OSError: tiny-llama missing"
    )
    assert public_message("see https://huggingface.co/org/repo") == (
        "see https://huggingface.co/org/repo"
    )
    text = 'Traceback (most recent call last):\n  File "/usr/x.py"\nKeyError: /a/b/c'
    assert public_message(text) == "KeyError: c"
    assert len(public_message("x" * 5000)) <= 500


def test_a_chat_template_problem_is_the_training_files_not_a_crash(tiny_tokenizer):
    import copy

    from tuneforge.jobs.failures import describe
    from tuneforge.tokenize.encode import encode

    tokenizer = copy.deepcopy(tiny_tokenizer)
    # Renders the message count first: successive turns are not prefixes of each other.
    tokenizer.chat_template = (
        "{{ messages | length }}{% for m in messages %}<|im_start|>{{ m.role }}\n"
        "{{ m.content }}<|im_end|>\n{% endfor %}"
    )
    example = {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    }
    with pytest.raises(ValueError) as raised:
        encode(example, tokenizer)
    err = describe(raised.value, {"data.train": "/srv/data/files/file-x.jsonl"})
    assert err["code"] == "invalid_training_file" and err["param"] == "training_file"
    assert err["message"].startswith("The training data could not be tokenized: ")
    assert "Traceback" not in err["message"] and "/srv" not in err["message"]


# ---------------------------------------------------------------- preference (DPO) jobs


def _dpo(file_id: str, hyperparameters=None, **tuneforge) -> JobCreate:
    dpo = {"hyperparameters": hyperparameters or {}, "tuneforge": tuneforge}
    return JobCreate(model="tiny-base", training_file=file_id, method={"type": "dpo", "dpo": dpo})


def test_a_dpo_job_trains_task_dpo_with_its_beta(store, train_file):
    job = store.create_job(
        "org-a", _dpo(train_file.id, {"beta": 0.25, "n_epochs": 2}, lora={"r": 4})
    )
    assert job.train_overrides["task"] == "dpo" and job.train_overrides["dpo.beta"] == 0.25
    assert job.train_overrides["optim.epochs"] == 2 and job.train_overrides["lora.r"] == 4
    assert job.method == {
        "type": "dpo",
        "dpo": {
            "hyperparameters": {
                "n_epochs": 2,
                "batch_size": "auto",
                "learning_rate_multiplier": "auto",
                "beta": 0.25,
            },
            "tuneforge": {"lora": {"r": 4}},
        },
    }
    auto = store.create_job("org-a", _dpo(train_file.id))
    assert auto.train_overrides["task"] == "dpo" and "dpo.beta" not in auto.train_overrides


def test_a_dpo_jobs_lr_multiplier_is_of_dpos_auto_lr(store, train_file):
    from tuneforge.auto import DPO_LR_FACTOR
    from tuneforge.jobs.spec import resolved_hyperparameters

    hp = {"learning_rate_multiplier": 2}
    dpo = store.create_job("org-a", _dpo(train_file.id, hp)).train_overrides["optim.lr"]
    sft = JobCreate(model="tiny-base", training_file=train_file.id, hyperparameters=hp)
    sft_lr = store.create_job("org-a", sft).train_overrides["optim.lr"]
    assert dpo == pytest.approx(DPO_LR_FACTOR * sft_lr)
    # The job reports the multiplier back against the same rule.
    config = {"task": "dpo", "method": "lora", "optim": {"lr": 4e-5}}
    assert resolved_hyperparameters(config)["learning_rate_multiplier"] == 2.0
    config = {**config, "task": "causal_lm"}
    assert resolved_hyperparameters(config)["learning_rate_multiplier"] == 0.2
    # A DPO job may pick its best evaluation by reward accuracy.
    es = {"early_stop": {"metric": "valid_reward_accuracy"}}
    job = store.create_job("org-a", _dpo(train_file.id, **es))
    assert job.train_overrides["early_stop.metric"] == "valid_reward_accuracy"


@pytest.mark.parametrize(
    ("request_", "param", "words"),
    [
        (
            lambda f: _dpo(f, {"beta": 0.2}, dpo={"beta": 0.3}),
            "method.dpo.tuneforge",
            "both set the same thing",
        ),
        (lambda f: _dpo(f, {"beta": 0}), None, "beta"),
        (lambda f: _dpo(f, dpo={"label_smoothing": 0.7}), "method.dpo.tuneforge.dpo", "0.5"),
        (lambda f: _dpo(f, task="causal_lm"), "method.dpo.tuneforge", "does not fit"),
        (lambda f: _request(f, task="dpo"), "method.supervised.tuneforge", "does not fit"),
        (
            lambda f: _request(f, early_stop={"metric": "valid_reward_accuracy"}),
            "method.supervised.tuneforge",
            "not reported by task 'causal_lm'",
        ),
        (
            lambda f: JobCreate(
                model="tiny-base",
                training_file=f,
                method={"type": "dpo", "supervised": {"hyperparameters": {"n_epochs": 1}}},
            ),
            "method.supervised",
            "method.type is 'dpo'",
        ),
        (
            lambda f: JobCreate(
                model="tiny-base", training_file=f, method={"type": "reinforcement"}
            ),
            "method.type",
            "not supported yet",
        ),
    ],
)
def test_dpo_settings_are_checked_when_the_job_is_created(
    store, train_file, request_, param, words
):
    try:
        req = request_(train_file.id)
    except ValueError as err:  # refused by the request's schema (HTTP 400 too)
        assert words in str(err)
        return
    with pytest.raises(InvalidRequest) as refused:
        store.create_job("org-a", req)
    assert words in refused.value.message
    if param is not None:
        assert refused.value.param.startswith(param)


@pytest.mark.parametrize(
    ("rows", "task", "param", "words"),
    [
        ("pref", "causal_lm", "training_file", "holds preference examples (from line 1"),
        ("chat", "dpo", "training_file", "holds chat examples (from line 1"),
        ("chat", "dpo", "validation_file", "validation file holds chat examples"),
    ],
)
def test_data_that_does_not_fit_the_method_names_the_mismatch(
    tiny_model_dir, tmp_path, rows, task, param, words
):
    from tuneforge.jobs.failures import describe
    from tuneforge.tokenize.tokenizer import load_tokenizer
    from tuneforge.training.data import tokenize_file
    from tuneforge.training.dpo import read_preferences

    msgs = [{"role": "user", "content": "hi"}]
    row = (
        {"messages": [*msgs, {"role": "assistant", "content": "hello"}]}
        if rows == "chat"
        else {
            "input": {"messages": msgs},
            "preferred_output": [{"role": "assistant", "content": "Hello!"}],
            "non_preferred_output": [{"role": "assistant", "content": "What?"}],
        }
    )
    path = tmp_path / "files" / "file-x.jsonl"
    path.parent.mkdir()
    path.write_text(json.dumps(row) + "\n")
    tok = load_tokenizer(str(tiny_model_dir))
    with pytest.raises(ValueError) as raised:
        if task == "dpo":
            read_preferences(path, tok, 512, "drop")
        else:
            tokenize_file(path, tok, "assistant", 512, "drop")
    key = "data.train" if param == "training_file" else "data.valid"
    err = describe(raised.value, {key: str(path), "task": task})
    assert err["code"] == f"invalid_{param}" and err["param"] == param
    assert words in err["message"]
    other = "dpo" if task == "causal_lm" else "supervised"
    assert f"method.type '{other}'" in err["message"]
    assert "/" not in err["message"] and "Traceback" not in err["message"]
