"""Evaluating a preference (DPO) fine-tune on a preference hold-out file: preference accuracy,
DPO's reward accuracy and margin against the reference (the base), and the generation metrics
on the prompts, with paired bootstrap intervals."""

from __future__ import annotations

import json
from pathlib import Path

from toy import PAIRS, train_toy

from tuneforge.evaluation import EvalSettings, GenerationSettings, run_eval
from tuneforge.evaluation.data import read_holdout
from tuneforge.tokenize import encode_preference, render_prompt
from tuneforge.tokenize.tokenizer import load_tokenizer

RUDE = "That is a stupid question and I will not waste my time answering it for you today."


def write_prefs(path: Path, n: int, offset: int = 0) -> Path:
    lines = []
    for i in range(n):
        question, answer = PAIRS[(i + offset) % len(PAIRS)]
        example = {
            "input": {"messages": [{"role": "user", "content": question}]},
            "preferred_output": [{"role": "assistant", "content": answer}],
            "non_preferred_output": [{"role": "assistant", "content": RUDE}],
        }
        lines.append(json.dumps(example))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_holdout_preference_examples_are_encoded_as_dpo_encodes_them(tiny_model_dir, tmp_path):
    tok = load_tokenizer(str(tiny_model_dir))
    path = write_prefs(tmp_path / "prefs.jsonl", 3)
    examples = read_holdout(path, tok, expected_format="chat")  # a chat fine-tune: allowed
    row = json.loads(path.read_text().splitlines()[0])
    chosen, rejected = encode_preference(row, tok)
    first = examples[0]
    assert first.encoded == chosen and first.rejected == rejected
    assert first.prompt_ids == render_prompt(row["input"]["messages"], tok)
    assert first.reference == PAIRS[0][1] and first.prompt == PAIRS[0][0]


def test_dpo_finetune_against_its_reference(tiny_model_dir, tmp_path):
    train = write_prefs(tmp_path / "train.jsonl", 16)
    holdout = write_prefs(tmp_path / "holdout.jsonl", 10, offset=2)
    model = train_toy(
        tiny_model_dir,
        train,
        tmp_path / "dpo",
        **{"task": "dpo", "dpo.beta": 0.2, "optim.lr": 3e-3, "optim.epochs": 2},
    )
    (tmp_path / "blocklist.txt").write_text("stupid\n")
    settings = EvalSettings(
        max_new_tokens=12,
        generation=GenerationSettings(batch_size=10),
        blocklist=tmp_path / "blocklist.txt",
        n_boot=200,
        dtype="fp32",
    )
    result = run_eval(model, holdout, out_dir=tmp_path / "eval", settings=settings)
    rows = {r["name"]: r for r in result["metrics"]}
    assert result["baseline"]["name"] == str(tiny_model_dir)  # the base: DPO's reference
    reward = rows["reward_accuracy"]
    assert reward["group"] == "preference" and reward["n"] == 10
    assert reward["model"] == 1.0 and reward["baseline"] == 0.0
    assert reward["ci"][0] > 0 and reward["better"] is True
    assert rows["reward_margin"]["model"] > 0.3
    pref = rows["preference_accuracy"]
    assert pref["model"] == 1.0 and pref["model"] >= pref["baseline"]
    for name in ("reply_tokens_mean", "blocklist_rate", "loss"):
        assert "ci" in rows[name] and rows[name]["n"] == 10
    assert any("beta 0.2" in note for note in result["notes"])
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "reward_accuracy" in report and "preference_accuracy" in report


def test_hold_out_preference_file_without_baseline_has_no_reward_rows(tiny_model_dir, tmp_path):
    holdout = write_prefs(tmp_path / "holdout.jsonl", 4)
    settings = EvalSettings(generate=False, n_boot=100, dtype="fp32")
    result = run_eval(
        tiny_model_dir, holdout, baseline=None, out_dir=tmp_path / "e", settings=settings
    )
    names = {r["name"] for r in result["metrics"]}
    assert "preference_accuracy" in names and "reward_accuracy" not in names
