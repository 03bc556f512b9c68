"""Preference tuning (DPO): TuneForge vs TRL's DPOTrainer on the real SmolLM2-135M-Instruct.

Both sides train the same generated preference set for the guide's two behaviour goals (the
bank's concise, polite answer preferred to a rambling one with a blocklisted phrase, as in
`benchmarks/dpo_evidence.py`; the hold-out pairs ask with phrasings training never saw), with the same
LoRA (r 16, alpha 32, attention and MLP projections), beta, learning rate, constant schedule,
batch size, number of steps and fp32. Each side runs in its own subprocess (so peak RSS is its
own). Both trained adapters are scored by the same function on a hold-out set: reward
accuracy and margin against the base (the reference), and the greedy replies' mean length and
blocklisted-phrase rate, against the base's, with 95% bootstrap intervals.

Reference log-probabilities: TuneForge computes them once, before training (one forward pass
over the data), TRL by default in every step (a second forward, adapters disabled). With
`--full`, both sides fine-tune every weight instead: TRL then holds a second copy of the model
as its reference, TuneForge its cached numbers; the peak RSS shows what that costs.

Needs TRL (benchmark-only extra): `pip install "tuneforge[bench]"` or `pip install trl`.

    python benchmarks/dpo_vs_trl.py                 # ~2 x 3 min on 2 CPU cores
    python benchmarks/dpo_vs_trl.py --full --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The preference set of benchmarks/dpo_evidence.py: the bank's concise answer preferred to a
# rambling reply with a blocklisted phrase; the hold-out pairs ask with unseen phrasings.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from dpo_evidence import preference_pairs

from tuneforge.demo.bank import BLOCKLISTED as BLOCKLIST


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def run_tuneforge(args: dict) -> dict:
    import io

    from rich.console import Console

    from tuneforge.training.config import load_config
    from tuneforge.training.loop import run_training
    from tuneforge.training.metrics import read_metrics

    overrides = {
        "model.name_or_path": args["model"],
        "model.dtype": "fp32",
        "task": "dpo",
        "method": "full" if args["full"] else "lora",
        "lora.r": 16,
        "lora.alpha": 32,
        "lora.target_modules": LORA_TARGETS,
        "dpo.beta": args["beta"],
        "data.train": args["train"],
        "data.max_length": 256,
        "optim.batch_size": args["batch_size"],
        "optim.max_steps": args["steps"],
        "optim.epochs": 100,
        "optim.lr": args["lr"],
        "optim.schedule": "constant",
        "optim.warmup": 0,
        "output.dir": args["out"],
        "checkpoint.keep_last": 1,
    }
    start = time.perf_counter()
    run_training(load_config(None, overrides), Console(file=io.StringIO()))
    total = time.perf_counter() - start
    records = read_metrics(Path(args["out"]))
    # Time per step: the loop's own clock from the first step's end to the last's (the
    # one-off reference pass and setup are reported apart).
    per_step = (records[-1]["elapsed"] - records[0]["elapsed"]) / max(1, len(records) - 1)
    return {"per_step_s": per_step, "total_s": total, "final_loss": records[-1]["train_loss"]}


def run_trl(args: dict) -> dict:
    import datasets
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(args["model"])
    model = AutoModelForCausalLM.from_pretrained(args["model"], dtype="float32")
    rows = [json.loads(x) for x in Path(args["train"]).read_text().splitlines()]
    data = datasets.Dataset.from_list(
        [
            {
                "prompt": r["input"]["messages"],
                "chosen": r["preferred_output"],
                "rejected": r["non_preferred_output"],
            }
            for r in rows
        ]
    )
    config = DPOConfig(
        output_dir=args["out"],
        beta=args["beta"],
        learning_rate=args["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        per_device_train_batch_size=args["batch_size"],
        max_steps=args["steps"],
        max_length=256,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        seed=0,
        dataloader_num_workers=0,
    )
    peft_config = None
    ref_model = None
    if args["full"]:
        ref_model = AutoModelForCausalLM.from_pretrained(args["model"], dtype="float32")
    else:
        peft_config = LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            target_modules=LORA_TARGETS,
            task_type="CAUSAL_LM",
        )
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=config,
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    times: list[float] = []

    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            times.append(time.perf_counter())

    trainer.add_callback(Clock())
    start = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - start
    trainer.save_model(args["out"])
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    per_step = (times[-1] - times[0]) / max(1, len(times) - 1)
    return {"per_step_s": per_step, "total_s": total, "final_loss": losses[-1] if losses else None}


def child(side: str, args: dict) -> None:
    import torch

    torch.manual_seed(0)
    result = run_tuneforge(args) if side == "tuneforge" else run_trl(args)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


def score(model_path: str, folder: Path | None, holdout: list[dict], beta: float) -> dict:
    """Per pair: the model's log-probs of both replies (None folder: the base), and its
    greedy reply to the prompt."""
    import torch

    from tuneforge.evaluation.generate import GenerationSettings, generate_replies, stop_token_ids
    from tuneforge.modeling.load import load_model_and_tokenizer
    from tuneforge.tokenize import encode_preference, render_prompt
    from tuneforge.training.dpo import PreferencePair, collate_pairs, sequence_logps

    model, tokenizer = load_model_and_tokenizer(model_path, "fp32")
    if folder is not None:
        if (folder / "adapter_config.json").is_file():
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(folder))
        else:
            model, tokenizer = load_model_and_tokenizer(str(folder), "fp32")
    model.eval()
    pairs = [PreferencePair(*encode_preference(r, tokenizer)) for r in holdout]
    with torch.no_grad():
        logps = []
        for i in range(0, len(pairs), 8):
            chunk = pairs[i : i + 8]
            out = sequence_logps(model, collate_pairs(chunk, tokenizer.pad_token_id)).tolist()
            logps += list(zip(out[: len(chunk)], out[len(chunk) :], strict=True))
    prompts = [render_prompt(r["input"]["messages"], tokenizer) for r in holdout]
    settings = GenerationSettings(max_new_tokens=48, batch_size=16)
    replies = generate_replies(
        model, tokenizer, prompts, settings, stop_token_ids(model, tokenizer)
    )
    texts = [r.text for r in replies]
    return {
        "logps": logps,
        "reply_words": [len(t.split()) for t in texts],
        "blocklisted": [float(any(b in t.lower() for b in BLOCKLIST)) for t in texts],
    }


def bootstrap(values: list[float], n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    import numpy as np

    v = np.asarray(values, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(v), size=(n, len(v)))
    means = v[idx].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(v.mean()), float(low), float(high)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        spec = json.loads(sys.argv[2])
        child(spec.pop("side"), spec)
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=None, help="default: TuneForge's auto LR")
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--train-pairs", type=int, default=64)
    ap.add_argument("--holdout-pairs", type=int, default=24)
    ap.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    ap.add_argument("--model", default=None, help="model folder (default: the registry's)")
    cli = ap.parse_args()
    if cli.model is None:
        from tuneforge.modeling.registry_model import smollm2_folder

        cli.model = str(smollm2_folder())
    if cli.lr is None:  # what TuneForge's "auto" gives DPO on this model, for both sides
        from tuneforge.auto import auto_lr
        from tuneforge.modeling.folder import read_folder

        cli.lr = auto_lr("full" if cli.full else "lora", read_folder(cli.model).width, "dpo")
    root = Path(tempfile.mkdtemp(prefix="dpo-vs-trl-"))
    train = write_jsonl(root / "train.jsonl", preference_pairs(cli.train_pairs, 1, holdout=False))
    holdout = preference_pairs(cli.holdout_pairs, 2, holdout=True)
    results, outs = {}, {}
    for side in ("tuneforge", "trl"):
        out = root / side
        spec = {
            "side": side,
            "model": cli.model,
            "train": str(train),
            "out": str(out),
            "steps": cli.steps,
            "batch_size": cli.batch_size,
            "lr": cli.lr,
            "beta": cli.beta,
            "full": cli.full,
        }
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        proc = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(spec)],
            capture_output=True,
            text=True,
            env=env,
        )
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{side} failed:\n{proc.stderr[-3000:]}")
        results[side], outs[side] = json.loads(line.removeprefix("RESULT ")), out
        print(f"{side}: {results[side]}", flush=True)

    base = score(cli.model, None, holdout, cli.beta)
    rows = []
    for side in ("tuneforge", "trl"):
        tuned = score(cli.model, outs[side], holdout, cli.beta)
        margins = [
            cli.beta * ((c - bc) - (r - br))
            for (c, r), (bc, br) in zip(tuned["logps"], base["logps"], strict=True)
        ]
        acc = bootstrap([float(m > 0) for m in margins])
        words = bootstrap(tuned["reply_words"])
        blocked = bootstrap(tuned["blocklisted"])
        rows.append((side, results[side], acc, bootstrap(margins), words, blocked))
    base_words, base_blocked = bootstrap(base["reply_words"]), bootstrap(base["blocklisted"])

    def ci(t: tuple[float, float, float], fmt: str = ".2f") -> str:
        return f"{t[0]:{fmt}} [{t[1]:{fmt}}, {t[2]:{fmt}}]"

    kind = "full fine-tuning" if cli.full else "LoRA r16"
    print(
        f"\nDPO on SmolLM2-135M-Instruct, {kind}, fp32, {cli.steps} steps x {cli.batch_size} "
        f"pairs, beta {cli.beta}, lr {cli.lr:g}; hold-out {cli.holdout_pairs} pairs\n"
    )
    print(
        "| | s/step | peak RSS MB | reward acc. [95% CI] | reward margin | reply words | blocklisted |"
    )
    print("|---|---|---|---|---|---|---|")
    print(f"| base (reference) | | | 0 | 0 | {ci(base_words, '.1f')} | {ci(base_blocked)} |")
    for side, res, acc, margin, words, blocked in rows:
        print(
            f"| {side} | {res['per_step_s']:.2f} | {res['peak_rss_mb']:.0f} | {ci(acc)} | "
            f"{ci(margin)} | {ci(words, '.1f')} | {ci(blocked)} |"
        )
    tf, trl = results["tuneforge"], results["trl"]
    print(
        f"\nTuneForge / TRL: time per step {tf['per_step_s'] / trl['per_step_s']:.2f}x, "
        f"peak RSS {tf['peak_rss_mb'] / trl['peak_rss_mb']:.2f}x"
    )


if __name__ == "__main__":
    main()
