"""`tuneforge demo`: the guide's whole fine-tuning journey on a bundled example, offline.

Each step prints the command a user would type and then runs exactly that command through the
CLI (in this process), so what the demo shows is what the tool does. Two examples:

- ``bank``: customer-support chats for a bank, deliberately dirty. Check, clean, split, count
  tokens, find a learning rate, fine-tune with LoRA (and with gradual unfreezing), evaluate
  against the base model with a report, and answer questions side by side.
- ``search``: colloquial shopping queries to JSON search filters, scored by JSON field accuracy.
"""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.rule import Rule
from rich.table import Table

from tuneforge.cli import app
from tuneforge.demo.bank import SYSTEM as BANK_SYSTEM
from tuneforge.demo.bank import write_bank_dataset, write_blocklist
from tuneforge.demo.base import demo_base
from tuneforge.demo.corpus import paragraphs
from tuneforge.demo.search import SYSTEM as SEARCH_SYSTEM
from tuneforge.demo.search import write_search_dataset
from tuneforge.fsutil import atomic_write

EXAMPLES = ("bank", "search")

BANK_QUESTIONS = [
    "Hi, I lost my card yesterday",
    "how much does the account cost?",
    "is the branch open on saturday",
]
SEARCH_QUESTIONS = ["gimme blu kicks under 50 bucks", "need a blk puffer sz L", "cheap pnk tee"]


class Journey:
    """Runs the demo's steps in `workdir`, printing each as a command."""

    def __init__(self, workdir: Path, console: Console):
        self.workdir = workdir
        self.console = console
        self.step = 0

    def say(self, title: str, why: str) -> None:
        self.step += 1
        self.console.print(Rule(f"[bold]{self.step}. {title}"))
        self.console.print(f"[dim]{why}[/dim]")

    def run(self, *args: str, expect_fail: bool = False, stdout: io.StringIO | None = None) -> int:
        """Run `tuneforge ARGS` in-process, showing the command first; returns the exit code.

        With `stdout`, what the command prints on standard output is captured there.
        """
        shown = " ".join(shlex.quote(a) for a in args)
        self.console.print(f"\n[bold cyan]$ tuneforge {shown}[/bold cyan]", highlight=False)
        capture = contextlib.redirect_stdout(stdout) if stdout else contextlib.nullcontext()
        try:
            with capture:
                # Without standalone mode Click returns the exit code of `typer.Exit`.
                returned = app(list(args), standalone_mode=False)
            code = returned if isinstance(returned, int) else 0
        except typer.Exit as e:
            code = e.exit_code
        except SystemExit as e:
            code = int(e.code or 0)
        if code and not expect_fail:
            raise RuntimeError(f"`tuneforge {shown}` failed with exit code {code}")
        return code

    def run_json(self, *args: str) -> Any:
        """Run a command that prints JSON (`--json`) and return what it printed, parsed."""
        out = io.StringIO()
        self.run(*args, stdout=out)
        return json.loads(out.getvalue())

    def path(self, name: str) -> str:
        return str(self.workdir / name)


def write_general_text(path: Path, n: int = 60, seed: int = 99) -> Path:
    """General-domain prose the base model knows (a different seed than its pretraining):
    its perplexity before and after a fine-tune shows what the fine-tune forgot."""
    with atomic_write(path) as f:
        f.write("\n\n".join(paragraphs(n, seed)) + "\n")
    return path


def run_demo(
    workdir: Path,
    console: Console,
    model: str | None = None,
    quick: bool = False,
    example: str = "bank",
) -> dict[str, Any]:
    """Walk the journey for `example` in `workdir`; returns the evaluation's comparison."""
    if example not in EXAMPLES:
        raise ValueError(f"unknown example {example!r}; choose one of {', '.join(EXAMPLES)}")
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    # peft reads a transformers attribute deprecated in v5; the warning is not the user's concern.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    started = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    j = Journey(workdir, console)
    walk = _bank if example == "bank" else _search
    result = walk(j, model, quick)
    console.print(Rule(f"[bold green]demo finished in {time.perf_counter() - started:.0f} s"))
    console.print(f"Everything it wrote is in {workdir}", highlight=False)
    return result


