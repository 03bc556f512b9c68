"""What every command group shares: the consoles, one error printer, one `--set` parser, one
tokenizer loader, and the job store's options defined once (`StoreOptions`)."""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True)


def print_error(message: object) -> None:
    """One line on stderr: `error: MESSAGE` (the message is never read as Rich markup)."""
    err_console.print(f"[red]error:[/red] {escape(str(message))}", soft_wrap=True, highlight=False)


def fail(message: object, code: int = 1, as_json: bool = False, **context: Any) -> NoReturn:
    """Print an error (as `{..context, "ok": false, "error": ...}` on stdout with `as_json`)
    and exit with `code`."""
    if as_json:
        sys.stdout.write(json.dumps({**context, "ok": False, "error": str(message)}) + "\n")
    else:
        print_error(message)
    raise typer.Exit(code)


def parse_set(items: Iterable[str]) -> tuple[dict[str, Any], list[str]]:
    """`--set a.b=VALUE` items -> ({"a.b": VALUE parsed as YAML}, problems)."""
    import yaml

    overrides: dict[str, Any] = {}
    problems = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            problems.append(f"--set {item!r}: expected KEY=VALUE")
            continue
        overrides[key.strip()] = yaml.safe_load(raw)
    return overrides, problems


def print_config_problems(problems: list[str]) -> NoReturn:
    """Every problem of a training config, one per line; exit 2."""
    err_console.print(f"[red]invalid training config[/] ({len(problems)} problems):")
    for problem in problems:
        err_console.print(f"  - {problem}", markup=False, highlight=False)
    raise typer.Exit(2)


def load_tokenizer_or_exit(model: str | None, as_json: bool = False, **context: Any) -> Any:
    """The tokenizer of a model folder or Hub id (None without one); exit 2 when it cannot
    be loaded."""
    if model is None:
        return None
    from tuneforge.tokenize.tokenizer import load_tokenizer

    try:
        return load_tokenizer(model)
    except Exception as e:  # transformers raises OSError, ValueError, ... for a bad model
        fail(f"cannot load a tokenizer from {model!r}: {e}", 2, as_json, **context)


def replace_parameter(
    fn: Callable[..., Any],
    name: str,
    params: list[inspect.Parameter],
    build: Callable[[dict[str, Any]], Any],
) -> Callable[..., Any]:
    """A command whose parameter `name` is replaced by `params` (the options Typer shows);
    `build` turns their values into the one value `fn` receives as `name`."""
    signature = inspect.signature(fn, eval_str=True)
    new: list[inspect.Parameter] = []
    for p in signature.parameters.values():
        new += params if p.name == name else [p]
    # Typer passes every value by keyword: keyword-only parameters may come in any order.
    new = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in new]
    own = [p.name for p in params]

    def command(**kwargs: Any) -> Any:
        values = {key: kwargs.pop(key) for key in own}
        return fn(**kwargs, **{name: build(values)})

    for attr in ("__name__", "__qualname__", "__doc__", "__module__"):
        setattr(command, attr, getattr(fn, attr))
    command.__signature__ = signature.replace(parameters=new)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in new}
    return command


# The job store --------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreOptions:
    """Where the jobs and models live: a store (data dir + database) or a server (base URL)."""

    data_dir: Path = Path("tuneforge-data")
    database_url: str | None = None
    base_url: str | None = None
    api_key: str | None = None
    org: str | None = None

    def client(self) -> Any:
        """An `HttpClient` with `base_url`, a `StoreClient` on the store otherwise."""
        from tuneforge.jobs.client import HttpClient, StoreClient

        if self.base_url:
            return HttpClient(self.base_url, self.api_key)
        return StoreClient(self.data_dir, self.database_url, self.org)


_STORE_OPTIONS: dict[str, tuple[Any, Any]] = {
    "data_dir": (
        Path,
        typer.Option(Path("tuneforge-data"), "--data-dir", help="The job store's data directory."),
    ),
    "database_url": (
        str | None,
        typer.Option(
            None, "--database-url", help="Job store database URL (default: SQLite in --data-dir)."
        ),
    ),
    "base_url": (
        str | None,
        typer.Option(
            None,
            "--base-url",
            help="Talk to this server (e.g. http://127.0.0.1:8000) instead of the store.",
        ),
    ),
    "api_key": (
        str | None,
        typer.Option(None, "--api-key", envvar="OPENAI_API_KEY", help="Key for --base-url."),
    ),
    "org": (
        str | None,
        typer.Option(None, "--org", help="Store mode: only this organization (default: all)."),
    ),
}
assert list(_STORE_OPTIONS) == [f.name for f in fields(StoreOptions)]


def store_options(*names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command taking `store: StoreOptions`: Typer shows the store options `names`
    (default: all five) in its place.

        @jobs_app.command("list")
        @store_options()
        def jobs_list(store: StoreOptions, limit: int = ...) -> None: ...
    """
    chosen = names or tuple(_STORE_OPTIONS)
    params = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=_STORE_OPTIONS[name][1],
            annotation=_STORE_OPTIONS[name][0],
        )
        for name in chosen
    ]

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        return replace_parameter(fn, "store", params, lambda values: StoreOptions(**values))

    return decorate


def store_call(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a client call; print a store or HTTP error as one line and exit 1."""
    from tuneforge.jobs.errors import StoreError

    try:
        return fn(*args)
    except (StoreError, RuntimeError, KeyError) as err:
        fail(getattr(err, "message", err))


JSON_OPTION = typer.Option(False, "--json", help="Print JSON on stdout.")
