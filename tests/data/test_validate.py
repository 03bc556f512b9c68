"""Validation: each check on a small hand-written example, the dataset-wide checks, the CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.data.checks import is_valid_example, validate_example
from tuneforge.data.io import Format, read_dataset
from tuneforge.data.problems import FIXES
from tuneforge.data.validate import validate
from tuneforge.tokenize.measure import context_limit, token_measure

U = {"role": "user", "content": "What is my balance?"}
A = {"role": "assistant", "content": "It is 120 dollars."}
S = {"role": "system", "content": "You are a bank assistant."}
CALL = {
    "role": "assistant",
    "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "balance", "arguments": "{}"}}
    ],
}
RESULT = {"role": "tool", "tool_call_id": "c1", "content": "120"}
TOOLS = [{"type": "function", "function": {"name": "balance", "parameters": {"type": "object"}}}]


def chat(*messages, **extra) -> dict:
    return {"messages": list(messages), **extra}


def pref(**overrides) -> dict:
    example = {
        "input": {"messages": [U]},
        "preferred_output": [A],
        "non_preferred_output": [{"role": "assistant", "content": "No idea."}],
    }
    example.update(overrides)
    return {k: v for k, v in example.items() if v is not None}


CLEAN = [
    (chat(S, U, A), "chat"),
    (chat(U, A, U, A), "chat"),
    (chat(U, CALL, RESULT, A, tools=TOOLS), "chat"),
    (chat(U, CALL), "chat"),  # ending on a call teaches when to call
    (chat(U, {**A, "weight": 0}, U, {**A, "weight": 1, "name": "bot"}), "chat"),
    (chat(U, {"role": "assistant", "content": [{"type": "text", "text": "Hi"}]}), "chat"),
    (pref(), "preference"),
    (pref(preferred_output=None, preferred_completion="Yes."), "preference"),
    ({"prompt": "2+2=", "completion": " 4"}, "prompt_completion"),
    ({"prompt": "", "completion": " 4"}, "prompt_completion"),
    ({"text": "Some text."}, "text"),
]


@pytest.mark.parametrize(("example", "fmt"), CLEAN)
def test_clean_examples_have_no_problem(example, fmt):
    assert validate_example(example, fmt) == []
    assert is_valid_example(example, fmt)


# (example, format, expected code, expected severity)
CASES = [
    # the OpenAI cookbook's chat checks
    ([U, A], "chat", "data_type", "error"),
    ({"prompt": "p", "completion": "c"}, "chat", "missing_messages_list", "error"),
    (chat(), "chat", "missing_messages_list", "error"),
    ({"messages": "hi"}, "chat", "invalid_messages_type", "error"),
    (chat(U, {"content": "x"}), "chat", "message_missing_key", "error"),
    (chat(U, {"role": "assistant"}), "chat", "message_missing_key", "error"),
    (chat(U, {**A, "mood": "happy"}), "chat", "message_unrecognized_key", "error"),
    (chat({"role": "human", "content": "x"}, A), "chat", "unrecognized_role", "error"),
    (chat({"role": ["user"], "content": "x"}, A), "chat", "unrecognized_role", "error"),
    (chat(U, {"role": "assistant", "content": None}), "chat", "missing_content", "error"),
    (chat(U, U), "chat", "example_missing_assistant_message", "error"),
    # types
    (chat("hello", A), "chat", "message_not_object", "error"),
    (chat(U, {"role": "assistant", "content": 42}), "chat", "invalid_content_type", "error"),
    (chat(U, {"role": "assistant", "content": ["x"]}), "chat", "invalid_content_type", "error"),
    (
        chat({"role": "user", "content": [{"type": "image_url", "image_url": {}}]}, A),
        "chat",
        "unsupported_content_part",
        "error",
    ),
    (chat(U, {**A, "name": 7}), "chat", "invalid_name_type", "error"),
    (chat(U, {**A, "weight": 0.5}), "chat", "invalid_weight", "error"),
    (chat(U, {**A, "weight": True}), "chat", "invalid_weight", "error"),
    (chat({**U, "weight": 1}, A), "chat", "invalid_weight", "warning"),
    (chat(U, {**A, "weight": 0}), "chat", "no_trained_message", "error"),
    (chat(U, A, tools={"name": "x"}), "chat", "invalid_tools", "error"),
    (chat(U, A, tools=[{"type": "function"}]), "chat", "invalid_tools", "error"),
    (chat(U, {**CALL, "tool_calls": {"id": "c1"}}), "chat", "invalid_tool_calls", "error"),
    (chat(U, {**CALL, "tool_calls": [{"id": "c1"}]}), "chat", "invalid_tool_calls", "error"),
    (chat({**U, "tool_calls": CALL["tool_calls"]}, A), "chat", "invalid_tool_calls", "error"),
    (
        chat(
            U,
            {**CALL, "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{"}}]},
            RESULT,
            A,
        ),
        "chat",
        "invalid_tool_arguments",
        "warning",
    ),
    # tool call ids
    (chat(U, CALL, {**RESULT, "tool_call_id": "zz"}, A), "chat", "unmatched_tool_call_id", "error"),
    (chat(U, RESULT, A), "chat", "unmatched_tool_call_id", "error"),
    (chat(U, CALL, {"role": "tool", "content": "1"}, A), "chat", "message_missing_key", "error"),
    (chat(U, {**A, "tool_call_id": "c1"}), "chat", "message_unrecognized_key", "error"),
    (chat(U, CALL, U, A), "chat", "unanswered_tool_call", "warning"),
    # order and emptiness
    (chat(U, U, A), "chat", "consecutive_same_role", "warning"),
    (chat(U, A, A), "chat", "consecutive_same_role", "warning"),
    (chat(U, A, S, U, A), "chat", "system_not_first", "warning"),
    (chat(U, A, U), "chat", "last_message_not_assistant", "warning"),
    (chat(U, {"role": "assistant", "content": ""}), "chat", "empty_content", "error"),
    (chat(U, {"role": "assistant", "content": " \n"}), "chat", "empty_content", "error"),
    (
        chat(U, {"role": "assistant", "content": [{"type": "text", "text": ""}]}),
        "chat",
        "empty_content",
        "error",
    ),
    (chat({"role": "user", "content": "  "}, A), "chat", "empty_content", "warning"),
    (chat(U, A, id=3), "chat", "unrecognized_key", "warning"),
    # prompt-completion
    ({"completion": " c"}, "prompt_completion", "missing_prompt", "error"),
    ({"prompt": "p"}, "prompt_completion", "missing_completion", "error"),
    ({"prompt": 1, "completion": " c"}, "prompt_completion", "invalid_prompt_type", "error"),
    ({"prompt": "p", "completion": ["c"]}, "prompt_completion", "invalid_completion_type", "error"),
    ({"prompt": "p", "completion": ""}, "prompt_completion", "empty_completion", "error"),
    ({"prompt": "p", "completion": " \t"}, "prompt_completion", "empty_completion", "error"),
    (
        {"prompt": "p", "completion": " c", "x": 1},
        "prompt_completion",
        "unrecognized_key",
        "warning",
    ),
    # preference
    (pref(input=None), "preference", "missing_input", "error"),
    (pref(input=[U]), "preference", "invalid_input", "error"),
    (pref(input={"messages": []}), "preference", "invalid_input", "error"),
    (pref(input={"messages": [{"role": "user"}]}), "preference", "message_missing_key", "error"),
    (pref(non_preferred_output=None), "preference", "missing_preference_output", "error"),
    (pref(preferred_output="Yes"), "preference", "invalid_preference_output", "error"),
    (pref(preferred_output=[U]), "preference", "invalid_preference_output", "error"),
    (pref(preferred_output=[A, A]), "preference", "invalid_preference_output", "error"),
    (
        pref(preferred_output=[{"role": "assistant", "content": ""}]),
        "preference",
        "empty_content",
        "error",
    ),
    (pref(non_preferred_output=[A]), "preference", "identical_preference", "warning"),
    # text
    ({"body": "x"}, "text", "missing_text", "error"),
    ({"text": None}, "text", "missing_text", "error"),
    ({"text": 3}, "text", "invalid_text_type", "error"),
    ({"text": "\n"}, "text", "empty_text", "error"),
]


@pytest.mark.parametrize(("example", "fmt", "code", "severity"), CASES)
def test_each_check(example, fmt, code, severity):
    problems = validate_example(example, fmt, line=7)
    found = [p for p in problems if p.code == code]
    assert found, [p.code for p in problems]
    assert {p.severity for p in found} == {severity}
    assert all(p.line == 7 and p.message and p.fix == FIXES.get(p.code, p.fix) for p in problems)
    assert is_valid_example(example, fmt) == all(p.severity == "warning" for p in problems)


def test_wrong_format_line_says_what_it_looks_like():
    (problem,) = validate_example({"prompt": "p", "completion": "c"}, Format.CHAT)
    assert "looks like prompt_completion" in problem.message


def test_messages_do_not_echo_huge_user_values():
    (problem,) = validate_example(chat(U, {**A, "x" * 10_000: 1}), "chat")
    assert len(problem.message) < 200


def write_jsonl(tmp_path, rows, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def many(n: int) -> list[dict]:
    return [chat(S, {"role": "user", "content": f"question {i}"}, A) for i in range(n)]


def test_dataset_report(tmp_path):
    rows = [*many(12), "{broken", "", many(1)[0], chat(U, A), chat(U, U)]
    report = validate(read_dataset(write_jsonl(tmp_path, rows)))
    assert report.format is Format.CHAT
    assert (report.examples_read, report.examples_valid) == (16, 14)
    assert not report.ok
    assert report.counts_by_code == {
        "invalid_json": 1,
        "blank_line": 1,
        "duplicate_example": 1,
        "example_missing_assistant_message": 1,
        "consecutive_same_role": 1,
        "few_examples": 1,
    }
    assert report.counts_by_severity == {"error": 2, "warning": 4}
    duplicate = next(p for p in report.problems if p.code == "duplicate_example")
    assert (duplicate.line, duplicate.message) == (15, "the same example as line 1")
    assert report.stats == {
        "examples_without_system": 1,
        "examples_without_user": 0,
        "duplicates": 1,
    }
    assert [p.line for p in report.problems] == [None, 13, 14, 15, 17, 17]
    data = report.to_dict(limit=2)
    assert data["problems_total"] == 6 and len(data["problems"]) == 2
    assert json.loads(json.dumps(data)) == data


def test_warnings_alone_are_ok_and_too_few_is_not(tmp_path):
    report = validate(read_dataset(write_jsonl(tmp_path, [*many(10), chat(U, A, U)])))
    assert report.ok and report.counts_by_severity["warning"] == 2
    report = validate(read_dataset(write_jsonl(tmp_path, many(9))))
    assert not report.ok and report.counts_by_code == {"too_few_examples": 1}
    assert validate(read_dataset(write_jsonl(tmp_path, many(3))), min_examples=3).ok is True


def test_empty_and_unknown_format_files_fail(tmp_path):
    (tmp_path / "e.jsonl").write_text("")
    report = validate(read_dataset(tmp_path / "e.jsonl"))
    assert report.counts_by_code == {"empty_file": 1} and not report.ok
    report = validate(read_dataset(write_jsonl(tmp_path, [{"a": 1}] * 20 + ["3"])))
    assert report.format is None and not report.ok
    assert report.counts_by_code == {"unknown_format": 1, "data_type": 1, "too_few_examples": 1}
    report = validate(read_dataset(write_jsonl(tmp_path, ["{broken"])))
    assert report.counts_by_code == {"invalid_json": 1, "too_few_examples": 1}


def test_prompt_completion_advice(tmp_path):
    plain = [{"prompt": f"Q{i}", "completion": f"a{i}"} for i in range(12)]
    report = validate(read_dataset(write_jsonl(tmp_path, plain)))
    assert {"no_prompt_separator", "completion_no_leading_space", "no_stop_sequence"} <= set(
        report.counts_by_code
    )
    assert report.ok  # advice, not errors
    tidy = [{"prompt": f"x{i}\n\n###\n\n", "completion": f" a{i} END"} for i in range(12)]
    report = validate(read_dataset(write_jsonl(tmp_path, tidy)))
    assert set(report.counts_by_code) == {"few_examples"}
    prefixed = [{"prompt": f"Q: {i} ->", "completion": " A: yes END"} for i in range(11)]
    prefixed.append({"prompt": "Q: 1 -> 2 ->", "completion": " A: no END"})
    report = validate(read_dataset(write_jsonl(tmp_path, prefixed)))
    assert {"common_prompt_prefix", "common_completion_prefix", "separator_in_prompt"} <= set(
        report.counts_by_code
    )


def test_estimated_token_lengths(tmp_path):
    rows = [*many(10), chat(U, {"role": "assistant", "content": "word " * 400})]
    report = validate(read_dataset(write_jsonl(tmp_path, rows)), max_tokens=100)
    (long,) = [p for p in report.problems if p.code == "too_long"]
    assert long.line == 11 and "estimated" in long.message and long.severity == "warning"
    assert report.tokens.exact is False and report.tokens.over_limit == 1


def test_exact_token_lengths_with_a_tokenizer(tmp_path, tiny_tokenizer):
    import copy

    tokenizer = copy.deepcopy(tiny_tokenizer)  # a chat template gets added: keep the fixture as is
    rows = [*many(10), chat(U, {"role": "assistant", "content": "The quick brown fox. " * 50})]
    report = validate(
        read_dataset(write_jsonl(tmp_path, rows)), measure=token_measure(tokenizer), max_tokens=64
    )
    assert report.tokens.exact and report.tokens.count == 11
    assert [p.line for p in report.problems if p.code == "too_long"] == [11]
    assert report.tokens.min < 64 < report.tokens.max
    plain = [{"text": "Hello world"}] * 3
    report = validate(
        read_dataset(write_jsonl(tmp_path, plain)),
        measure=token_measure(tokenizer),
        max_tokens=context_limit(tokenizer),
    )
    assert report.tokens.limit == tokenizer.model_max_length and report.tokens.over_limit == 0


runner = CliRunner()


def test_cli_check_exit_codes_and_output(tmp_path):
    good = write_jsonl(tmp_path, many(12), "good.jsonl")
    result = runner.invoke(app, ["data", "check", str(good)])
    assert result.exit_code == 0, result.output
    assert "ready to train" in result.output

    bad = write_jsonl(tmp_path, [*many(12), "{broken", chat(U, U)], "bad.jsonl")
    result = runner.invoke(app, ["data", "check", str(bad)], env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert "invalid_json" in result.output and "example_missing_assistant_message" in result.output
    assert "training would fail" in result.output
    assert "Traceback" not in result.output


def test_cli_check_json_shape(tmp_path):
    bad = write_jsonl(tmp_path, [*many(12), "{broken", "[1]", chat(U, U)])
    result = runner.invoke(app, ["data", "check", str(bad), "--json", "--limit", "2"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["ok"] is False and data["format"] == "chat"
    assert (data["examples_read"], data["examples_valid"]) == (15, 12)
    assert data["problems_total"] == 5 and len(data["problems"]) == 2
    assert set(data["problems"][0]) == {"line", "column", "code", "severity", "message", "fix"}
    assert data["counts_by_severity"] == {"error": 3, "warning": 2}


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.jsonl", None, "no such file"),
        ("folder", "dir", "is a directory"),
    ],
)
def test_cli_check_unreadable(tmp_path, name, content, message):
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    result = runner.invoke(app, ["data", "check", str(path)])
    assert result.exit_code == 2 and message in result.output
    result = runner.invoke(app, ["data", "check", str(path), "--json"])
    assert result.exit_code == 2 and message in json.loads(result.stdout)["error"]


@pytest.mark.parametrize(
    ("name", "content", "code"),
    [
        (
            "image.jsonl",
            b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4,
            "binary_file",
        ),
        ("empty.jsonl", b"", "empty_file"),
        ("noise.csv", bytes(range(256)) * 20, "binary_file"),
        ("noise.txt", b"\xff\xfe\x00" * 50, "utf16"),
    ],
    ids=["png", "empty", "random-csv", "utf16-txt"],
)
def test_cli_check_hostile_files_fail_cleanly(tmp_path, name, content, code):
    path = tmp_path / name
    path.write_bytes(content)
    result = runner.invoke(app, ["data", "check", str(path), "--json"])
    assert result.exit_code == 1
    assert code in json.loads(result.stdout)["counts_by_code"]
    result = runner.invoke(app, ["data", "check", str(path)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert code in result.output


def test_cli_check_with_model_and_bad_options(tmp_path, tiny_model_dir):
    good = write_jsonl(tmp_path, many(12))
    result = runner.invoke(
        app, ["data", "check", str(good), "--model", str(tiny_model_dir), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tokens"]["exact"] is True
    result = runner.invoke(app, ["data", "check", str(good), "--model", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "cannot load a tokenizer" in result.output
    result = runner.invoke(app, ["data", "check", str(good), "--format", "sft"])
    assert result.exit_code == 2 and "unknown format" in result.output


def test_cli_check_table_columns(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("q,a\n" + "".join(f'question {i}?," answer {i} END"\n' for i in range(12)))
    result = runner.invoke(
        app,
        ["data", "check", str(path), "--prompt-col", "q", "--completion-col", "a", "--json"],
    )
    data = json.loads(result.stdout)
    assert data["format"] == "prompt_completion" and data["examples_valid"] == 12
    assert data["problems"][0]["line"] is None  # dataset-wide advice first
