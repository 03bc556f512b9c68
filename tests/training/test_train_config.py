"""The typed config: YAML + flags, every problem listed at once, "auto" resolution."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.training.config import (
    ConfigError,
    auto_batch_size,
    auto_epochs,
    load_config,
    resolve_auto,
    save_config,
)


def test_flags_override_yaml_and_roundtrip(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text('{"text": "hi"}\n')
    path = tmp_path / "cfg.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": {"name_or_path": "m"},
                "data": {"train": str(train), "packing": True},
                "method": "full",
                "optim": {"lr": 1e-4, "epochs": 2},
                "output": {"dir": str(tmp_path / "out")},
            }
        )
    )
    cfg = load_config(path, {"optim.lr": 3e-5, "lora.r": 4})
    assert cfg.optim.lr == 3e-5 and cfg.optim.epochs == 2 and cfg.lora.r == 4
    assert cfg.data.packing and cfg.method == "full"
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg


def test_every_problem_is_listed_at_once(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(
            None,
            {
                "model.name_or_path": "m",
                "data.train": str(tmp_path / "missing.jsonl"),
                "optim.lr": 5,
                "optim.epochs": "many",
                "optim.batch_size": 6,
                "optim.grad_accum": 4,
                "lora.r": 0,
                "method": "full",
                "output.dir": "o",
                "output.merge": True,
                "optim.shedule": "cosine",
            },
        )
    problems = "\n".join(info.value.problems)
    for expected in (
        "data.train: file not found",
        "optim.lr: must be in (0, 1) or 'auto'",
        "optim.epochs: must be a number or 'auto'",
        "optim.grad_accum: batch_size (6) must be a multiple of grad_accum (4)",
        "lora.r:",
        "output: merge is only meaningful with method 'lora'",
        "optim.shedule: unknown key",
    ):
        assert expected in problems
    assert len(info.value.problems) == 7


def test_unknown_yaml_keys_rejected(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("model: {name_or_path: m, revision: main}\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "model.revision: unknown key" in info.value.problems
    assert "learning_rate: unknown key" in info.value.problems


def test_auto_hyperparameters_follow_openai_rules(tmp_path):
    assert auto_epochs(10) == 10  # 10 examples: 100 seen
    assert auto_epochs(2) == 25  # capped
    assert auto_epochs(1000) == 3
    assert auto_epochs(20_000) == 1
    assert auto_epochs(10_000) == 2  # <= 25000 seen
    assert [auto_batch_size(n) for n in (4, 40, 1000, 100_000, 10**7)] == [1, 8, 8, 256, 256]
    train = tmp_path / "t.jsonl"
    train.write_text("{}\n")
    cfg = load_config(
        None, {"model.name_or_path": "m", "data.train": str(train), "output.dir": "o"}
    )
    lora = resolve_auto(cfg, 40, multiple_of=3)
    assert (lora.optim.epochs, lora.optim.batch_size, lora.optim.lr) == (3, 6, 2e-4)
    full = resolve_auto(cfg.model_copy(update={"method": "full"}), 40)
    assert full.optim.lr == 2e-5 and cfg.optim.lr == "auto"
    # The auto LR grows as the model narrows (4096 / hidden size), at most 4.5x.
    widths = (8192, 4096, 2048, 576, 64)
    assert [resolve_auto(cfg, 40, width=w).optim.lr for w in widths] == pytest.approx(
        [2e-4, 2e-4, 4e-4, 9e-4, 9e-4]
    )
    assert resolve_auto(full, 40, width=2048).optim.lr == 2e-5  # set already: kept
    # Preference tuning: a tenth of the supervised rule, for the same method and width.
    dpo = cfg.model_copy(update={"task": "dpo"})
    assert [resolve_auto(dpo, 40, width=w).optim.lr for w in widths] == pytest.approx(
        [2e-5, 2e-5, 4e-5, 9e-5, 9e-5]
    )
    dpo_full = dpo.model_copy(update={"method": "full"})
    assert resolve_auto(dpo_full, 40, width=576).optim.lr == pytest.approx(9e-6)
    assert max(resolve_auto(dpo_full, 40, width=w).optim.lr for w in widths) <= 9e-6 * (1 + 1e-9)


def test_cli_prints_every_problem_without_traceback(tmp_path):
    result = CliRunner().invoke(
        app,
        ["train", "--train", str(tmp_path / "nope.jsonl"), "--epochs", "x", "--set", "foo=1"],
    )
    assert result.exit_code == 2
    out = result.output
    assert "Traceback" not in out
    for expected in (
        "model: required",
        "data.train: file not found",
        "optim.epochs",
        "foo: unknown key",
    ):
        assert expected in out


@pytest.mark.parametrize("name", ["lora.yaml", "full.yaml"])
def test_example_configs_are_valid(name, tmp_path):
    from pathlib import Path

    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "hi"}\n')
    example = Path(__file__).parents[2] / "examples" / name
    cfg = load_config(example, {"data.train": str(data), "data.valid": str(data)})
    assert cfg.method == name.removesuffix(".yaml")


def test_cli_reports_unreadable_training_lines(tiny_model_dir, tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text('{"text": "fine"}\n{"text": broken\n')
    args = ["train", "--model", str(tiny_model_dir), "--train", str(train)]
    result = CliRunner().invoke(app, [*args, "--output", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "line 2" in result.output and "Traceback" not in result.output
