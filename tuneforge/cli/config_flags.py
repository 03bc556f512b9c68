"""The `train` / `lr-find` options, generated from `TrainConfig`: one flag per config key.

Every key of the config (see docs/config.md) is a flag of the same name, `--optim.lr`, with the
field's type, default and description; a field added to the config is a flag without a change
here. The short names users know (`--lr`, `--model`, `-o`, ...) are extra names of those flags.
Precedence, lowest first: the field's default, the `--config` YAML file, a flag, `--set`.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel
from pydantic_core import PydanticUndefined
from typer.core import TyperCommand

from tuneforge.cli.common import parse_set, print_config_problems, replace_parameter
from tuneforge.training.config import ConfigError, TrainConfig, load_config

# Short names of some keys, kept as they were before the flags were derived from the config.
SHORT_NAMES: dict[str, tuple[str, ...]] = {
    "model.name_or_path": ("--model",),
    "model.dtype": ("--dtype",),
    "data.train": ("--train",),
    "data.valid": ("--valid",),
    "data.max_length": ("--max-length",),
    "data.packing": ("--packing",),
    "parent.model": ("--from",),
    "parent.replay": ("--replay",),
    "optim.epochs": ("--epochs",),
    "optim.max_steps": ("--max-steps",),
    "optim.batch_size": ("--batch-size",),
    "optim.grad_accum": ("--grad-accum",),
    "optim.lr": ("--lr",),
    "eval.eval_every": ("--eval-every",),
    "checkpoint.save_every": ("--save-every",),
    "checkpoint.resume": ("--resume",),
    "output.dir": ("--output", "-o"),
    "output.merge": ("--merge",),
}


@dataclass(frozen=True)
class ConfigFlag:
    """One config key as a command-line option."""

    key: str  # "optim.lr"
    names: tuple[str, ...]  # ("--lr", "--optim.lr"): the short name first, where there is one
    kind: str  # flag, int, float, text (kept as typed), word (a number or a word), yaml
    help: str
    default: str | None  # the config's default, shown in --help; None: required
    section: str  # "optim"; "" for a top-level key
    metavar: str | None = None  # "<fp32|bf16>", "<int|auto>"; None: the type's own

    @property
    def param(self) -> str:
        """The Python name Typer passes the value by."""
        return self.key.replace(".", "__")

    def parameter(self) -> inspect.Parameter:
        annotation: Any = {"flag": bool, "int": int, "float": float}.get(self.kind, str)
        names = self.names
        if self.kind == "flag":  # --data.packing/--no-data.packing
            names = tuple(f"{n}/--no-{n.removeprefix('--')}" for n in names if n.startswith("--"))
        panel = f"{self.section or 'run'} options"
        option = typer.Option(
            None,
            *names,
            help=self.help,
            metavar=self.metavar,
            show_default=self.default if self.default is not None else False,
            rich_help_panel=panel,
        )
        return inspect.Parameter(
            self.param, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation | None
        )

    def convert(self, value: Any) -> Any:
        """A value as given on the command line -> the value for the config key."""
        if self.kind in ("flag", "int", "float", "text"):
            return value
        import yaml

        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        if self.kind == "yaml":
            return parsed
        # "auto" or a number: a number when it reads as one, else the word as typed.
        is_number = isinstance(parsed, (int, float)) and not isinstance(parsed, bool)
        return parsed if is_number else value


def _members(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


def _is_words(member: Any) -> bool:
    return typing.get_origin(member) is typing.Literal and all(
        isinstance(a, str) for a in typing.get_args(member)
    )


def _kind(annotation: Any) -> str:
    members = _members(annotation)
    if members == [bool]:
        return "flag"
    if members == [int]:
        return "int"
    if members == [float]:
        return "float"
    if all(m in (str, Path) or _is_words(m) for m in members):
        return "text"
    if all(m in (int, float) or _is_words(m) for m in members):
        return "word"
    return "yaml"


def _metavar(annotation: Any, kind: str) -> str | None:
    if kind == "yaml":
        return "<yaml>"
    if kind not in ("text", "word"):
        return None
    names: list[str] = []
    for member in _members(annotation):
        names += typing.get_args(member) if _is_words(member) else [member.__name__.lower()]
    return f"<{'|'.join(names)}>"


def _default(field: Any) -> str | None:
    if field.default_factory is not None:
        return str(field.default_factory())
    if field.default is PydanticUndefined:
        return None
    return "null" if field.default is None else str(field.default)


def _walk(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _walk(annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field


def config_flags(model: type[BaseModel] = TrainConfig) -> list[ConfigFlag]:
    """Every leaf key of the config as a flag, in the config's order."""
    flags = []
    for key, field in _walk(model):
        kind = _kind(field.annotation)
        description = (field.description or "").strip()
        if kind == "yaml":
            description += " (a YAML value)"
        flags.append(
            ConfigFlag(
                key=key,
                names=(*SHORT_NAMES.get(key, ()), f"--{key}"),
                kind=kind,
                help=description,
                default=_default(field),
                section=key.rpartition(".")[0],
                metavar=_metavar(field.annotation, kind),
            )
        )
    return flags


FLAGS = config_flags()

_CONFIG = inspect.Parameter(
    "config",
    inspect.Parameter.KEYWORD_ONLY,
    default=typer.Option(None, "--config", "-c", help="YAML config file."),
    annotation=Path | None,
)
_SET = inspect.Parameter(
    "set_",
    inspect.Parameter.KEYWORD_ONLY,
    default=typer.Option(
        [], "--set", help="Any config key, e.g. --set lora.r=8 (repeatable; YAML values)."
    ),
    annotation=list[str],
)


def build_config(config: Path | None, flags: dict[str, Any], sets: list[str]) -> TrainConfig:
    """The config of `--config FILE`, the flags' values (by `ConfigFlag.param`, None: not given)
    and `--set` items, later ones winning; prints every problem and exits 2 when invalid."""
    overrides = {
        flag.key: flag.convert(flags[flag.param])
        for flag in FLAGS
        if flags.get(flag.param) is not None
    }
    from_set, problems = parse_set(sets)
    overrides.update(from_set)
    if problems:
        print_config_problems(problems)
    try:
        return load_config(config, overrides)
    except ConfigError as err:
        print_config_problems(err.problems)


def config_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a command taking `cfg: TrainConfig`: Typer shows `--config`, a flag per config
    key and `--set` in its place, and the command receives the validated config."""
    params = [_CONFIG, *(flag.parameter() for flag in FLAGS), _SET]

    def build(values: dict[str, Any]) -> TrainConfig:
        config, sets = values.pop("config"), values.pop("set_")
        return build_config(config, values, sets)

    return replace_parameter(fn, "cfg", params, build)


class ConfigCommand(TyperCommand):
    """Plain (Click) help in one section per config section: Rich's option table cuts long
    names such as `--model.gradient_checkpointing` short in an 80-column terminal."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        mode, self.rich_markup_mode = self.rich_markup_mode, None
        try:
            super().format_help(ctx, formatter)
        finally:
            self.rich_markup_mode = mode

    def format_options(self, ctx: Any, formatter: Any) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                panel = getattr(param, "rich_help_panel", None) or "Options"
                sections.setdefault(panel, []).append(record)
        for name, rows in sections.items():
            with formatter.section(name):
                formatter.write_dl(rows)