def _base_model(j: Journey, model: str | None) -> str:
    j.say(
        "A pretrained base model",
        "Transfer learning starts from a pretrained GPT. The demo's own is a small Llama that "
        "TuneForge pretrained on general conversations (nothing is downloaded); "
        "--model uses a Hugging Face model instead.",
    )
    base = model or str(demo_base(j.console))
    j.console.print(f"base model: {base}", highlight=False)
    return base


def _bank(j: Journey, model: str | None, quick: bool) -> dict[str, Any]:
    console = j.console
    j.say("A dataset", "Customer-support chats for a bank, dirty as real logs are.")
    raw = write_bank_dataset(j.workdir / "bank.jsonl", n=250 if quick else 400)
    blocklist = write_blocklist(j.workdir / "blocklist.txt")
    general = write_general_text(j.workdir / "general.txt", n=30 if quick else 60)
    console.print(f"wrote {raw}, {blocklist} and {general}", highlight=False)

    j.say("Check it", "Every problem with its line number and a fix; training would fail on it.")
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
    train, valid = j.path("train.jsonl"), j.path("valid.jsonl")
    j.run(
        "data", "split", cleaned, "--valid", "0.1", "--seed", "0",
        "--train-out", train, "--valid-out", valid,
    )  # fmt: skip

    base = _base_model(j, model)

    j.say("Count tokens", "With the model's own tokenizer and chat template.")
    j.run("data", "stats", train, "--model", base)
    j.say("See what is trained", "Highlighted tokens are learned; the rest is context.")
    j.run("data", "inspect", train, "--model", base, "--count", "1")

    out = j.path("runs/bank-lora")
    j.say("Find a learning rate", "An LR range test on a copy of the weights: loss vs LR.")
    sweep = j.run_json(
        "lr-find", "--model", base, "--train", train, "--method", "lora", "--output", out,
        "--steps", "60", "--rule", "steepest", "--batch-size", "4", "--json",
    )  # fmt: skip
    lr = _usable_lr(sweep.get("suggested"))
    console.print(
        f"suggested learning rate {_fmt_lr(sweep.get('suggested'))} (steepest descent of the "
        f"loss); training at {_fmt_lr(lr)}. The curve: {sweep['files'].get('png')}",
        highlight=False,
    )

    j.say("Fine-tune with LoRA", "A low-rank adapter on the frozen base; loss and LR each step.")
    j.run(
        "train", "--model", base, "--train", train, "--valid", valid, "--method", "lora",
        "--lr", _fmt_lr(lr), "--epochs", "3" if quick else "6", "--batch-size", "4",
        "--eval-every", "40", "--set", "lora.r=32", "--set", "lora.alpha=64",
        "--set", "lora.dropout=0", "--output", out, "--seed", "0",
    )  # fmt: skip

    tuned = {"LoRA": out}
    if not quick:
        j.say(
            "Or: gradual unfreezing",
            "The guide's recipe for full fine-tuning: train the head, then unfreeze one block "
            "at a time from the top, lower blocks at a smaller learning rate.",
        )
        tuned["gradual unfreezing"] = j.path("runs/bank-unfreeze")
        j.run(
            "train", "--model", base, "--train", train, "--valid", valid, "--method", "full",
            "--lr", "1e-3", "--epochs", "3", "--set", "unfreeze.every=epoch",
            "--set", "unfreeze.start_blocks=1", "--set", "optim.layer_decay=0.7",
            "--output", tuned["gradual unfreezing"], "--seed", "0",
        )  # fmt: skip

    j.say(
        "Evaluate on the hold-out set",
        "Base vs fine-tuned: loss, replies scored against the references, reply length, "
        "blocklisted phrases, and forgetting on general text.",
    )
    for folder in tuned.values():
        j.run(
            "eval", "--model", folder, "--baseline", base, "--data", valid,
            "--general", str(general), "--blocklist", str(blocklist),
            "--out", f"{folder}/eval",
        )  # fmt: skip

    _side_by_side(j, {"base model": base, **tuned}, BANK_SYSTEM, BANK_QUESTIONS)
    _deploy_hint(j, base, out, BANK_QUESTIONS[0])
    report = Path(out, "eval")
    return json.loads(Path(report, "metrics.json").read_text())


