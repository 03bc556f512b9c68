"""`train` / `lr-find` options are derived from `TrainConfig`: one flag per key, the short names
kept, and the precedence default < --config < flag < --set."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
import typer
from pydantic import BaseModel, Field
from typer.testing import CliRunner

import tuneforge.training.loop as loop
from tuneforge.cli import app
from tuneforge.cli.common import StoreOptions, store_options
from tuneforge.cli.config_flags import FLAGS, SHORT_NAMES, config_flags


def _leaf_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            keys += _leaf_keys(sub, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _options(command: str) -> dict[str, str]:
    """Every option name of a command -> the parameter it sets."""
    cmd = typer.main.get_command(app).commands[command]
    names: dict[str, str] = {}
    for param in cmd.params:
        for opt in [*param.opts, *param.secondary_opts]:
            assert opt not in names, f"{command}: {opt} names two options"
            names[opt] = param.name
    return names


@pytest.mark.parametrize("command", ["train", "lr-find"])
def test_every_config_key_is_a_flag_and_every_short_name_is_kept(command):
    from tuneforge.training.config import TrainConfig

    options = _options(command)
    for key in _leaf_keys(TrainConfig):
        assert options[f"--{key}"] == key.replace(".", "__")
    for key, names in SHORT_NAMES.items():
        for name in names:
            assert options[name] == key.replace(".", "__"), name
    # The names README, docs and scripts use.
    for name in ("--model", "--train", "--valid", "--method", "--epochs", "--batch-size", "--lr",
                 "--output", "-o", "--from", "--replay", "--packing", "--no-packing", "--merge",
                 "--config", "-c", "--set"):  # fmt: skip
        assert name in options


def test_a_new_config_field_gets_a_flag_with_its_type_default_and_help():
    class Section(BaseModel):
        rate: float | Literal["auto"] = Field("auto", description="How fast.")
        on: bool = Field(False, description="Switch.")

    class Config(BaseModel):
        part: Section = Field(default_factory=Section)
        name: str = Field(description="A name.")

    flags = {f.key: f for f in config_flags(Config)}
    assert set(flags) == {"part.rate", "part.on", "name"}
    rate = flags["part.rate"]
    assert (rate.names, rate.help, rate.default, rate.kind) == (
        ("--part.rate",),
        "How fast.",
        "auto",
        "word",
    )
    assert rate.convert("0.5") == 0.5 and rate.convert("auto") == "auto"
    assert flags["part.on"].kind == "flag" and flags["name"].default is None


def test_precedence_yaml_then_flags_then_set(tmp_path, monkeypatch):
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "hi"}\n')
    config = tmp_path / "run.yaml"
    config.write_text("model:\n  name_or_path: gpt2\noptim:\n  lr: 0.001\n  epochs: 5\n")
    seen = {}

    def fake_run(cfg, console):
        seen["cfg"] = cfg
        return type("Result", (), {"status": "completed"})()

    monkeypatch.setattr(loop, "run_training", fake_run)
    args = ["train", "-c", str(config), "--train", str(data), "-o", str(tmp_path / "out")]
    args += ["--epochs", "2", "--lr", "1e-4", "--set", "optim.lr=0.0003", "--lora.r", "4"]
    args += ["--optim.betas", "[0.8, 0.9]", "--unfreeze.every", "epoch", "--no-packing"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert cfg.model.name_or_path == "gpt2"  # YAML
    assert cfg.optim.epochs == 2  # a flag over the YAML
    assert cfg.optim.lr == 3e-4  # --set over the flag
    assert cfg.lora.r == 4 and cfg.optim.betas == (0.8, 0.9) and cfg.unfreeze.every == "epoch"
    assert cfg.data.packing is False and cfg.optim.batch_size == "auto"  # a default


def test_flags_are_generated_in_config_order():
    assert FLAGS[0].key == "model.name_or_path" and FLAGS[-1].key == "seed"


def test_store_options_are_one_typed_object():
    seen = []
    demo = typer.Typer()

    @demo.command()
    @store_options("data_dir", "org")
    def show(name: str = typer.Argument(...), *, store: StoreOptions) -> None:
        seen.append((name, store))

    result = CliRunner().invoke(demo, ["x", "--org", "org-a", "--data-dir", "d"])
    assert result.exit_code == 0, result.output
    assert seen == [("x", StoreOptions(data_dir=Path("d"), org="org-a"))]
    assert "--base-url" not in CliRunner().invoke(demo, ["--help"]).output
