"""Fuzzing: reading and checking never raise, and every line of the file is accounted for."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneforge.data.checks import is_valid_example, validate_example
from tuneforge.data.io import BOM, Format, read_dataset
from tuneforge.data.validate import validate

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
# Keys and values the checks look at, so the fuzzer reaches deep branches, not only "not a dict".
KEYS = [
    "messages", "role", "content", "name", "weight", "tool_calls", "tool_call_id", "tools",
    "function", "arguments", "id", "type", "text", "prompt", "completion", "input",
    "preferred_output", "non_preferred_output", "preferred_completion", "parameters",
]  # fmt: skip
VALUES = ["system", "user", "assistant", "tool", "function", "text", "c1", "", " ", 0, 1]
near_valid = st.recursive(
    json_scalars | st.sampled_from(VALUES),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), children, max_size=5)
    ),
    max_leaves=25,
)


# Pieces of JSONL, JSON arrays, CSV and binary files, so byte fuzzing reaches every reader path.
FRAGMENTS = [
    b"\n", b"\r\n", b" ", b"[", b"]", b"{", b"}", b",", b'"', b":", b"\xef\xbb\xbf", b"\xff",
    b"\x00", b"\\ud800", b"NaN", b'{"messages": [', b'{"role": "user", "content": "hi"}',
    b'{"role": "assistant", "content": "yo"}', b"]}", b'{"text": "x"}', b'"prompt,completion\n',
    b"\x89PNG\r\n\x1a\n", b"\xff\xfe",
]  # fmt: skip
file_bytes = st.binary(max_size=400) | st.lists(
    st.sampled_from(FRAGMENTS) | st.binary(max_size=6), max_size=40
).map(b"".join)


def _read(data: bytes, suffix: str):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"d{suffix}"
        path.write_bytes(data)
        loaded = read_dataset(path)
        report = validate(loaded, max_tokens=64)
    return loaded, report


def _check_report(loaded, report) -> None:
    blank = sum(1 for r in loaded.records if r.problem and r.problem.code == "blank_line")
    assert report.examples_read == len(loaded.records) - blank
    assert 0 <= report.examples_valid <= report.examples_read
    assert report.ok == (report.counts_by_severity["error"] == 0)
    json.dumps(report.to_dict())  # always serialisable
    for r in loaded.records:
        assert (r.problem is None) or (r.data is None)


@FUZZ
@given(file_bytes)
def test_arbitrary_bytes_as_jsonl(data):
    loaded, report = _read(data, ".jsonl")
    _check_report(loaded, report)
    if loaded.unit == "line" and not any(
        p.code in ("pretty_printed_json", "empty_file") for p in loaded.file_problems
    ):
        body = data[len(BOM) :] if data.startswith(BOM) else data
        lines = body.split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        assert [r.line for r in loaded.records] == list(range(1, len(lines) + 1))


@FUZZ
@given(file_bytes, st.sampled_from([".txt", ".csv", ".tsv", ".json"]))
def test_arbitrary_bytes_in_other_formats(data, suffix):
    loaded, report = _read(data, suffix)
    _check_report(loaded, report)
    if suffix == ".txt":
        text = data.decode("utf-8", errors="replace")
        # every line holding something other than whitespace is in some block
        nonblank = {
            n
            for n, line in enumerate(text.removeprefix("\ufeff").split("\n"), start=1)
            if line.strip("\r") and not line.strip("\r").isspace()
        }
        starts = [r.line for r in loaded.records]
        assert set(starts) <= nonblank and (not nonblank or min(nonblank) == starts[0])


@FUZZ
@given(st.lists(json_values | near_valid, min_size=1, max_size=12))
def test_arbitrary_json_lines_are_all_records(values):
    lines = [json.dumps(v) for v in values]
    loaded, report = _read(("\n".join(lines) + "\n").encode(), ".jsonl")
    _check_report(loaded, report)
    if loaded.unit == "line" and not loaded.file_problems:
        assert [r.line for r in loaded.records] == list(range(1, len(values) + 1))
        assert [r.data for r in loaded.records] == values


@FUZZ
@given(near_valid | json_values, st.sampled_from(list(Format)))
def test_validate_example_never_raises(value, fmt):
    problems = validate_example(value, fmt, line=1)
    assert all(p.code and p.message and p.fix and p.line == 1 for p in problems)
    assert is_valid_example(value, fmt) == all(p.severity == "warning" for p in problems)


@FUZZ
@given(
    st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["system", "user", "assistant", "tool"])},
            optional={
                "content": st.sampled_from(["hi", "", " ", None]) | json_values,
                "weight": st.sampled_from([0, 1, 2, 0.5, True]),
                "tool_call_id": st.sampled_from(["c1", "c2", 3]),
                "tool_calls": near_valid,
                "name": json_scalars,
            },
        ),
        max_size=6,
    ),
    near_valid,
)
def test_chat_conversations_never_raise(messages, tools):
    example = {"messages": messages, "tools": tools}
    problems = validate_example(example, Format.CHAT, line=3)
    if messages and all(
        m.get("content") == "hi" and set(m) == {"role", "content"} for m in messages
    ):
        codes = {p.code for p in problems if p.severity == "error"}
        assert codes <= {"example_missing_assistant_message", "unmatched_tool_call_id",
                         "message_missing_key", "invalid_tools"}  # fmt: skip
