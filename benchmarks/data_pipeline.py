"""Data pipeline throughput: `data check` and `data clean` (with near-dedupe) on a large chat file.

Generates a varied chat dataset (system prompts of several lengths, one to four turns, tool-free
support and coding conversations, exact and near duplicates, broken lines), then times:

- check: `check_file` (`read_dataset` + `validate`, what `tuneforge data check` does, on every
  core for a large JSON Lines file);
- clean: `clean()` with exact and near-duplicate removal (what `tuneforge data clean` does, on
  every core for a large JSON Lines file);
- the peer: near-duplicate detection written the way datasketch's documentation shows it
  (`MinHash` updated with UTF-8 word-pair shingles, `MinHashLSH` query then insert), on a
  subset, against TuneForge's near-duplicate index on the same subset, at equal settings: the
  same `num_perm` and the same LSH bands and rows (`lsh_params`: recall 0.98 at the threshold),
  so both find a pair with the same probability. datasketch reports every LSH candidate;
  TuneForge confirms each by exact Jaccard similarity, so its count is of true near duplicates.

Throughput is printed per wall-clock second and per CPU second (of the process and its worker
processes together): on a shared machine the second is what the code costs. `--workers 1` runs
both in-process, as before; the default uses one worker process per CPU.

Usage:
    python benchmarks/data_pipeline.py [--examples 200000] [--peer-examples 20000] [--num-perm 64]
        [--workers N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import re
import resource
import shutil
import tempfile
import time
from pathlib import Path

SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are Ava, the support assistant of Northwind Bank. Answer briefly and politely.",
    "You are a senior Python developer. Answer with short, correct code and explain it in one "
    "or two sentences. Prefer the standard library; never invent APIs.",
    "You are a customer-service agent for an online shoe shop. Be friendly, never promise "
    "refunds that policy does not allow, and escalate to a human when the customer is angry. "
    "Refunds are possible within 30 days with a receipt; exchanges within 60 days.",
    "Tu es un assistant qui répond en français, de façon concise et précise.",
]
SYLLABLES = "ka lo mi ne su ta re po chi an el is or un et ba de fi go hu"
COMMON = (
    "the a to of and in is you for it on with that this be can your are I my we have not "
    "please order account card help thanks need how what when where why do does will would "
    "could should return refund payment delivery code function error python list string file "
    "number time day week problem issue question answer update change check send open close"
)


def _vocabulary(rng: random.Random, size: int = 20_000) -> list[str]:
    words = set(COMMON.split(" "))
    syllables = SYLLABLES.split(" ")
    while len(words) < size:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))))
    return sorted(words)


class TextMaker:
    """Sentences with a Zipf-like word distribution: common words common, the tail long."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        vocab = _vocabulary(rng)
        rng.shuffle(vocab)
        self.vocab = vocab
        self.cum_weights = list(
            itertools.accumulate(1.0 / (rank + 1) for rank in range(len(vocab)))
        )

    def sentence(self, lo: int = 6, hi: int = 18) -> str:
        words = self.rng.choices(
            self.vocab, cum_weights=self.cum_weights, k=self.rng.randint(lo, hi)
        )
        return " ".join(words).capitalize() + self.rng.choice([".", ".", ".", "?", "!"])

    def paragraph(self, lo: int = 1, hi: int = 4) -> str:
        return " ".join(self.sentence() for _ in range(self.rng.randint(lo, hi)))

    def reply(self) -> str:
        if self.rng.random() < 0.15:  # a code answer
            body = "\n".join(
                f"    {self.rng.choice(self.vocab)} = {self.rng.randint(0, 99)}"
                for _ in range(self.rng.randint(2, 6))
            )
            return f"{self.paragraph(1, 2)}\n\n```python\ndef f():\n{body}\n```"
        return self.paragraph(1, 5)


def make_example(rng: random.Random, text: TextMaker) -> dict:
    messages = []
    if rng.random() < 0.8:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3, 4])):
        messages.append({"role": "user", "content": text.paragraph(1, 3)})
        messages.append({"role": "assistant", "content": text.reply()})
    return {"messages": messages}


def near_copy(rng: random.Random, example: dict) -> dict:
    """The same conversation with one word changed or added in one message."""
    copy = json.loads(json.dumps(example))
    message = rng.choice([m for m in copy["messages"] if m["role"] != "system"])
    words = message["content"].split(" ")
    i = rng.randrange(len(words))
    if rng.random() < 0.5:
        words[i] = words[i] + ","
    else:
        words.insert(i, "really")
    message["content"] = " ".join(words)
    return copy


