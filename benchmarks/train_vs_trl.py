"""TuneForge vs TRL's SFTTrainer: the same fine-tune, side by side, in one run.

Both train the same ~15M-parameter Llama (random init, 4k-token BPE tokenizer trained
here) on the same generated multi-turn chat data (system prompts, variable lengths), with
the same epochs, batch size, learning rate and linear schedule, the same length-grouped
batching, and loss on assistant tokens only. Each trainer runs in its own subprocess (so peak
RSS is its own); both trained models are scored by the same validation function.

Printed: the dtype each side trained in (`--dtype`: fp32 by default, or bf16 autocast on both
sides; weights and optimizer state stay fp32 on both), trained tokens/s, peak RSS, final
validation loss (both scored in fp32), model FLOPs utilisation against a matmul peak of that
dtype measured in this run, and TuneForge/TRL ratios. TRL runs without gradient checkpointing
(SFTConfig's default turns it on), as TuneForge does. For a real pretrained model at each
side's best dtype, see `benchmarks/train_real.py`.

Needs TRL (benchmark-only extra): `pip install "tuneforge[bench]"` or `pip install trl`.

    python benchmarks/train_vs_trl.py                  # defaults: ~2 x 2 min on 2 CPU cores
    python benchmarks/train_vs_trl.py --examples 800 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

# Same text as TuneForge's default ChatML template (no tools), with TRL's generation markers
# around what TuneForge trains: each assistant message's content and its <|im_end|>.
TRL_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- else %}{{- message['content'] + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "music",
    "paper",
    "light",
    "garden",
    "silver",
    "window",
    "forest",
    "engine",
    "yellow",
    "purple",
    "orange",
    "quiet",
    "happy",
    "rapid",
    "gentle",
    "simple",
    "bright",
    "winter",
    "summer",
    "ocean",
    "mountain",
    "village",
    "market",
    "doctor",
    "teacher",
    "farmer",
    "pilot",
    "rabbit",
    "tiger",
    "eagle",
    "salmon",
]
SYSTEMS = [
    "You are a helpful assistant.",
    "You are a precise assistant. Answer briefly.",
    "You are a friendly tutor who explains each step.",
]


def _turn(rng: random.Random) -> tuple[str, str]:
    """One learnable user/assistant exchange of variable length."""
    kind = rng.randrange(4)
    words = rng.sample(WORDS, rng.randint(2, 12))
    if kind == 0:
        return f"Repeat these words: {' '.join(words)}", " ".join(words)
    if kind == 1:
        return f"Sort these words: {' '.join(words)}", " ".join(sorted(words))
    if kind == 2:
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
    return (
        f"Reverse these words: {' '.join(words)}",
        "Reversed: " + " ".join(reversed(words)),
    )


def make_chats(n: int, seed: int) -> list[dict]:
    """`n` conversations: a system prompt and 1-4 turns each."""
    rng = random.Random(seed)
    chats = []
    for _ in range(n):
        messages = [{"role": "system", "content": rng.choice(SYSTEMS)}]
        for _ in range(rng.randint(1, 4)):
            user, assistant = _turn(rng)
            messages += [
                {"role": "user", "content": user},
                {"role": "assistant", "content": assistant},
            ]
        chats.append({"messages": messages})
    return chats


def prepare(workdir: Path, args: argparse.Namespace) -> None:
    """Tokenizer, base model folder and data files shared by both trainers."""
    from tuneforge.modeling.tiny import build_model, save_model_folder, train_tokenizer
    from tuneforge.tokenize import ensure_chat_template

    train, valid = make_chats(args.examples, 0), make_chats(args.valid_examples, 1)
    corpus = [m["content"] for c in make_chats(2000, 2) for m in c["messages"]]
    tok = train_tokenizer(corpus + WORDS, vocab_size=4096)
    ensure_chat_template(tok)
    model = build_model(
        tok, arch="llama", hidden_size=384, num_layers=8, num_heads=6, intermediate_size=1024
    )
    save_model_folder(model, tok, workdir / "base")
    for name, rows in (("train", train), ("valid", valid)):
        (workdir / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def matmul_peak_flops(dtype: torch.dtype, seconds: float = 2.0, n: int = 1024) -> float:
    """FLOP/s of a large square matmul in `dtype` on this machine and thread count."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start)


