"""Catastrophic forgetting: how much general ability three fine-tuning recipes cost.

A small Llama base is pretrained by the project itself on a broad generated corpus
(`tuneforge.demo.base`: capitals, cooking, animals, arithmetic, weather, devices, travel,
small talk, ... as chat and prose). It is then fine-tuned on one narrow domain (Northwind
Bank's support conversations, `tuneforge.demo.bank`) three ways:

  (a) full fine-tuning at a high learning rate;
  (b) gradual unfreezing (head first, one more block per epoch, top down) with layer-wise
      LR decay, same peak LR;
  (c) LoRA (r=8 on every projection).

For each we report the domain validation loss (did it learn the domain?) and the loss on
held-out general conversations before and after (did it forget?). Forgetting is the increase
of the general loss; the ratio column compares it with (a), measured in the same run.

    python benchmarks/forgetting.py            # CPU; the base is pretrained once, then cached
    python benchmarks/forgetting.py --demo-base  # use the demo's full-size base model

Prints a Markdown table (the one in docs/forgetting.md) and writes it with the per-run
results as JSON into --workdir.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

from tuneforge.demo.bank import clean_examples
from tuneforge.demo.base import BaseRecipe, cache_root, demo_base
from tuneforge.demo.corpus import conversations
from tuneforge.fsutil import write_jsonl
from tuneforge.modeling.load import load_model_and_tokenizer
from tuneforge.tokenize import collate_padded
from tuneforge.training.config import load_config
from tuneforge.training.data import tokenize_file
from tuneforge.training.loop import run_training
from tuneforge.training.loss import causal_lm_loss

# A base small enough to pretrain in a couple of minutes on CPU (cached after the first run).
SMALL_BASE = BaseRecipe(
    corpus_size=1600, vocab_size=1024, hidden_size=64, num_layers=4, max_length=128, epochs=2,
    lr=3e-3,
)  # fmt: skip

RECIPES = {
    "(a) full, high LR": {"method": "full"},
    "(b) gradual unfreezing + layer decay": {
        "method": "full",
        "unfreeze.every": "epoch",
        "unfreeze.start_blocks": 1,
        "optim.layer_decay": 0.5,
    },
    "(c) LoRA r=8": {"method": "lora", "lora.r": 8, "lora.alpha": 16, "lora.dropout": 0.0},
}


@torch.no_grad()
def mean_loss(model_dir: Path, data: Path, batch_size: int = 16) -> float:
    """Mean next-token loss on the trained tokens (assistant turns) of `data`."""
    adapter = (model_dir / "adapter_config.json").is_file()
    base = json.loads((model_dir / "tuneforge.json").read_text())["base_model"] if adapter else None
    model, tok = load_model_and_tokenizer(str(base or model_dir))
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(model_dir))
    model.eval()
    examples = tokenize_file(data, tok, "assistant", 512, "truncate").examples
    total = n = 0.0
    for i in range(0, len(examples), batch_size):
        batch = collate_padded(examples[i : i + batch_size], tok.pad_token_id)
        loss, k, _ = causal_lm_loss(
            model, batch["input_ids"], batch["labels"], batch["attention_mask"]
        )
        total, n = total + loss.item(), n + k.item()
    return total / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--demo-base", action="store_true", help="Use the demo's base model.")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=3e-3, help="Peak LR of (a) and (b).")
    parser.add_argument("--lora-lr", type=float, default=3e-3)
    parser.add_argument("--train-examples", type=int, default=240)
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    console = Console(stderr=True)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="tuneforge-forgetting-"))
    work.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    if args.demo_base:
        base = demo_base(console)
    else:
        base = demo_base(console, SMALL_BASE, cache=cache_root())
    pretrain_s = time.perf_counter() - t0
    console.print(f"base model: {base} ({pretrain_s:.0f} s to build or load)")

    # Narrow domain: a bank's support chats. General: held-out conversations from the broad
    # corpus the base was pretrained on (a seed the pretraining never used).
    train, valid = work / "domain_train.jsonl", work / "domain_valid.jsonl"
    general = work / "general_heldout.jsonl"
    write_jsonl(train, clean_examples(args.train_examples, seed=11))
    write_jsonl(valid, clean_examples(80, seed=12))
    write_jsonl(general, conversations(200, seed=9999))

    base_general = mean_loss(Path(base), general)
    base_domain = mean_loss(Path(base), valid)
    rows = [
        {
            "recipe": "base model (no fine-tune)",
            "domain_valid_loss": base_domain,
            "general_loss": base_general,
            "forgetting": 0.0,
            "seconds": 0.0,
        }
    ]
    for name, overrides in RECIPES.items():
        out = work / name.split(")")[0].strip("(")
        values = {
            "model.name_or_path": str(base),
            "data.train": str(train),
            "data.valid": str(valid),
            "output.dir": str(out),
            "output.overwrite": True,
            "optim.epochs": args.epochs,
            "optim.batch_size": 16,
            "optim.lr": args.lora_lr if overrides["method"] == "lora" else args.lr,
            "optim.warmup": 0.05,
            "optim.schedule": "cosine",
            "checkpoint.keep_last": 1,
            "seed": 0,
            **overrides,
        }
        t = time.perf_counter()
        result = run_training(load_config(None, values), Console(file=io.StringIO()))
        seconds = time.perf_counter() - t
        general_loss = mean_loss(out, general)
        rows.append(
            {
                "recipe": name,
                "domain_valid_loss": result.metrics["full_valid_loss"],
                "general_loss": general_loss,
                "forgetting": general_loss - base_general,
                "seconds": seconds,
            }
        )
        console.print(f"{name}: {rows[-1]}")

    ref = rows[1]["forgetting"]
    lines = [
        "| recipe | domain valid loss | general loss | forgetting (Δ general loss) | vs (a) | time |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = r["forgetting"] / ref if ref and r is not rows[0] else math.nan
        lines.append(
            f"| {r['recipe']} | {r['domain_valid_loss']:.3f} | {r['general_loss']:.3f} | "
            f"{r['forgetting']:+.3f} | {'' if math.isnan(ratio) else f'{ratio:.2f}x'} | "
            f"{r['seconds']:.0f} s |"
        )
    table = "\n".join(lines)
    print(table)
    (work / "forgetting.md").write_text(table + "\n")
    (work / "forgetting.json").write_text(
        json.dumps({"base": str(base), "args": vars(args), "rows": rows}, indent=2, default=str)
    )
    console.print(f"results in {work}")


if __name__ == "__main__":
    main()
