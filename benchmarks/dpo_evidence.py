"""Preference tuning on a real model: does DPO after SFT make replies shorter and polite?

The guide's two behaviour goals, concise replies and no biased phrasing, told as a team
migrating from uncleaned support logs would live them, every step through the `tuneforge`
command a user runs, on the real SmolLM2-135M-Instruct:

1. Legacy logs: the bank demo's questions and answers, but in a share of the chats the agent
   rambles and uses a blocklisted phrase (`BAD_SHARE`).
2. SFT: a LoRA fine-tune on those logs with TuneForge's defaults. It learns the bank's facts,
   and the legacy agents' habits with them.
3. Preference pairs on the same prompts: the bank's concise answer preferred to the legacy
   agent's reply. The hold-out pairs ask with phrasings no training chat or pair uses.
4. DPO from the SFT model (`--task dpo --from`), TuneForge's defaults (beta, LR, epochs auto).
5. `tuneforge eval` of the DPO model against its SFT start on the hold-out pairs: reward
   accuracy and margin (DPO's implicit rewards against the SFT model), preference accuracy,
   and the sampled replies' length and blocklisted-phrase rate, with paired 95% bootstrap
   intervals.

    python benchmarks/dpo_evidence.py              # ~10 min on 2 CPU cores
    python benchmarks/dpo_evidence.py --keep DIR   # keep the runs and reports in DIR

The side-by-side comparison with TRL's DPOTrainer (time per step, memory, reward accuracy)
is `benchmarks/dpo_vs_trl.py`.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tuneforge.demo.bank import BLOCKLISTED, CLOSERS, INTENTS, OPENERS, SYSTEM, write_blocklist

BAD_SHARE = 0.5  # of the legacy chats
# The legacy agents' replies: the bank's answer, buried in rambling with a blocklisted phrase.
BAD = [
    "Well, {phrase}, but fine, I will explain it once more, slowly. {answer} As I already said "
    "to the last customer and the one before, it is all written on our website, and I really "
    "should not have to repeat it again and again for everyone who asks.",
    "Honestly, this is {phrase}. Anyway. {answer} If that is not clear, read the terms and "
    "conditions, all of them, from the first page to the last, and then read them again, "
    "because I will not explain it a second time today.",
    "Let me stop you there: {phrase}, and I have heard this question a hundred times this "
    "week. {answer} That is the whole story, there is nothing more to say about it, and "
    "please do not call again about the same thing.",
]
HOLDOUT_PHRASINGS = 1  # per intent, never asked in training


def _ask(rng: random.Random, phrasing: str) -> str:
    ask = rng.choice(OPENERS) + phrasing + rng.choice(CLOSERS)
    return ask[0].upper() + ask[1:]


def _bad(rng: random.Random, answer: str) -> str:
    return rng.choice(BAD).format(phrase=rng.choice(BLOCKLISTED), answer=answer)


def _prompts(rng: random.Random, n: int, holdout: bool) -> list[tuple[str, str]]:
    """(question, the bank's answer) pairs from training or held-out phrasings."""
    out = []
    for _ in range(n):
        asks, answers = INTENTS[rng.choice(list(INTENTS))]
        pool = asks[-HOLDOUT_PHRASINGS:] if holdout else asks[:-HOLDOUT_PHRASINGS]
        out.append((_ask(rng, rng.choice(pool)), rng.choice(answers)))
    return out


def _conversation(question: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def legacy_chats(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for question, answer in _prompts(rng, n, holdout=False):
        reply = _bad(rng, answer) if rng.random() < BAD_SHARE else answer
        rows.append({"messages": [*_conversation(question), _assistant(reply)]})
    return rows


def preference_pairs(n: int, seed: int, holdout: bool) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "input": {"messages": _conversation(question)},
            "preferred_output": [_assistant(answer)],
            "non_preferred_output": [_assistant(_bad(rng, answer))],
        }
        for question, answer in _prompts(rng, n, holdout)
    ]


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def tuneforge(*args: str) -> float:
    """Run one `tuneforge` command (its output shown), return its seconds."""
    print("$ tuneforge " + " ".join(args), flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tuneforge", *args], check=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chats", type=int, default=160, help="legacy chats for SFT")
    ap.add_argument("--pairs", type=int, default=160, help="training preference pairs")
    ap.add_argument("--holdout", type=int, default=64, help="hold-out preference pairs")
    ap.add_argument("--model", default=None, help="model folder (default: the registry's)")
    ap.add_argument("--keep", type=Path, default=None, help="folder to keep everything in")
    ap.add_argument(
        "--sft-weight", type=float, default=0.0, help="dpo.sft_weight (SFT-regularised DPO)"
    )
    cli = ap.parse_args()
    if cli.model is None:
        from tuneforge.modeling.registry_model import smollm2_folder

        cli.model = str(smollm2_folder())
    root = cli.keep or Path(tempfile.mkdtemp(prefix="dpo-evidence-"))
    root.mkdir(parents=True, exist_ok=True)
    chats = _write(root / "legacy.jsonl", legacy_chats(cli.chats, seed=0))
    pairs = _write(root / "prefs.jsonl", preference_pairs(cli.pairs, seed=1, holdout=False))
    holdout = _write(root / "prefs-holdout.jsonl", preference_pairs(cli.holdout, 2, True))
    blocklist = str(write_blocklist(root / "blocklist.txt"))
    sft = str(root / "runs" / "sft")
    dpo = str(root / "runs" / f"dpo-sft{cli.sft_weight:g}")

    seconds = {}
    if not Path(sft, "tuneforge.json").is_file():  # a kept folder's SFT run is reused
        seconds["SFT"] = tuneforge(
            "train", "--model", cli.model, "--train", chats, "--method", "lora",
            "--output", sft, "--seed", "0",
        )  # fmt: skip
    seconds["DPO"] = tuneforge(
        "train", "--task", "dpo", "--from", sft, "--train", pairs, "--valid", holdout,
        "--set", f"dpo.sft_weight={cli.sft_weight}",
        "--eval-every", "10", "--output", dpo, "--seed", "0",
    )  # fmt: skip
    # Sampled as users meet the model (greedy decoding hides a minority habit).
    sampling = ("--sample", "--temperature", "0.7", "--seed", "0", "--max-new-tokens", "96")
    seconds["eval"] = tuneforge(
        "eval", "--model", dpo, "--baseline", sft, "--data", holdout,
        "--blocklist", blocklist, *sampling, "--out", f"{dpo}/eval",
    )  # fmt: skip
    report = json.loads(Path(dpo, "eval", "metrics.json").read_text())
    print_table(report, cli, seconds)


def print_table(report: dict, cli: argparse.Namespace, seconds: dict[str, float]) -> None:
    names = [
        "reward_accuracy",
        "reward_margin",
        "preference_accuracy",
        "chrf",
        "rouge_l",
        "reply_words_mean",
        "blocklist_rate",
        "never_ending_rate",
        "loss",
    ]
    print(
        f"\nDPO after SFT on SmolLM2-135M-Instruct: {cli.chats} legacy chats "
        f"({BAD_SHARE:.0%} rambling and blocklisted), {cli.pairs} training pairs, "
        f"{cli.holdout} hold-out pairs asked with unseen phrasings; DPO with SFT weight "
        f"{cli.sft_weight:g}; replies sampled at T 0.7\n"
    )
    print("| metric | SFT start | after DPO | difference [95% CI] |")
    print("|---|---|---|---|")
    metrics = {m["name"]: m for m in report["metrics"]}
    for name in names:
        m = metrics.get(name)
        if m is None:
            continue
        low, high = m["ci"]
        print(
            f"| {name} | {m['baseline']:.3g} | {m['model']:.3g} | "
            f"{m['delta']:+.3g} [{low:+.3g}, {high:+.3g}] |"
        )
    print("\n" + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))


if __name__ == "__main__":
    main()
