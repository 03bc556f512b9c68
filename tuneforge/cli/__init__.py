"""The `tuneforge` command. Thin: parses arguments, calls the modules, prints results.

One module per command group (`data`, `train` + `lr-find`, `evaluate`, `jobs`, `models`,
`serve`); `common` holds what they share. The `demo` command sits above the CLI it drives and
joins it in `tuneforge.__main__`.

Example:
    >>> from typer.testing import CliRunner
    >>> CliRunner().invoke(create_app(), ["data", "check", "train.jsonl"]).exit_code
    0
"""

from __future__ import annotations

import typer

from tuneforge import __version__
from tuneforge.cli.common import console
from tuneforge.cli.config_flags import ConfigCommand
from tuneforge.cli.data import data_app
from tuneforge.cli.evaluate import eval_, report
from tuneforge.cli.jobs import jobs_app, worker
from tuneforge.cli.models import models_app
from tuneforge.cli.serve import serve
from tuneforge.cli.train import lr_find_cmd, train

HELP = "TuneForge: fine-tune GPT-style language models on your own data, self-hosted."


def _version(value: bool) -> None:
    if value:
        console.print(f"tuneforge {__version__}")
        raise typer.Exit()


def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """TuneForge: fine-tune GPT-style language models on your own data, self-hosted."""


def create_app() -> typer.Typer:
    """A new `tuneforge` app with every command of the CLI (the demo is added by
    `tuneforge.__main__`)."""
    app = typer.Typer(
        help=HELP, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False
    )
    app.callback()(_root)
    app.command("train", cls=ConfigCommand)(train)
    app.command("worker")(worker)
    app.command("eval")(eval_)
    app.command("report")(report)
    app.command("serve")(serve)
    app.command("lr-find", cls=ConfigCommand)(lr_find_cmd)
    app.add_typer(data_app, name="data")
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(models_app, name="models")
    return app


app = create_app()

__all__ = ["app", "create_app"]
