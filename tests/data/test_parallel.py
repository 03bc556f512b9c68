"""Checking and cleaning in worker processes gives the in-process results, byte for byte.

A small file is split into many chunks (tiny `CHUNK_BYTES`) and the near-duplicate batches made
tiny, so that duplicates, near duplicates and their batch boundaries fall across chunks.
"""

from __future__ import annotations

import json
import random

import pytest

from tuneforge.data import clean as clean_module
from tuneforge.data import parallel
from tuneforge.data.clean import CleanOptions, clean
from tuneforge.data.io import read_dataset
from tuneforge.data.validate import check_file, validate

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "while",
    "dogs",
    "ran",
    "far",
    "away",
    "from",
    "home",
    "to",
    "see",
    "the",
    "big",
    "red",
    "sun",
]


def chat(user: str, reply: str, system: str | None = None) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return {"messages": messages}


def sentence(rng: random.Random, n: int = 14) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_mixed(path, n: int = 160, seed: int = 3) -> str:
    """Unique chats with exact, case/space and near copies, broken, blank, non-UTF-8, CRLF,
    fixable and over-long lines, after a byte-order mark."""
    rng = random.Random(seed)
    made: list[dict] = []
    lines: list[bytes] = []
    near: list[bytes] = []
    for i in range(n):
        example = chat(f"q{i} {sentence(rng)}", f"a{i} {sentence(rng)}", "Be brief." * (i % 2))
        made.append(example)
        lines.append(json.dumps(example).encode())
        roll = rng.random()
        if roll < 0.12:  # an exact copy of an earlier example
            lines.append(json.dumps(rng.choice(made)).encode())
        elif roll < 0.24:  # a near copy: one word more
            copy = json.loads(json.dumps(rng.choice(made)))
            copy["messages"][-1]["content"] += " really"
            lines.append(json.dumps(copy).encode())
            near.append(lines[-1])
            if roll < 0.18:  # its exact copy in the same batch: no signature, so kept
                lines.append(lines[-1])
        elif roll < 0.30:  # the same content in other case and spacing, and a role to fix
            copy = json.loads(json.dumps(rng.choice(made)))
            copy["messages"][-1]["role"] = "Assistant"
            copy["messages"][-1]["content"] = "  " + copy["messages"][-1]["content"].upper()
            lines.append(json.dumps(copy).encode())
        elif roll < 0.34:
            lines.append(json.dumps(example).encode()[:25])  # cut off
        elif roll < 0.37:
            lines.append(b"")
        elif roll < 0.40:
            lines.append(b'{"messages": [{"role": "user", "content": "caf\xe9"}]}')
        elif roll < 0.43:
            lines.append(json.dumps(chat("Long " + sentence(rng, 300), "ok")).encode() + b"\r")
        elif roll < 0.45:
            lines.append(json.dumps(chat("mail me at a@b.example", "no")).encode())
        elif roll < 0.47:
            lines.append(b'{"messages": [{"role": "user", "content": "hi"}, {"role": "bot"}]}')
    lines += near[::2]  # exact copies of near copies, batches later: dropped as near copies
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n")
    return str(path)


@pytest.fixture
def tiny_chunks(monkeypatch):
    monkeypatch.setattr(parallel, "CHUNK_BYTES", 1500)
    monkeypatch.setattr(clean_module, "SIGNATURE_BATCH", 16)


def test_plan_splits_at_line_boundaries(tmp_path, tiny_chunks):
    path = write_mixed(tmp_path / "d.jsonl")
    plan, workers = parallel.plan_jsonl(path, None, 2)
    data = (tmp_path / "d.jsonl").read_bytes()
    assert workers == 2 and len(plan.chunks) > 10
    assert plan.chunks[0].start == 3  # after the byte-order mark
    assert [p.code for p in plan.file_problems] == ["bom"]
    for a, b in zip(plan.chunks, plan.chunks[1:], strict=False):
        assert a.end == b.start and data[a.end - 1 : a.end] == b"\n"
    assert plan.chunks[-1].end == len(data)
    # Small files, other formats and one worker stay in-process.
    assert parallel.plan_jsonl(path, None, None) is None
    assert parallel.plan_jsonl(path, None, 1) is None
    array = tmp_path / "a.json"
    array.write_text(json.dumps([chat("a", "b")] * 3, indent=1))
    assert parallel.plan_jsonl(array, None, 2) is None


