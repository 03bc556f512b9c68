"""The `tuneforge` command. Thin: parses arguments, calls the modules, prints results."""

from __future__ import annotations

import typer
from rich.console import Console

from tuneforge import __version__

app = typer.Typer(
    help="TuneForge: fine-tune GPT-style language models on your own data, self-hosted.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Check, clean, split and inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        console.print(f"tuneforge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """TuneForge: fine-tune GPT-style language models on your own data, self-hosted."""


# ---------------------------------------------------------------------------------------------
# tuneforge data ...
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# tuneforge train
# ---------------------------------------------------------------------------------------------


def main() -> None:
    app()
