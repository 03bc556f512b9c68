"""Reading datasets: formats, line numbers, and hostile files reported instead of raised."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tuneforge.data.io import DatasetError, Format, detect_format, parse_format, read_dataset

CHAT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}


def write(tmp_path, name: str, content: str | bytes):
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def codes(problems) -> list[str]:
    return [p.code for p in problems]


@pytest.mark.parametrize(
    ("obj", "fmt"),
    [
        (CHAT, Format.CHAT),
        ({"prompt": "a", "completion": "b"}, Format.PROMPT_COMPLETION),
        ({"completion": "b"}, Format.PROMPT_COMPLETION),
        ({"input": {"messages": []}, "preferred_output": []}, Format.PREFERENCE),
        ({"input": {}, "non_preferred_completion": "x"}, Format.PREFERENCE),
        ({"text": "x"}, Format.TEXT),
        ({"input": "x"}, None),
        ([1], None),
        ("text", None),
    ],
)
def test_detect_format(obj, fmt):
    assert detect_format(obj) is fmt


def test_parse_format_accepts_dashes_and_rejects_unknown():
    assert parse_format("prompt-completion") is Format.PROMPT_COMPLETION
    with pytest.raises(DatasetError, match="choose one of chat"):
        parse_format("sft")


def test_jsonl_lines_are_numbered_and_problems_attached(tmp_path):
    lines = [json.dumps(CHAT), "", '{"messages": [', json.dumps(CHAT) + "\r", "   "]
    loaded = read_dataset(write(tmp_path, "d.jsonl", "\n".join(lines) + "\n"))
    assert loaded.format is Format.CHAT
    assert [r.line for r in loaded.records] == [1, 2, 3, 4, 5]
    assert [r.problem.code if r.problem else None for r in loaded.records] == [
        None,
        "blank_line",
        "invalid_json",
        None,
        "blank_line",
    ]
    assert loaded.records[2].problem.column == 15  # just past the end of the line
    assert loaded.records[3].data == CHAT  # the \r of a CRLF line is not part of the line
    assert [line for line, _ in loaded.examples()] == [1, 4]


def test_last_line_without_newline_is_read(tmp_path):
    loaded = read_dataset(write(tmp_path, "d.jsonl", json.dumps(CHAT) + "\n" + json.dumps(CHAT)))
    assert len(loaded.records) == 2 and all(r.ok for r in loaded.records)


def test_bom_is_a_warning_and_stripped(tmp_path):
    loaded = read_dataset(write(tmp_path, "d.jsonl", b"\xef\xbb\xbf" + json.dumps(CHAT).encode()))
    assert codes(loaded.file_problems) == ["bom"]
    assert loaded.file_problems[0].severity == "warning"
    assert loaded.records[0].data == CHAT


def test_non_utf8_line_has_line_and_byte(tmp_path):
    content = json.dumps(CHAT).encode() + b'\n{"text": "caf\xe9"}\n'
    loaded = read_dataset(write(tmp_path, "d.jsonl", content))
    problem = loaded.records[1].problem
    assert (problem.code, problem.line, problem.column) == ("non_utf8", 2, 14)
    assert loaded.records[0].ok


def test_nan_and_lone_surrogates_are_not_json(tmp_path):
    content = '{"text": NaN}\n{"text": "\\ud800 x"}\n{"text": "\\ud83d\\ude00 ok"}\n'
    loaded = read_dataset(write(tmp_path, "d.jsonl", content))
    assert [r.problem.code if r.problem else None for r in loaded.records] == [
        "invalid_json",
        "invalid_unicode",
        None,
    ]
    assert loaded.records[2].data == {"text": "😀 ok"}


def test_top_level_array_is_read_element_by_element(tmp_path):
    content = json.dumps([CHAT, {"prompt": "p", "completion": "c"}, CHAT], indent=2)
    loaded = read_dataset(write(tmp_path, "d.json", content))
    assert codes(loaded.file_problems) == ["top_level_array"]
    assert loaded.unit == "element"
    assert [r.line for r in loaded.records] == [1, 2, 3]
    assert loaded.format is Format.CHAT  # the majority


def test_pretty_printed_object_is_one_record(tmp_path):
    loaded = read_dataset(write(tmp_path, "d.jsonl", json.dumps(CHAT, indent=2)))
    assert codes(loaded.file_problems) == ["pretty_printed_json"]
    assert [r.data for r in loaded.records] == [CHAT]


def test_first_line_valid_means_jsonl_even_if_later_lines_are_broken(tmp_path):
    loaded = read_dataset(write(tmp_path, "d.jsonl", json.dumps(CHAT) + "\n{\n}\n"))
    assert loaded.file_problems == []
    assert codes(r.problem for r in loaded.records[1:]) == ["invalid_json", "invalid_json"]


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "binary_file"),
        (b"\x1f\x8b\x08\x00\x00\x00", "binary_file"),
        (b"\xff\xfe{\x00}\x00\n\x00", "utf16"),
        (b"ab\x00cd\n", "binary_file"),
    ],
)
def test_binary_files_are_named(tmp_path, content, code):
    loaded = read_dataset(write(tmp_path, "d.jsonl", content))
    assert loaded.file_problems[0].code == code
    assert loaded.records and all(not r.ok for r in loaded.records)


@pytest.mark.parametrize("content", [b"", b"\n\n  \n", b"\xef\xbb\xbf"])
def test_empty_files(tmp_path, content):
    loaded = read_dataset(write(tmp_path, "d.jsonl", content))
    assert "empty_file" in codes(loaded.file_problems)
    assert loaded.records == [] and loaded.format is None


def test_unreadable_paths_raise_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        read_dataset(tmp_path / "missing.jsonl")
    with pytest.raises(DatasetError, match="is a directory"):
        read_dataset(tmp_path)
    with pytest.raises(DatasetError, match="unknown format"):
        read_dataset(write(tmp_path, "d.jsonl", "{}"), format="sft")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX only")
def test_fifo_and_unreadable_file_raise_dataset_error(tmp_path):
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(DatasetError, match="not a regular file"):
        read_dataset(fifo)
    if os.geteuid() != 0:  # root reads anything
        locked = write(tmp_path, "locked.jsonl", "{}")
        locked.chmod(0)
        with pytest.raises(DatasetError, match="cannot read"):
            read_dataset(locked)


def test_forced_format_wins(tmp_path):
    loaded = read_dataset(write(tmp_path, "d.jsonl", json.dumps(CHAT)), format="text")
    assert loaded.format is Format.TEXT


def test_text_blocks_keep_file_line_numbers(tmp_path):
    # \x0c (form feed) and \u2028 are line breaks to str.splitlines, not to editors.
    content = "first block\x0c still first\n\n\nsecond\u2028block\r\nline two\n\n"
    loaded = read_dataset(write(tmp_path, "d.txt", content))
    assert loaded.format is Format.TEXT
    assert [(r.line, r.data["text"]) for r in loaded.records] == [
        (1, "first block\x0c still first"),
        (4, "second\u2028block\nline two"),
    ]


def test_text_non_utf8_block_is_flagged(tmp_path):
    loaded = read_dataset(write(tmp_path, "d.txt", b"good\n\nbad \xff here\nmore\n\nfine\n"))
    assert [(r.line, r.problem and r.problem.code) for r in loaded.records] == [
        (1, None),
        (3, "non_utf8"),
        (6, None),
    ]


def test_csv_line_numbers_follow_embedded_newlines(tmp_path):
    content = 'prompt,completion\n"a\nb\nc",one\n\nx," two"\n"p","multi\nline"\ny,z\n'
    loaded = read_dataset(write(tmp_path, "d.csv", content))
    assert loaded.format is Format.PROMPT_COMPLETION
    assert [(r.line, r.data["prompt"]) for r in loaded.records] == [
        (2, "a\nb\nc"),
        (6, "x"),
        (7, "p"),
        (9, "y"),
    ]


def test_csv_field_count_and_bad_bytes_are_row_problems(tmp_path):
    content = b'prompt,completion\na,b,c\nok, fine\n"caf\xe9\nx", y\n'
    loaded = read_dataset(write(tmp_path, "d.csv", content))
    assert [(r.line, r.problem and r.problem.code) for r in loaded.records] == [
        (2, "csv_field_count"),
        (3, None),
        (4, "non_utf8"),
    ]


def test_csv_long_field_and_custom_columns(tmp_path):
    long = "x" * 200_000  # over the csv module's default field limit
    content = f"question\tanswer\nq\t{long}\n"
    loaded = read_dataset(
        write(tmp_path, "d.tsv", content), prompt_col="question", completion_col="answer"
    )
    assert loaded.records[0].data == {"prompt": "q", "completion": long}


def test_csv_missing_columns_names_the_columns(tmp_path):
    loaded = read_dataset(write(tmp_path, "d.csv", "question,answer\nq,a\n"))
    assert codes(loaded.file_problems) == ["missing_columns"]
    assert "'question', 'answer'" in loaded.file_problems[0].message


def test_csv_text_column_and_header_only(tmp_path):
    loaded = read_dataset(write(tmp_path, "d.csv", "text,source\nhello,web\n"))
    assert loaded.format is Format.TEXT and loaded.records[0].data == {"text": "hello"}
    loaded = read_dataset(write(tmp_path, "e.csv", "prompt,completion\n"))
    assert codes(loaded.file_problems) == ["empty_file"]


def test_parquet_rows_and_schema_of_an_empty_table(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"prompt": ["a", None], "completion": [" b", " c"], "n": [1, 2]}), path)
    loaded = read_dataset(path)
    assert loaded.unit == "row"
    assert [(r.line, r.data) for r in loaded.records] == [
        (1, {"prompt": "a", "completion": " b"}),
        (2, {"prompt": None, "completion": " c"}),
    ]
    empty = tmp_path / "e.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string()), "completion": []}), empty)
    assert codes(read_dataset(empty).file_problems) == ["empty_file"]


def test_broken_parquet_raises_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="not a readable Parquet file"):
        read_dataset(write(tmp_path, "d.parquet", b"PAR1 this is not parquet"))


def test_a_50_mb_line_is_read(tmp_path):
    big = json.dumps({"text": "x" * 50_000_000})
    loaded = read_dataset(write(tmp_path, "d.jsonl", big[:-5]))  # truncated
    assert codes(r.problem for r in loaded.records) == ["invalid_json"]
    loaded = read_dataset(write(tmp_path, "e.jsonl", big))
    assert len(loaded.records[0].data["text"]) == 50_000_000


# --- streamed reading (server uploads) -------------------------------------------------------

from tuneforge.data.io import ReadLimits, stream_dataset  # noqa: E402
from tuneforge.data.validate import validate, validate_streamed  # noqa: E402

PC = {"prompt": "Q: hi\n\n###\n\n", "completion": " Hello END"}
STREAM_CASES = {
    "chat.jsonl": "\n".join(json.dumps(CHAT) for _ in range(3))
    + "\n"
    + "\n".join(
        json.dumps({"messages": [CHAT["messages"][0], {**CHAT["messages"][1], "content": f"n{i}"}]})
        for i in range(12)
    )
    + "\n",
    "broken.jsonl": "\n".join(
        [
            json.dumps(CHAT),
            "{not json",
            "",
            '"a string"',
            json.dumps({"messages": [{"role": "robot"}]}),
            "[1, 2]",
            '{"x": NaN}',
            "\ufeffx",
        ]
        * 4
    ),
    "bom.jsonl": "\ufeff" + json.dumps(CHAT) + "\r\n" + json.dumps(CHAT) + "\r\n",
    "pc.jsonl": "\n".join(json.dumps({**PC, "prompt": f"Q: {i} ###\n\n###\n\n"}) for i in range(20))
    + "\n",
    "pc_bad.jsonl": "\n".join(
        json.dumps({"prompt": f"p{i}", "completion": f"c{i}"}) for i in range(20)
    ),
    "unknown.jsonl": "\n".join(json.dumps({"question": i}) for i in range(12)),
    "empty.jsonl": "",
    "blank.jsonl": "\n\n  \n",
}


@pytest.mark.parametrize("name", sorted(STREAM_CASES))
def test_streamed_validation_reports_what_validate_reports(tmp_path, name):
    """The upload path (one record at a time) and `data check` (the whole file) agree."""
    path = write(tmp_path, name, STREAM_CASES[name])
    whole = validate(read_dataset(path)).to_dict()
    streamed = validate_streamed(stream_dataset(path)).to_dict()
    assert streamed == whole


def test_streamed_validation_of_non_utf8_and_binary_lines(tmp_path):
    path = write(
        tmp_path, "b.jsonl", b"\x00\x01bin\n" + json.dumps(CHAT).encode() + b"\n\xff\xfe{}\n"
    )
    assert (
        validate_streamed(stream_dataset(path)).to_dict() == validate(read_dataset(path)).to_dict()
    )


def test_streamed_report_samples_problems_but_counts_them_all(tmp_path):
    lines = [json.dumps(CHAT)] * 3 + ["{bad"] * 500 + [json.dumps({"messages": []})] * 100
    path = write(tmp_path, "many.jsonl", "\n".join(lines))
    report = validate_streamed(stream_dataset(path), keep=10)
    whole = validate(read_dataset(path))
    assert report.counts_by_code == whole.counts_by_code
    assert report.counts_by_severity == whole.counts_by_severity
    assert len(report.problems) <= 20
    assert [p.line for p in report.errors] == [p.line for p in whole.errors][:10]
    assert report.to_dict()["problems_total"] == len(whole.problems)


def test_streamed_top_level_array_and_pretty_printed_object_are_refused(tmp_path):
    array = write(
        tmp_path, "a.json", "[\n" + ",\n".join(json.dumps(CHAT) for _ in range(12)) + "\n]\n"
    )
    assert "top_level_array" in validate_streamed(stream_dataset(array)).counts_by_code
    pretty = write(tmp_path, "p.json", json.dumps(CHAT, indent=2))
    report = validate_streamed(stream_dataset(pretty))
    assert not report.ok and "pretty_printed_json" in report.counts_by_code


def test_streamed_overlong_line_is_skipped_unread(tmp_path):
    long_line = json.dumps({"messages": [{"role": "user", "content": "x" * 5000}]})
    path = write(
        tmp_path, "l.jsonl", "\n".join([json.dumps(CHAT), long_line, json.dumps(CHAT)]) + "\n"
    )
    records = list(stream_dataset(path, limits=ReadLimits(max_line_bytes=1000)).records())
    assert [r.line for r in records] == [1, 2, 3]
    assert records[0].ok and records[2].ok
    assert records[1].problem.code == "too_large" and records[1].problem.line == 2


def test_parquet_over_the_row_limit_is_refused_by_its_footer(tmp_path):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"prompt": ["p"] * 500, "completion": [" c"] * 500}), path)
    streamed = stream_dataset(path, limits=ReadLimits(max_rows=100))
    assert codes(streamed.file_problems) == ["too_large"]
    assert "500 rows" in streamed.file_problems[0].message
    assert list(streamed.records()) == []
    ok = validate_streamed(stream_dataset(path))  # within the default limits: read in batches
    assert ok.examples_read == 500 and ok.stats["duplicates"] == 499


def test_parquet_over_the_uncompressed_size_is_refused_by_its_footer(tmp_path):
    path = tmp_path / "big.parquet"
    texts = [
        os.urandom(512).hex() for _ in range(200)
    ]  # ~200 KB that neither compresses nor repeats
    pq.write_table(pa.table({"text": texts}), path, use_dictionary=False)
    streamed = stream_dataset(path, limits=ReadLimits(max_bytes=100_000))
    assert codes(streamed.file_problems) == ["too_large"]
    assert "uncompressed" in streamed.file_problems[0].message


def test_dictionary_encoded_parquet_bomb_stops_at_the_decoded_size(tmp_path):
    """A few KB on disk that decode to 1.2 GB: refused after `max_bytes` of decoded text,
    one row in memory at a time (it used to be decoded whole, then copied to Python)."""
    path = tmp_path / "bomb.parquet"
    value = "x" * (1 << 20)
    # Built encoded (one value, 1200 indices), so the test itself never holds 1.2 GB.
    prompts = pa.DictionaryArray.from_arrays(pa.array([0] * 1200, pa.int32()), pa.array([value]))
    table = pa.table({"prompt": prompts, "completion": [" c"] * 1200})
    pq.write_table(table, path, use_dictionary=True, compression="zstd")
    assert path.stat().st_size < 1 << 20
    streamed = stream_dataset(path, limits=ReadLimits(max_bytes=8 << 20))
    assert streamed.file_problems == []  # the footer sees only the small dictionary pages
    records = list(streamed.records())
    assert len(records) == 8
    assert records[-1].problem.code == "too_large" and records[-1].line == 8
    report = validate_streamed(stream_dataset(path, limits=ReadLimits(max_bytes=8 << 20)))
    assert not report.ok and report.counts_by_code["too_large"] == 1


def test_streamed_duplicates_spilled_to_disk_match_data_check(tmp_path, monkeypatch):
    """Past DUPLICATES_IN_MEMORY examples the hashes go to bucket files: same findings."""
    import tuneforge.data.dedupe as dedupe_module

    rows = [{"prompt": f"p{i % 37} ->", "completion": f" c{i % 37}"} for i in range(400)]
    path = write(tmp_path, "d.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    whole = validate(read_dataset(path)).to_dict()
    monkeypatch.setattr(dedupe_module, "DUPLICATES_IN_MEMORY", 50)
    spilled = validate_streamed(stream_dataset(path), keep=1000).to_dict()
    assert spilled == whole and whole["stats"]["duplicates"] == 400 - 37
    assert not list(Path(tempfile.gettempdir()).glob("tuneforge-duplicates-*"))


def test_streamed_parquet_reports_what_validate_reports(tmp_path):
    path = tmp_path / "t.parquet"
    prompts = [f"Q{i} ->" for i in range(30)] + [None, ""]
    completions = [f" A{i % 20}." for i in range(30)] + [" x", " y"]
    pq.write_table(pa.table({"prompt": prompts, "completion": completions}), path)
    assert (
        validate_streamed(stream_dataset(path)).to_dict() == validate(read_dataset(path)).to_dict()
    )
    broken = write(tmp_path, "b.jsonl", "{not json\n" + json.dumps(CHAT) + "\n")
    assert (
        validate_streamed(stream_dataset(broken)).to_dict()
        == validate(read_dataset(broken)).to_dict()
    )
