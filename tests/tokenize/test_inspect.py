"""`tuneforge data inspect` and the Rich rendering behind it."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.tokenize import encode
from tuneforge.tokenize.inspect import TRAINED_STYLE, render_tokens
from tuneforge.tokenize.tokenizer import load_tokenizer

EXAMPLES = [
    {
        "messages": [
            {"role": "user", "content": "I lost my card."},
            {"role": "assistant", "content": "Sure, I have sent a new one."},
        ]
    },
    {"prompt": "What is the capital of France?", "completion": " Paris"},
    {"text": "The quick brown fox."},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_render_tokens_highlights_exactly_the_trained_tokens(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))  # no template in the folder: ChatML is set
    assert tok.chat_template
    enc = encode(EXAMPLES[0], tok)
    text = render_tokens(enc, tok)
    highlighted = "".join(
        text.plain[s.start : s.end] for s in text.spans if str(s.style).startswith(TRAINED_STYLE)
    )
    assert highlighted == "Sure, I have sent a new one.<|im_end|>"
    assert "<|im_start|>user↵\nI lost my card." in text.plain


def test_data_inspect_shows_examples_and_counts(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "train.jsonl", EXAMPLES)
    runner = CliRunner()
    result = runner.invoke(
        app, ["data", "inspect", str(data), "--model", str(tiny_model_dir), "--count", "3"]
    )
    assert result.exit_code == 0, result.output
    tok = load_tokenizer(str(tiny_model_dir))
    for ex in EXAMPLES:
        enc = encode(ex, tok)
        counts = (
            f"tokens {len(enc)}   trained {enc.num_trained}   masked {len(enc) - enc.num_trained}"
        )
        assert counts in result.output
    assert "Sure, I have sent a new one.<|im_end|>" in result.output
    assert "train.jsonl:3" in result.output  # titled by line number

    everything = runner.invoke(
        app,
        ["data", "inspect", str(data), "--model", str(tiny_model_dir), "--train-on", "all"],
    )
    enc = encode(EXAMPLES[0], tok)
    assert f"tokens {len(enc)}   trained {len(enc)}   masked 0" in everything.output


def test_data_inspect_errors(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "train.jsonl", EXAMPLES[:1])
    runner = CliRunner()
    out_of_range = runner.invoke(
        app, ["data", "inspect", str(data), "--model", str(tiny_model_dir), "--index", "5"]
    )
    assert out_of_range.exit_code == 1 and "out of range" in out_of_range.output
    bad_mode = runner.invoke(
        app, ["data", "inspect", str(data), "--model", str(tiny_model_dir), "--train-on", "x"]
    )
    assert bad_mode.exit_code == 2
    pref = write_jsonl(
        tmp_path / "pref.jsonl",
        [{"input": {"messages": []}, "preferred_output": [], "non_preferred_output": []}],
    )
    refused = runner.invoke(app, ["data", "inspect", str(pref), "--model", str(tiny_model_dir)])
    assert refused.exit_code == 1 and "preference" in refused.output


def test_data_inspect_shows_both_replies_of_a_preference_example(tmp_path, tiny_model_dir):
    example = {
        "input": {"messages": [{"role": "user", "content": "I lost my card."}]},
        "preferred_output": [{"role": "assistant", "content": "Sure, a new one is on its way."}],
        "non_preferred_output": [{"role": "assistant", "content": "Not my problem."}],
    }
    data = write_jsonl(tmp_path / "prefs.jsonl", [example])
    result = CliRunner().invoke(app, ["data", "inspect", str(data), "--model", str(tiny_model_dir)])
    assert result.exit_code == 0, result.output
    assert "preferred reply" in result.output and "non-preferred reply" in result.output
    assert "Sure, a new one is on its way.<|im_end|>" in result.output
    assert "Not my problem.<|im_end|>" in result.output
    assert result.output.count("I lost my card.") == 2  # the prompt, in both conversations

    from tuneforge.tokenize import encode_preference
    from tuneforge.tokenize.inspect import inspect_example

    tok = load_tokenizer(str(tiny_model_dir))
    panel, enc = inspect_example(example, tok)
    chosen, rejected = encode_preference(example, tok)
    assert enc == chosen
    for e in (chosen, rejected):
        assert f"tokens {len(e)}   trained {e.num_trained}" in result.output
    highlighted = [
        "".join(t.plain[s.start : s.end] for s in t.spans if str(s.style).startswith(TRAINED_STYLE))
        for t in panel.renderable.renderables
        if isinstance(t, type(render_tokens(chosen, tok))) and t.spans
    ]
    assert "Sure, a new one is on its way.<|im_end|>" in highlighted
    assert "Not my problem.<|im_end|>" in highlighted