def valid_loss(model, workdir: Path) -> float:
    """Mean CE per trained token on valid.jsonl, with TuneForge's tokenization for both."""
    from transformers import AutoTokenizer

    from tuneforge.tokenize import collate_padded, ensure_chat_template
    from tuneforge.training.data import tokenize_file
    from tuneforge.training.loss import causal_lm_loss

    tok = AutoTokenizer.from_pretrained(workdir / "base")
    ensure_chat_template(tok)
    examples = tokenize_file(workdir / "valid.jsonl", tok, "assistant", 512, "drop").examples
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), 8):
            batch = collate_padded(examples[i : i + 8], tok.pad_token_id)
            loss, n, _ = causal_lm_loss(model, **batch)
            total, count = total + loss.item(), count + n.item()
    return total / count


def model_flops_per_token(model, seq_len: float) -> float:
    """Training FLOPs per token: 6 x matmul parameters + attention (PaLM's MFU formula)."""
    cfg = model.config
    matmul_params = sum(
        p.numel() for n, p in model.named_parameters() if p.ndim == 2 and "embed_tokens" not in n
    )
    return 6 * matmul_params + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len


def run_tuneforge(workdir: Path, args: argparse.Namespace) -> dict:
    import io

    from rich.console import Console

    from tuneforge.training.config import load_config
    from tuneforge.training.loop import FinetuneRecipe

    cfg = load_config(
        None,
        {
            "model.name_or_path": str(workdir / "base"),
            "data.train": str(workdir / "train.jsonl"),
            "data.valid": str(workdir / "valid.jsonl"),
            "data.max_length": 512,
            "method": "full",
            "optim.epochs": args.epochs,
            "optim.batch_size": args.batch_size,
            "optim.lr": args.lr,
            "optim.warmup": 0,
            "optim.schedule": "linear",
            "model.dtype": args.dtype,
            "output.dir": str(workdir / "tuneforge-out"),
            "seed": 0,
        },
    )
    recipe = FinetuneRecipe(cfg, Console(file=io.StringIO()))
    recipe.setup()
    start = time.perf_counter()
    recipe.train()  # the loop, final validation and the saved model folder
    seconds = time.perf_counter() - start
    recipe.cleanup()
    ts = recipe.train_set
    return {
        "dtype": "bf16 autocast" if cfg.model.dtype == "bf16" else str(cfg.model.dtype),
        "seconds": seconds,
        "trained_tokens": ts.n_trained_tokens * args.epochs,
        "input_tokens": sum(ts.lengths) * args.epochs,
        "mean_len": sum(ts.lengths) / len(ts.lengths),
        "valid_loss": valid_loss(recipe.model, workdir),
        "flops_per_token": model_flops_per_token(recipe.model, sum(ts.lengths) / len(ts.lengths)),
    }


def run_trl(workdir: Path, args: argparse.Namespace) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(workdir / "base")
    tok.chat_template = TRL_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(workdir / "base")
    rows = [json.loads(line) for line in (workdir / "train.jsonl").read_text().splitlines()]
    config = SFTConfig(
        output_dir=str(workdir / "trl-out"),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=8,
        learning_rate=args.lr,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_length=512,
        assistant_only_loss=True,
        packing=False,
        pad_to_multiple_of=8,
        # SFTConfig turns gradient checkpointing on by default (TuneForge's default is off):
        # recomputing activations would slow TRL down for a memory saving TuneForge does not make.
        gradient_checkpointing=False,
        train_sampling_strategy="group_by_length",
        logging_steps=10,
        save_strategy="epoch",  # TuneForge writes a resumable checkpoint at each epoch end too
        eval_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=args.dtype == "bf16",
        seed=0,
        disable_tqdm=True,
    )
    valid_rows = [json.loads(line) for line in (workdir / "valid.jsonl").read_text().splitlines()]
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(valid_rows),
        processing_class=tok,
    )
    ds = trainer.train_dataset
    lengths = [len(x) for x in ds["input_ids"]]
    trained = sum(sum(label != -100 for label in row) for row in ds["labels"])
    start = time.perf_counter()
    trainer.train()
    trainer.evaluate()  # as TuneForge does at the end
    trainer.save_model(str(workdir / "trl-out"))
    seconds = time.perf_counter() - start
    mixed = str(trainer.accelerator.mixed_precision)
    return {
        "dtype": "bf16 autocast" if mixed == "bf16" else "fp32" if mixed == "no" else mixed,
        "seconds": seconds,
        "trained_tokens": trained * args.epochs,
        "input_tokens": sum(lengths) * args.epochs,
        "mean_len": sum(lengths) / len(lengths),
        "valid_loss": valid_loss(trainer.model, workdir),
        "flops_per_token": model_flops_per_token(trainer.model, sum(lengths) / len(lengths)),
    }


