"""`tuneforge` / `python -m tuneforge`: the CLI of `tuneforge.cli` plus `tuneforge demo`.

The demo drives the CLI (it runs `tuneforge data clean`, `train`, ... in-process), so it sits
above it, and the two meet only here.
"""

from __future__ import annotations

from pathlib import Path

import typer

from tuneforge.cli import create_app
from tuneforge.cli.common import console, fail
from tuneforge.demo.journey import EXAMPLES, run_demo


def demo(
    example: str = typer.Option(
        "bank", "--example", help="bank (support chats) or search (shopping queries to JSON)."
    ),
    workdir: Path = typer.Option(
        Path("tuneforge-demo"), "--workdir", help="Folder for everything the demo writes."
    ),
    model: str | None = typer.Option(
        None, "--model", help="A Hub id or local model folder instead of SmolLM2-135M-Instruct."
    ),
    quick: bool = typer.Option(False, "--quick", help="A shorter run (smaller data, fewer steps)."),
    toy: bool = typer.Option(
        False, "--toy", help="Use the bundled 2.8M-parameter toy model: seconds, no download."
    ),
) -> None:
    """The whole journey offline: clean data, lr-find, fine-tune, evaluate, compare, serve."""
    if example not in EXAMPLES:
        fail(f"--example must be one of {', '.join(EXAMPLES)}", 2)
    run_demo(workdir / example, console, model=model, quick=quick, example=example, toy=toy)


app = create_app()
app.command("demo")(demo)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
