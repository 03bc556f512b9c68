"""`tuneforge demo`: the fine-tuning journey on a bundled example, offline.

Each step prints the command a user would type and then runs exactly that command through the
CLI, so what the demo shows is what the tool does.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.rule import Rule

from tuneforge.demo.bank import clean_examples, write_bank_dataset, write_blocklist


class Journey:
    """Runs the demo's steps in `workdir`, printing each as a command."""

    def __init__(self, workdir: Path, console: Console, quick: bool = False):
        self.workdir = workdir
        self.console = console
        self.quick = quick
        self.step = 0

    def say(self, title: str, why: str) -> None:
        self.step += 1
        self.console.print(Rule(f"[bold]{self.step}. {title}"))
        self.console.print(f"[dim]{why}[/dim]")

    def run(self, *args: str, expect_fail: bool = False) -> int:
        """Run `tuneforge ARGS` in-process, showing the command first; returns the exit code."""
        from tuneforge.cli import app

        shown = " ".join(shlex.quote(a) for a in args)
        self.console.print(f"\n[bold cyan]$ tuneforge {shown}[/bold cyan]")
        try:
            app(list(args), standalone_mode=False)
            code = 0
        except typer.Exit as e:
            code = e.exit_code
        except SystemExit as e:
            code = int(e.code or 0)
        if code and not expect_fail:
            raise RuntimeError(f"`tuneforge {shown}` failed with exit code {code}")
        return code

    def path(self, name: str) -> str:
        return str(self.workdir / name)


def build_demo_base(folder: Path, console: Console) -> Path:
    """A small Llama model and BPE tokenizer made locally for the demo (nothing is downloaded)."""
    from tuneforge.modeling.tiny import build_model, save_model_folder, train_tokenizer

    if (folder / "config.json").exists():
        return folder
    corpus = []
    for example in clean_examples(2000, seed=1):
        corpus += [m["content"] for m in example["messages"]]
    tokenizer = train_tokenizer(corpus, vocab_size=1024)
    model = build_model(tokenizer, arch="llama", hidden_size=128, num_layers=4, num_heads=4)
    console.print(
        f"[dim]built a {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M-parameter Llama "
        f"with a {len(tokenizer)}-token BPE tokenizer in {folder}[/dim]"
    )
    return save_model_folder(model, tokenizer, folder)


def run_demo(
    workdir: Path, console: Console, model: str | None = None, quick: bool = False
) -> None:
    """Walk the journey: write dirty data, check, clean, split, count tokens, fine-tune."""
    started = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    j = Journey(workdir, console, quick=quick)

    j.say("A dataset", "Customer-support chats for a bank, dirty as real logs are.")
    raw = write_bank_dataset(workdir / "bank.jsonl", n=150 if quick else 400)
    blocklist = write_blocklist(workdir / "blocklist.txt")
    console.print(f"wrote {raw} and {blocklist}")

    j.say(
        "Check it",
        "Every problem with its line number and a fix; training would fail on this file.",
    )
    j.run("data", "check", str(raw), "--limit", "12", expect_fail=True)

    j.say(
        "Clean it", "Fix what is safe, drop what is not, dedupe, filter biased phrases, redact PII."
    )
    cleaned = j.path("bank.clean.jsonl")
    j.run(
        "data", "clean", str(raw), "-o", cleaned,
        "--blocklist", str(blocklist), "--redact-pii", "--max-tokens", "256",
    )  # fmt: skip
    j.run("data", "check", cleaned)

    j.say("Hold out a validation set", "A seeded split; duplicates never straddle it.")
    j.run(
        "data", "split", cleaned, "--valid", "0.1", "--seed", "0",
        "--train-out", j.path("train.jsonl"), "--valid-out", j.path("valid.jsonl"),
    )  # fmt: skip

    j.say(
        "A base model", "A pretrained GPT to transfer from (built locally: nothing is downloaded)."
    )
    base = model or str(build_demo_base(workdir / "base-model", console))

    j.say("Count tokens", "With the model's own tokenizer and chat template.")
    j.run("data", "stats", j.path("train.jsonl"), "--model", base)
    j.run("data", "inspect", j.path("train.jsonl"), "--model", base, "--count", "1")

    console.print(Rule(f"[bold green]demo finished in {time.perf_counter() - started:.0f} s"))
    console.print(f"Everything it wrote is in {workdir}")