def worker(name: str, workdir: Path, args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    result = (run_tuneforge if name == "tuneforge" else run_trl)(workdir, args)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=400, help="training conversations")
    parser.add_argument("--valid-examples", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--dtype", choices=["fp32", "bf16"], default="fp32", help="both trainers: bf16 autocast"
    )
    parser.add_argument("--worker", choices=["tuneforge", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        worker(args.worker, args.workdir, args)
        return

    with tempfile.TemporaryDirectory(prefix="tf-bench-") as tmp:
        workdir = Path(tmp)
        prepare(workdir, args)
        peak = matmul_peak_flops(torch.bfloat16 if args.dtype == "bf16" else torch.float32)
        print(f"{args.dtype} matmul peak: {peak / 1e9:.1f} GFLOP/s ({args.threads} threads)")
        results = {}
        for name in ("tuneforge", "trl"):
            cmd = [sys.executable, __file__, "--worker", name, "--workdir", str(workdir)]
            cmd += ["--examples", str(args.examples), "--epochs", str(args.epochs)]
            cmd += ["--batch-size", str(args.batch_size), "--lr", str(args.lr)]
            cmd += ["--threads", str(args.threads), "--dtype", args.dtype]
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not lines:
                sys.exit(f"{name} failed:\n{proc.stderr[-4000:]}")
            results[name] = json.loads(lines[-1].removeprefix("RESULT "))
    _report(results, peak, args)


def _report(results: dict, peak: float, args: argparse.Namespace) -> None:
    tf, trl = results["tuneforge"], results["trl"]
    print(
        f"\n{args.examples} conversations x {args.epochs} epochs, batch {args.batch_size}, "
        f"lr {args.lr:g}, {args.dtype}, mean length {tf['mean_len']:.0f} tokens"
    )
    print(f"trained tokens: TuneForge {tf['trained_tokens']:,}  TRL {trl['trained_tokens']:,}")
    header = f"{'':12}{'dtype':>15}{'tokens/s':>12}{'peak RSS MiB':>14}{'valid loss':>12}{'MFU':>8}{'time s':>9}"
    print(header)
    for name, r in (("TuneForge", tf), ("TRL", trl)):
        # Both use TuneForge's trained-token count: the same tokens are learned by both.
        r["tps"] = tf["trained_tokens"] / r["seconds"]
        r["mfu"] = r["flops_per_token"] * r["input_tokens"] / r["seconds"] / peak
        print(
            f"{name:12}{r['dtype']:>15}{r['tps']:>12,.0f}{r['peak_rss_mib']:>14,.0f}{r['valid_loss']:>12.4f}"
            f"{100 * r['mfu']:>7.1f}%{r['seconds']:>9.1f}"
        )
    print(
        f"ratios TuneForge/TRL: trained tokens/s x{tf['tps'] / trl['tps']:.2f}, "
        f"peak RSS x{tf['peak_rss_mib'] / trl['peak_rss_mib']:.2f}, "
        f"valid loss x{tf['valid_loss'] / trl['valid_loss']:.3f}"
    )


if __name__ == "__main__":
    main()