@pytest.mark.parametrize("seed", [3, 11])
def test_check_file_matches_validate(tmp_path, tiny_chunks, seed):
    path = write_mixed(tmp_path / "d.jsonl", seed=seed)
    expected = validate(read_dataset(path))
    got = check_file(path, workers=2)
    assert got == expected
    assert got.to_dict() == expected.to_dict()
    assert {"duplicate_example", "non_utf8", "invalid_json", "blank_line", "bom"} <= set(
        got.counts_by_code
    )


# Lines that look like plain chats but are not, or are not clean: the workers' plain-chat lane
# must leave each to the full checks, or come to what they would.
EDGE_LINES = [
    b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}',
    b'{"messages": [{"role": "user", "content": "A "}, {"role": "assistant", "content": "b"}]}\r',
    b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "\\u00a0b"}]}',
    b'{"messages": [{"role": "user", "content": "a\\n\\tb"}, {"role": "assistant", "content": "c"}]}',
    b'{"messages": [{"role": "user", "content": "x", "role": "assistant", "content": "y"}]}',
    b'{"messages": [{"role": "user", "content": "a"}], "messages": []}',
    b'{"messages": []}',
    b'{"messages": [{"role": "user", "content": "a"}]}',
    b'{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}',
    b'{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},'
    b' {"role": "assistant", "content": "c"}]}',
    b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},'
    b' {"role": "assistant", "content": "c"}]}',
    b'{"messages": [{"role": "system", "content": "s"}, {"role": "system", "content": "t"},'
    b' {"role": "assistant", "content": "c"}]}',
    b'{"messages": [{"role": "assistant", "content": "only"}]}',
    b'{"messages": [{"role": "tool", "content": "t"}, {"role": "assistant", "content": "c"}]}',
    b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": " "}]}',
    b'{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "b"}]}',
    b'{"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"},'
    b' {"role": "assistant", "content": "b"}]}',
    b'{"messages": [{"role": "Assistant", "content": "b"}]}',
    b'{"messages": [{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "b"}]}',
    b'{"messages": [{"role": "user", "content": "caf\xe9"}, {"role": "assistant", "content": "b"}]}',
    b'{"messages": [{"role": "user", "content": null}, {"role": "assistant", "content": "b"}]}',
    b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b",'
    b' "weight": 0}]}',
    b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],'
    b' "id": 7}',
    b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]} x',
    b'  {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}  ',
    b"[1, 2]",
    b"",
    b"   ",
]


def test_check_file_plain_chat_lane_matches_validate(tmp_path, tiny_chunks):
    path = tmp_path / "edge.jsonl"
    path.write_bytes(b"\n".join(EDGE_LINES * 6) + b"\n")
    expected = validate(read_dataset(path))
    got = check_file(path, workers=2)
    assert got.to_dict() == expected.to_dict()
    assert got.counts_by_code["duplicate_example"] > 10


def test_check_file_falls_back_in_process(tmp_path, tiny_chunks):
    broken_first = tmp_path / "b.jsonl"
    broken_first.write_text('{"messages": [\n' + json.dumps(chat("a", "b")) + "\n")
    array = tmp_path / "a.json"
    array.write_text(json.dumps([chat("a", "b"), chat("c", "d")], indent=1))
    for path in (broken_first, array):
        assert check_file(path, workers=2) == validate(read_dataset(path))


def run_clean(src: str, out, **options):
    report = clean(src, out, CleanOptions(**options))
    result = report.to_dict()
    for key in ("seconds", "output", "rejects"):
        result.pop(key)
    return result, out.read_bytes(), (out.parent / (out.name + ".rejects.jsonl")).read_bytes()


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"dedupe": False},
        {"near_dedupe": False},
        {"max_tokens": 80, "redact_pii": True},
        {"max_tokens": 80, "too_long": "truncate", "near_dup_threshold": 0.8},
    ],
)
def test_parallel_clean_matches_in_process(tmp_path, tiny_chunks, options):
    src = write_mixed(tmp_path / "d.jsonl")
    one = run_clean(src, tmp_path / "one.jsonl", workers=1, **options)
    two = run_clean(src, tmp_path / "two.jsonl", workers=2, **options)
    assert two == one
    report = one[0]
    assert report["balanced"] and report["read"] > 200
    assert report["fixes"]["bom"] == 1
    assert {"invalid_json", "non_utf8", "blank_line"} <= set(report["rejections"])
    if options.get("dedupe", True):
        assert report["rejections"]["duplicate"] > 5
    if options.get("near_dedupe", True):
        assert report["rejections"]["near_duplicate"] > 5
    assert not list(tmp_path.glob(".two.jsonl.*"))  # spill files are gone


def test_workers_must_be_positive():
    with pytest.raises(ValueError, match="workers"):
        CleanOptions(workers=0)
