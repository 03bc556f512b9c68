"""`tuneforge data stats`: numbers on a tiny file against hand-computed values."""

from __future__ import annotations

import copy
import json

import pytest
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.data.stats import Summary, auto_epochs, dataset_stats, percentile
from tuneforge.tokenize.encode import encode
from tuneforge.tokenize.measure import context_limit, token_counter
from tuneforge.tokenize.templates import ensure_chat_template
from tuneforge.training.config import auto_epochs as training_auto_epochs

ROWS = [
    {"messages": [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi."}]},
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "I lost my card"},
            {"role": "assistant", "content": "I have frozen it."},
            {"role": "user", "content": "Thanks"},
            {"role": "assistant", "content": "You are welcome."},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "What is my balance?"},
            {"role": "assistant", "content": "Your balance is 120 dollars."},
        ]
    },
]


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "train.jsonl"
    broken = json.dumps({"messages": [{"role": "user", "content": "no reply"}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS) + broken + "\n")
    return path


@pytest.fixture(scope="module")
def chat_tokenizer(tiny_tokenizer):
    tokenizer = copy.deepcopy(tiny_tokenizer)
    ensure_chat_template(tokenizer)
    return tokenizer


def test_auto_epochs_follows_openai_rule():
    expected = {
        1: 25,
        3: 25,
        10: 10,
        33: 4,
        34: 3,
        1000: 3,
        8333: 3,
        8334: 2,
        10_000: 2,
        20_000: 1,
        10**6: 1,
    }
    assert {n: auto_epochs(n) for n in expected} == expected
    for n in range(1, 30_000, 97):  # one rule, whether training or `data stats` asks
        assert auto_epochs(n) == training_auto_epochs(n)


def test_percentiles_and_summary():
    assert (
        percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 10) == 1
        and percentile(list(range(1, 11)), 90) == 9
    )
    s = Summary.of([4, 1, 3, 2])
    assert (s.min, s.p10, s.median, s.p90, s.max, s.total, s.mean) == (1, 1, 2.5, 4, 4, 10, 2.5)
    assert Summary.of([]) is None


def test_counts_without_a_model(data_file):
    report = dataset_stats(data_file)
    assert (report.examples, report.skipped, report.format) == (3, 1, "chat")
    assert (
        report.messages.min,
        report.messages.median,
        report.messages.max,
        report.messages.total,
    ) == (2, 2, 5, 9)
    assert (report.assistant_turns.max, report.assistant_turns.total) == (2, 4)
    # Characters of text: 6+3, 9+14+17+6+16, 19+28.
    assert (report.characters.min, report.characters.median, report.characters.max) == (9, 47, 62)
    assert report.tokens is None and report.training_tokens is None
    assert report.epochs == 25  # 3 examples: ceil(100 / 3) = 34 epochs, capped at 25


def test_token_counts_with_the_tokenizer(data_file, chat_tokenizer):
    report = dataset_stats(data_file, count=token_counter(chat_tokenizer), max_tokens=30)
    encoded = [encode(r, chat_tokenizer) for r in ROWS]
    lengths = sorted(len(e) for e in encoded)
    assert (report.tokens.min, report.tokens.median, report.tokens.max) == tuple(lengths)
    assert report.tokens.total == sum(lengths)
    assert report.trained_tokens == sum(e.num_trained for e in encoded) > 0
    assert report.trained_tokens + report.masked_tokens == sum(lengths)
    assert report.over_limit == sum(1 for n in lengths if n > 30) and report.limit == 30
    assert report.training_tokens == sum(lengths) * 25
    everything = dataset_stats(
        data_file,
        count=token_counter(chat_tokenizer, "all"),
        train_on="all",
        max_tokens=context_limit(chat_tokenizer),
    )
    assert everything.masked_tokens == 0 and everything.limit == chat_tokenizer.model_max_length


def test_cli_stats(data_file, tiny_model_dir):
    result = CliRunner().invoke(app, ["data", "stats", str(data_file), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["examples"] == 3
    result = CliRunner().invoke(app, ["data", "stats", str(data_file)])
    assert "token counts need the model's tokenizer" in result.stdout
    result = CliRunner().invoke(
        app, ["data", "stats", str(data_file), "--model", str(tiny_model_dir), "--json"]
    )
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["tokens"]["total"] == stats["trained_tokens"] + stats["masked_tokens"] > 0
