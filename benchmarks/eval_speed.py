"""Evaluation speed: `tuneforge eval` on 500 hold-out examples of the demo-sized model.

Uses the demo's base model (`tuneforge.demo.base`: a 4-layer, 192-wide Llama with a 2k BPE
tokenizer) when it is bundled; otherwise a randomly initialised model of the same shape, whose
replies never reach end-of-turn and so all run to `max_new_tokens` (the worst case). Writes 500
hold-out chats from the demo's bank dataset and times one `evaluate_model` run: likelihood
metrics, batched generation of every reply, and scoring. Pass --model to time another model.

The peer is the same generation done one prompt at a time (batch size 1, same KV-cached HF
`generate`), on a subset of the prompts; the ratio is per-reply time, one-at-a-time / batched.

Usage:
    python benchmarks/eval_speed.py [--examples 500] [--single 64] [--threads 2] [--model DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console


def demo_sized_model(folder: Path) -> str:
    """The bundled demo base, or a random model of its shape (nothing is downloaded)."""
    from tuneforge.demo.base import BUNDLED, BaseRecipe
    from tuneforge.demo.corpus import pretraining_corpus
    from tuneforge.modeling.tiny import build_model, save_model_folder, train_tokenizer

    if (BUNDLED / "model.safetensors").is_file():
        return str(BUNDLED)
    recipe = BaseRecipe()
    texts = []
    for example in pretraining_corpus(1000, recipe.seed):
        texts += [m["content"] for m in example.get("messages", [])] or [example["text"]]
    tokenizer = train_tokenizer(texts, vocab_size=recipe.vocab_size)
    model = build_model(
        tokenizer,
        arch="llama",
        hidden_size=recipe.hidden_size,
        num_layers=recipe.num_layers,
        num_heads=recipe.num_heads,
        max_positions=1024,
    )
    print(f"(no bundled demo base: timing a random model of its shape, {folder})")
    return str(save_model_folder(model, tokenizer, folder))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=500, help="Hold-out examples.")
    parser.add_argument("--single", type=int, default=32, help="Prompts for the one-at-a-time run.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all).")
    parser.add_argument("--batch-size", type=int, default=32, help="Prompts generated together.")
    parser.add_argument("--model", type=str, default=None, help="Model folder to time instead.")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers.utils import logging as hf_logging

    from tuneforge.demo.bank import clean_examples
    from tuneforge.evaluation import EvalSettings, GenerationSettings, evaluate_model
    from tuneforge.evaluation.data import read_holdout
    from tuneforge.evaluation.generate import generate_replies
    from tuneforge.evaluation.loading import load_for_eval

    hf_logging.disable_progress_bar()
    quiet = Console(file=io.StringIO())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = args.model or demo_sized_model(root / "base")
        holdout = root / "holdout.jsonl"
        rows = clean_examples(args.examples, seed=7)
        holdout.write_text("".join(json.dumps(r) + "\n" for r in rows))

        loaded = load_for_eval(model_dir)
        n_params = sum(p.numel() for p in loaded.model.parameters())
        settings = EvalSettings(generation=GenerationSettings(batch_size=args.batch_size))
        start = time.perf_counter()
        run = evaluate_model(loaded, holdout, settings=settings, console=quiet)
        total = time.perf_counter() - start
        gen = run["generation"]
        replies = [e for e in run["examples"] if e.get("reply") is not None]
        new_tokens = sum(e["reply_tokens"] for e in replies)

        print(
            f"eval of {len(run['examples'])} hold-out examples: {total:.1f} s "
            f"(likelihood {run['timing']['likelihood_s']:.1f} s, "
            f"generation {run['timing']['generation_s']:.1f} s)",
            flush=True,
        )

        # The peer: one prompt at a time, same settings, on the first `single` prompts.
        examples = read_holdout(holdout, loaded.tokenizer)[: args.single]
        prompts = [e.prompt_ids for e in examples]
        single = GenerationSettings(max_new_tokens=gen["max_new_tokens"], batch_size=1)
        batched = GenerationSettings(
            max_new_tokens=gen["max_new_tokens"], batch_size=args.batch_size
        )
        start = time.perf_counter()
        generate_replies(loaded.model, loaded.tokenizer, prompts, single)
        t_single = time.perf_counter() - start
        start = time.perf_counter()
        generate_replies(loaded.model, loaded.tokenizer, prompts, batched)
        t_batched_subset = time.perf_counter() - start

    per_single = t_single / len(prompts)
    per_batched = run["timing"]["generation_s"] / len(replies)
    print(f"model: {n_params / 1e6:.2f}M parameters, torch threads: {torch.get_num_threads()}")
    print(
        f"eval of {len(run['examples'])} hold-out examples: {total:.1f} s "
        f"(likelihood {run['timing']['likelihood_s']:.1f} s, "
        f"generation {run['timing']['generation_s']:.1f} s; "
        f"{len(replies)} replies, {new_tokens} new tokens, max_new_tokens "
        f"{gen['max_new_tokens']}, batch {args.batch_size}, greedy)"
    )
    print(
        f"generation per reply: batched {1000 * per_batched:.1f} ms, one at a time "
        f"{1000 * per_single:.1f} ms (on {len(prompts)} prompts) -> batched is "
        f"{per_single / per_batched:.1f}x faster "
        f"(same {len(prompts)} prompts batched: {t_single / t_batched_subset:.1f}x)"
    )
    print(
        json.dumps(
            {
                "examples": len(run["examples"]),
                "eval_seconds": round(total, 2),
                "generation_seconds": round(run["timing"]["generation_s"], 2),
                "likelihood_seconds": round(run["timing"]["likelihood_s"], 2),
                "batched_vs_single_ratio": round(per_single / per_batched, 2),
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