def broken_line(rng: random.Random, example: dict) -> str:
    kind = rng.randrange(4)
    if kind == 0:  # cut off mid-way
        line = json.dumps(example, ensure_ascii=False)
        return line[: len(line) // 2]
    bad = json.loads(json.dumps(example))
    if kind == 1:  # empty reply
        bad["messages"][-1]["content"] = ""
    elif kind == 2:  # no assistant at all
        bad["messages"] = [m for m in bad["messages"] if m["role"] != "assistant"]
    else:  # a role typo that cannot be fixed safely
        bad["messages"][-1]["role"] = "bot"
    return json.dumps(bad, ensure_ascii=False)


def write_dataset(path: Path, n: int, seed: int = 0) -> dict[str, int]:
    """Write `n` lines: ~90% unique examples, 4% exact and 4% near duplicates, 2% broken."""
    rng = random.Random(seed)
    text = TextMaker(rng)
    made: list[dict] = []
    counts = {"unique": 0, "exact_duplicates": 0, "near_duplicates": 0, "broken": 0}
    with path.open("w", encoding="utf-8") as f:
        for _ in range(n):
            roll = rng.random()
            if made and roll < 0.04:
                line, kind = json.dumps(rng.choice(made), ensure_ascii=False), "exact_duplicates"
            elif made and roll < 0.08:
                line = json.dumps(near_copy(rng, rng.choice(made)), ensure_ascii=False)
                kind = "near_duplicates"
            elif made and roll < 0.10:
                line, kind = broken_line(rng, rng.choice(made)), "broken"
            else:
                example = make_example(rng, text)
                made.append(example)
                line, kind = json.dumps(example, ensure_ascii=False), "unique"
            counts[kind] += 1
            f.write(line + "\n")
    return counts


def peer_near_dedupe(examples: list[dict], threshold: float, num_perm: int) -> tuple[int, float]:
    """Near-duplicate removal as datasketch's documentation shows it; (duplicates, seconds)."""
    from datasketch import MinHash, MinHashLSH

    from tuneforge.data.dedupe import lsh_params

    word = re.compile(r"\w+")
    started = time.perf_counter()
    # The bands and rows TuneForge uses, so both sides have the same recall at the threshold.
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, params=lsh_params(threshold, num_perm))
    duplicates = 0
    for i, example in enumerate(examples):
        words = word.findall(
            " ".join(m["content"] for m in example["messages"] if m["role"] != "system").lower()
        )
        m = MinHash(num_perm=num_perm)
        m.update_batch(f"{a} {b}".encode() for a, b in itertools.pairwise(words))
        if lsh.query(m):
            duplicates += 1
        else:
            lsh.insert(i, m)
    return duplicates, time.perf_counter() - started


def ours_near_dedupe(examples: list[dict], threshold: float, num_perm: int) -> tuple[int, float]:
    """The same job with TuneForge's `NearDuplicateIndex`; (duplicates, seconds)."""
    from tuneforge.data.content import text_slots
    from tuneforge.data.dedupe import NearDuplicateIndex, shingle_text

    started = time.perf_counter()
    index = NearDuplicateIndex(threshold, num_perm)
    duplicates = 0
    for start in range(0, len(examples), 2048):
        batch = examples[start : start + 2048]
        signatures = index.signatures([shingle_text(text_slots(e)) for e in batch])
        for i, signature in enumerate(signatures, start=start):
            if signature is None:
                continue
            if index.query(signature) is not None:
                duplicates += 1
            else:
                index.add(i, signature)
    return duplicates, time.perf_counter() - started


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its finished worker processes."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _cpus() -> int:
    from tuneforge.data.parallel import available_cpus

    return available_cpus()


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=200_000)
    parser.add_argument("--peer-examples", type=int, default=20_000)
    parser.add_argument("--num-perm", type=int, default=64, help="MinHash permutations, both sides")
    parser.add_argument("--workers", type=int, help="processes for check and clean (default: CPUs)")
    parser.add_argument("--keep", type=Path, help="keep the generated files in this folder")
    args = parser.parse_args()

    from tuneforge.data.clean import CleanOptions, clean
    from tuneforge.data.dedupe import lsh_params
    from tuneforge.data.validate import check_file

    workdir = Path(tempfile.mkdtemp(prefix="tuneforge-bench-"))
    try:
        data = workdir / "chat.jsonl"
        started = time.perf_counter()
        counts = write_dataset(data, args.examples)
        size_mb = data.stat().st_size / 1e6
        print(
            f"dataset: {args.examples} lines, {size_mb:.0f} MB "
            f"({time.perf_counter() - started:.0f} s to generate): {counts}"
        )

        print(f"machine: {_cpus()} CPUs, load average {_load()}")
        started, cpu = time.perf_counter(), _cpu_seconds()
        report = check_file(data, workers=args.workers)
        check_s, check_cpu = time.perf_counter() - started, _cpu_seconds() - cpu
        print(
            f"check:  {args.examples / check_s:>9,.0f} examples/s, "
            f"{args.examples / check_cpu:>9,.0f} per CPU second  ({check_s:.1f} s; "
            f"{report.examples_valid} valid, {report.counts_by_severity['error']} errors)"
        )

        started, cpu = time.perf_counter(), _cpu_seconds()
        options = CleanOptions(near_dedupe=True, workers=args.workers)
        result = clean(data, workdir / "chat.clean.jsonl", options)
        clean_s, clean_cpu = time.perf_counter() - started, _cpu_seconds() - cpu
        print(
            f"clean:  {args.examples / clean_s:>9,.0f} examples/s, "
            f"{args.examples / clean_cpu:>9,.0f} per CPU second  ({clean_s:.1f} s; "
            f"kept {result.kept}, rejected {result.rejections}; every line accounted for: "
            f"{result.balanced})"
        )
        print(f"load average after: {_load()}")

        with open(workdir / "chat.clean.jsonl", encoding="utf-8") as f:
            examples = [json.loads(line) for line in f]
        subset = examples[: args.peer_examples]
        # Each near duplicate of the subset again, so both sides have duplicates to find.
        rng = random.Random(1)
        subset += [near_copy(rng, e) for e in rng.sample(subset, len(subset) // 10)]
        peer_dups, peer_s = peer_near_dedupe(subset, 0.9, args.num_perm)
        our_dups, our_s = ours_near_dedupe(subset, 0.9, args.num_perm)
        print(
            f"near-dedupe on {len(subset)} examples, num_perm={args.num_perm}, (bands, rows)="
            f"{lsh_params(0.9, args.num_perm)}: datasketch as documented "
            f"{len(subset) / peer_s:,.0f}/s ({peer_dups} found), TuneForge "
            f"{len(subset) / our_s:,.0f}/s ({our_dups} found): {peer_s / our_s:.1f}x"
        )
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for path in workdir.iterdir():
                shutil.copy(path, args.keep / path.name)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
