"""`tuneforge data split`: seeded, reproducible, stratified, duplicates never straddle it."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.data.split import duplicate_groups, split, valid_count


def example(i: int, label: str = "a") -> dict:
    words = " ".join(f"topic{i}word{j}" for j in range(12))
    return {
        "messages": [
            {"role": "user", "content": f"Question {i}: {words}"},
            {"role": "assistant", "content": f"Answer {i}: {words}"},
        ],
        "label": label,
    }


def write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_same_seed_same_split_other_seed_other_split(tmp_path):
    src = write(tmp_path / "in.jsonl", [example(i) for i in range(100)])
    outputs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        report = split(src, tmp_path / f"{name}.train", tmp_path / f"{name}.valid", 0.1, seed=seed)
        assert (report.train, report.valid) == (90, 10)
        outputs.append(
            ((tmp_path / f"{name}.train").read_text(), (tmp_path / f"{name}.valid").read_text())
        )
    assert outputs[0] == outputs[1]
    assert outputs[0][1] != outputs[2][1]
    train, valid = read(tmp_path / "a.train"), read(tmp_path / "a.valid")
    assert sorted(e["messages"][0]["content"] for e in train + valid) == sorted(
        e["messages"][0]["content"] for e in map(example, range(100))
    )
    # Input order is kept inside each file.
    numbers = [int(e["messages"][0]["content"].split()[1][:-1]) for e in train]
    assert numbers == sorted(numbers)


def test_count_and_fraction():
    assert valid_count(100, 0.1) == 10 and valid_count(100, 25) == 25 and valid_count(5, 0.01) == 1
    with pytest.raises(ValueError, match="nothing would be left"):
        valid_count(10, 10)
    with pytest.raises(ValueError):
        valid_count(10, 2.5)


def test_duplicates_and_near_duplicates_stay_on_one_side(tmp_path):
    rows = []
    for i in range(30):
        rows.append(example(i))
        rows.append(example(i))  # exact copy
        near = example(i)
        near["messages"][1]["content"] += " indeed"  # near copy
        rows.append(near)
    groups = duplicate_groups(rows)
    assert sorted(map(sorted, groups)) == [[3 * i, 3 * i + 1, 3 * i + 2] for i in range(30)]
    src = write(tmp_path / "in.jsonl", rows)
    for seed in range(5):
        report = split(src, tmp_path / "t.jsonl", tmp_path / "v.jsonl", 0.2, seed=seed)
        assert report.duplicate_groups == 30 and report.valid == 18
        train = {e["messages"][0]["content"] for e in read(tmp_path / "t.jsonl")}
        valid = {e["messages"][0]["content"] for e in read(tmp_path / "v.jsonl")}
        assert not train & valid


def test_stratified_split_keeps_each_share(tmp_path):
    rows = [example(i, "billing" if i < 80 else "fraud") for i in range(100)]
    src = write(tmp_path / "in.jsonl", rows)
    report = split(src, tmp_path / "t.jsonl", tmp_path / "v.jsonl", 0.1, seed=3, stratify="label")
    assert report.strata == {
        "billing": {"train": 72, "valid": 8},
        "fraud": {"train": 18, "valid": 2},
    }
    assert sorted(e["label"] for e in read(tmp_path / "v.jsonl")) == ["billing"] * 8 + ["fraud"] * 2


def test_cli_split_into_a_folder(tmp_path):
    src = write(tmp_path / "in.jsonl", [example(i) for i in range(20)])
    result = CliRunner().invoke(
        app, ["data", "split", src, "--valid", "5", "-o", str(tmp_path / "out"), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["valid"] == 5
    assert (
        len(read(tmp_path / "out" / "valid.jsonl")) == 5
        and len(read(tmp_path / "out" / "train.jsonl")) == 15
    )
    result = CliRunner().invoke(app, ["data", "split", src, "--valid", "0.1"])
    assert result.exit_code == 2
