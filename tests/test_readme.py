"""The README's commands exist: each `tuneforge ...` it shows answers `--help`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneforge.cli import app

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[list[str]]:
    """The subcommand path of every `tuneforge` command line in README.md code blocks."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    commands = []
    for block in blocks:
        for line in block.splitlines():
            for part in re.split(r"&&|\|", line):
                words = part.strip().split()
                if words[:1] == ["tuneforge"]:
                    path = [w for w in words[1:3] if re.fullmatch(r"[a-z][a-z-]*", w)]
                    commands.append(path)
    return commands


def test_readme_shows_the_demo_and_the_test_command():
    text = (ROOT / "README.md").read_text()
    assert "tuneforge demo" in text
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = "bash scripts/install.sh --dev && python3 -m pytest"
    assert test_command in text and test_command in ci


@pytest.mark.parametrize("path", readme_commands(), ids=" ".join)
def test_readme_command_exists(path):
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