def _search(j: Journey, model: str | None, quick: bool) -> dict[str, Any]:
    j.say(
        "A dataset",
        "Colloquial shopping queries (slang, typos) and the JSON filters the search needs.",
    )
    data = write_search_dataset(j.workdir / "search.jsonl", n=600)
    j.run("data", "check", str(data))
    train, valid = j.path("train.jsonl"), j.path("valid.jsonl")
    j.run(
        "data", "split", str(data), "--valid", "0.1", "--seed", "0",
        "--train-out", train, "--valid-out", valid,
    )  # fmt: skip
    base = _base_model(j, model)
    out = j.path("runs/search-full")
    j.say(
        "Fine-tune all weights",
        "The base model has never seen JSON: a new output format needs more than an adapter "
        "on a model this small, so every weight trains, at a careful learning rate.",
    )
    j.run(
        "train", "--model", base, "--train", train, "--valid", valid, "--method", "full",
        "--lr", "1e-3", "--epochs", "2" if quick else "3", "--eval-every", "40",
        "--output", out, "--seed", "0",
    )  # fmt: skip
    j.say("Evaluate", "JSON validity and per-field accuracy, base vs fine-tuned.")
    report = j.path("runs/search-full/eval")
    j.run("eval", "--model", out, "--baseline", base, "--data", valid, "--out", report)
    _side_by_side(j, {"base model": base, "fine-tuned": out}, SEARCH_SYSTEM, SEARCH_QUESTIONS)
    _deploy_hint(j, base, out, SEARCH_QUESTIONS[0])
    return json.loads(Path(report, "metrics.json").read_text())


def _usable_lr(suggested: float | None) -> float:
    """The sweep's suggestion, kept inside the range where LoRA on the demo model is stable."""
    if suggested is None:
        return 5e-3
    return min(5e-3, max(1e-3, suggested))


def _fmt_lr(lr: float | None) -> str:
    return "none" if lr is None else f"{lr:.1e}"


def _side_by_side(j: Journey, models: dict[str, str], system: str, questions: list[str]) -> None:
    from tuneforge.evaluation import GenerationSettings, generate_replies, load_for_eval
    from tuneforge.evaluation.generate import stop_token_ids
    from tuneforge.tokenize import render_prompt

    j.say("Ask the models", "The same questions to the base model and to the fine-tunes.")
    settings = GenerationSettings(max_new_tokens=64, batch_size=len(questions))
    conversations = [
        [{"role": "system", "content": system}, {"role": "user", "content": q}] for q in questions
    ]
    table = Table(show_lines=True)
    table.add_column("question")
    columns = []
    for name, folder in models.items():
        loaded = load_for_eval(folder)
        prompts = [render_prompt(c, loaded.tokenizer) for c in conversations]
        stops = stop_token_ids(loaded.model, loaded.tokenizer)
        replies = generate_replies(loaded.model, loaded.tokenizer, prompts, settings, stops)
        table.add_column(name)
        columns.append([r.text for r in replies])
    for i, question in enumerate(questions):
        table.add_row(question, *(column[i] for column in columns))
    j.console.print(table)


def _deploy_hint(j: Journey, base: str, tuned: str, question: str) -> None:
    j.say("Deploy it", "Serve base and fine-tune behind OpenAI's API; any OpenAI client works.")
    store = Path(tuned).parent
    j.console.print(
        f"[bold cyan]$ tuneforge serve --model-dir {store} --base-model {base}[/bold cyan]\n",
        highlight=False,
    )
    j.console.print(
        "from openai import OpenAI\n"
        'client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")\n'
        "reply = client.chat.completions.create(\n"
        f'    model="{Path(tuned).name}",\n'
        f'    messages=[{{"role": "user", "content": "{question}"}}],\n'
        ")\n"
        "print(reply.choices[0].message.content)",
        highlight=False,
        markup=False,
    )
