"""The README and docs tell the truth about the CLI.

Every `tuneforge ...` command they show exists (answers `--help`), the README's test command
is what CI runs, and the generated reference pages match the code.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tuneforge.__main__ import app
from tuneforge.docgen import PAGES

ROOT = Path(__file__).resolve().parents[1]
PAGES_WITH_COMMANDS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _command_path(words: list[str]) -> list[str]:
    """The subcommand path of `tuneforge WORDS...`: as deep as the command groups go."""
    group = typer.main.get_command(app)
    path: list[str] = []
    for word in words:
        commands = getattr(group, "commands", None)
        if not commands or word not in commands:
            break
        path.append(word)
        group = commands[word]
    return path


def shown_commands(page: Path) -> list[list[str]]:
    """Every `tuneforge` command line inside the page's fenced code blocks."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", page.read_text(), flags=re.S)
    found = []
    for block in blocks:
        for line in block.splitlines():
            for part in re.split(r"&&|\||;", line):
                words = part.strip().removeprefix("$ ").split()
                if words[:1] == ["tuneforge"] and len(words) > 1:
                    found.append(words[1:])
    return found


CASES = [
    pytest.param(words, id=f"{page.name}: tuneforge {' '.join(words[:2])}")
    for page in PAGES_WITH_COMMANDS
    for words in shown_commands(page)
]


def test_readme_shows_the_demo_and_the_test_command():
    text = (ROOT / "README.md").read_text()
    assert "bash scripts/install.sh && tuneforge demo" in text
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = "bash scripts/install.sh --dev && python3 -m pytest"
    assert test_command in text and test_command in ci


@pytest.mark.parametrize("words", CASES)
def test_shown_command_exists(words):
    path = _command_path(words)
    assert path, f"`tuneforge {' '.join(words)}`: no such command"
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    # Every option the page uses is one the command accepts.
    help_text = result.output
    for word in words[len(path) :]:
        option = word.split("=")[0]
        if re.fullmatch(r"--[a-z][a-z-]*", option):
            assert option in help_text, f"`tuneforge {' '.join(path)}` has no option {option}"


@pytest.mark.parametrize("name", sorted(PAGES))
def test_generated_reference_is_current(name):
    committed = (ROOT / "docs" / name).read_text()
    assert committed == PAGES[name](), (
        f"docs/{name} is stale: run `python -m tuneforge.docgen docs/` and commit it"
    )
