# Longer than ~500 lines: one reader per file kind (JSONL, JSON document, text, CSV, Parquet,
# streamed), all built on the same line decoding and reading problems.
"""Reading datasets: JSONL, JSON arrays, plain text, CSV / TSV and Parquet, into numbered records.

Every record keeps the number of the line (or row, or text block) it came from, its raw text
and, when it parsed, its JSON value; problems found while reading (invalid JSON, bytes that are
not UTF-8, a byte-order mark, a top-level array instead of JSON Lines, a binary file) are attached
to the record or to the file, never raised, so a checker can report all of them and a cleaner can
account for every line.

`read_dataset` holds the whole file (what `data check` and `data clean` need); `stream_dataset`
reads records one at a time for files of any size (server uploads), refusing a Parquet file by
its footer before decoding it.

Example:
    >>> loaded = read_dataset("train.jsonl")
    >>> loaded.format, len(loaded.records)
    (<Format.CHAT: 'chat'>, 1000)
"""

from __future__ import annotations

import contextlib
import csv
import gc
import io
import json
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import msgspec

BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
TABLE_SUFFIXES = {".csv", ".tsv", ".parquet"}
TEXT_SUFFIXES = {".txt", ".text", ".md"}
# How many parsed records decide the file's format when it is not forced.
DETECT_SAMPLE = 2000
# How much of the start of a file is sniffed for binary content.
SNIFF_BYTES = 8192
# Magic numbers of binary files people pick up by mistake, and what to call them.
MAGIC = {
    b"\x89PNG\r\n\x1a\n": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"%PDF-": "a PDF document",
    b"\x1f\x8b": "a gzip-compressed file (decompress it first)",
    b"PK\x03\x04": "a ZIP archive (an .xlsx workbook is one: export it as CSV)",
    b"BZh": "a bzip2-compressed file (decompress it first)",
    b"\xfd7zXZ\x00": "an xz-compressed file (decompress it first)",
    b"\x28\xb5\x2f\xfd": "a zstd-compressed file (decompress it first)",
    b"PAR1": "a Parquet file (name it .parquet)",
    b"SQLite format 3\x00": "an SQLite database",
    b"\x7fELF": "an executable",
}
# A JSON string escape that may encode half of a surrogate pair (\ud800 - \udfff).
_NON_SPACE = re.compile(r"\S")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class Format(str, Enum):
    """The dataset formats TuneForge reads."""

    CHAT = "chat"  # {"messages": [...], "tools"?: [...]}
    PROMPT_COMPLETION = "prompt_completion"  # {"prompt": ..., "completion": ...}
    PREFERENCE = "preference"  # {"input": {"messages"}, "preferred_output", "non_preferred_output"}
    TEXT = "text"  # {"text": ...}

    def __str__(self) -> str:
        return self.value


Severity = Literal["error", "warning"]


@dataclass(slots=True)
class Problem:
    """One thing wrong with a dataset: where, what, and how to fix it.

    `line` is 1-based (None for the whole file). `severity` "error" means training would fail or
    learn something wrong from this example; "warning" means it is suspicious or was fixable.
    """

    code: str
    message: str
    fix: str
    line: int | None = None
    severity: Severity = "error"
    column: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The problem as a JSON-ready dict."""
        return {
            "line": self.line,
            "column": self.column,
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "fix": self.fix,
        }


@dataclass(slots=True)
class Record:
    """One example as read: its line number, raw text, parsed value and any reading problem."""

    line: int
    raw: str
    data: Any = None
    problem: Problem | None = None

    @property
    def ok(self) -> bool:
        """True when the record was read and parsed without a problem."""
        return self.problem is None


@dataclass
class LoadedDataset:
    """Everything read from one file."""

    path: Path
    records: list[Record]
    format: Format | None
    file_problems: list[Problem] = field(default_factory=list)
    unit: str = "line"  # what `Record.line` counts: line, row or element

    def examples(self) -> Iterator[tuple[int, dict]]:
        """(line, example) for every record that parsed to a JSON object."""
        for r in self.records:
            if r.problem is None and isinstance(r.data, dict):
                yield r.line, r.data


class DatasetError(Exception):
    """A file that cannot be read at all (missing, a directory, unreadable, a broken Parquet...)."""


def detect_format(obj: Any) -> Format | None:
    """The format of one example, judged by its keys; None when no format matches."""
    if not isinstance(obj, dict):
        return None
    if "messages" in obj:
        return Format.CHAT
    if "input" in obj and (
        "preferred_output" in obj
        or "preferred_completion" in obj
        or "non_preferred_output" in obj
        or "non_preferred_completion" in obj
    ):
        return Format.PREFERENCE
    if "prompt" in obj or "completion" in obj:
        return Format.PROMPT_COMPLETION
    if "text" in obj:
        return Format.TEXT
    return None


def majority_format(values: Iterable[Any]) -> Format | None:
    """The most common format among the first `DETECT_SAMPLE` examples (None when none matches).

    Ties go to the format seen first, so the result does not depend on hash order.
    """
    counts: Counter[Format] = Counter()
    for i, obj in enumerate(values):
        if i >= DETECT_SAMPLE:
            break
        fmt = detect_format(obj)
        if fmt is not None:
            counts[fmt] += 1
    return counts.most_common(1)[0][0] if counts else None


def parse_format(value: Format | str) -> Format:
    """A `Format` from its name ("chat", "prompt_completion" or "prompt-completion", ...).

    Raises DatasetError naming the accepted formats for anything else.
    """
    if isinstance(value, Format):
        return value
    try:
        return Format(str(value).strip().lower().replace("-", "_"))
    except ValueError:
        names = ", ".join(f.value for f in Format)
        raise DatasetError(f"unknown format {value!r}; choose one of {names}") from None


def read_dataset(
    path: str | Path,
    format: Format | str | None = None,
    *,
    prompt_col: str | None = None,
    completion_col: str | None = None,
    text_col: str | None = None,
) -> LoadedDataset:
    """Read a dataset file into numbered records, detecting the format unless one is given.

    JSONL (any other suffix, `.json` included) is read line by line, or as one JSON array;
    `.txt` / `.text` / `.md` as blank-line separated text blocks; `.csv` / `.tsv` / `.parquet` as
    tables whose columns map to prompt / completion (or text).

    Raises:
        DatasetError: only when the file cannot be opened as a dataset at all (missing, a
            directory or other non-regular file, unreadable, an unknown `format`, a Parquet file
            pyarrow cannot read). Everything else is reported as a `Problem`.
    """
    path = Path(path)
    forced = parse_format(format) if format is not None else None
    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    if path.is_dir():
        raise DatasetError(f"{path}: is a directory, expected a dataset file")
    if not path.is_file():
        raise DatasetError(f"{path}: not a regular file (a device, pipe or socket)")
    suffix = path.suffix.lower()
    try:
        with paused_gc():
            if suffix in TABLE_SUFFIXES:
                loaded = _read_table(path, prompt_col, completion_col, text_col)
            elif suffix in TEXT_SUFFIXES:
                loaded = _read_text_blocks(path)
            else:
                loaded = _read_jsonl(path)
    except MemoryError:
        raise DatasetError(f"{path}: too large to read into memory") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the file ({e.strerror or e})") from e
    if forced is not None:
        loaded.format = forced
    elif loaded.format is None:
        loaded.format = majority_format(r.data for r in loaded.records if r.problem is None)
    return loaded


# --- shared pieces --------------------------------------------------------------------------


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many small objects.

    Parsed JSON holds no reference cycles, but every few hundred new dicts trigger a collection
    that walks all the objects built so far: reading a large file spends more time in the
    collector than in the parser. Reference counting still frees everything as usual.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            # Hand what was built to the oldest generation unscanned: re-enabled as is, the
            # collector's next pass would walk every one of those objects at once (a sixth of
            # a `data check`). Cycles among them are still found by the next full collection.
            gc.freeze()
            gc.unfreeze()
            gc.enable()


def _sniff(data: bytes) -> Problem | None:
    """A file-level problem when the bytes are plainly not a UTF-8 text file."""
    head = data[:SNIFF_BYTES]
    if head.startswith(UTF16_BOMS):
        return Problem(
            code="utf16",
            message="the file is UTF-16 encoded, not UTF-8",
            fix="re-save the file as UTF-8 (e.g. iconv -f utf-16 -t utf-8)",
        )
    for magic, what in MAGIC.items():
        if head.startswith(magic):
            return Problem(
                code="binary_file",
                message=f"this is {what}, not a text dataset",
                fix="pass a JSONL, TXT, CSV, TSV or Parquet dataset file",
            )
    if b"\x00" in head:
        return Problem(
            code="binary_file",
            message="the file contains NUL bytes: it is binary (or UTF-16/32), not a text dataset",
            fix="pass a UTF-8 JSONL, TXT, CSV or TSV file, or a Parquet file",
        )
    return None


def _bom_problem() -> Problem:
    return Problem(
        code="bom",
        message="the file starts with a UTF-8 byte-order mark",
        fix="save without BOM (`tuneforge data clean` removes it)",
        line=1,
        severity="warning",
    )


def head_problems(head: bytes, report_bom: bool = True) -> tuple[list[Problem], int]:
    """What the first bytes of a file say about it (binary, UTF-16, a UTF-8 BOM), and how
    many bytes of BOM to skip before the text starts."""
    problems: list[Problem] = []
    sniffed = _sniff(head)
    if sniffed is not None:
        problems.append(sniffed)
    if not head.startswith(BOM):
        return problems, 0
    if report_bom:
        problems.append(_bom_problem())
    return problems, len(BOM)


def _empty_problem(what: str = "examples") -> Problem:
    return Problem(
        code="empty_file",
        message=f"the file has no {what}",
        fix="add examples, one JSON object per line",
    )


def _non_utf8(line: int, column: int | None) -> Problem:
    where = f" at byte {column} of the line" if column is not None else ""
    return Problem(
        code="non_utf8",
        message=f"bytes that are not UTF-8{where}",
        fix="re-save the file as UTF-8 (e.g. iconv -f cp1252 -t utf-8)",
        line=line,
        column=column,
    )


def _decode(raw: bytes, line: int) -> tuple[str, Problem | None]:
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as e:
        return raw.decode("utf-8", errors="replace"), _non_utf8(line, e.start + 1)


def _bad_utf8_lines(data: bytes) -> set[int]:
    """1-based numbers of the lines (split on \\n) holding bytes that are not UTF-8."""
    bad = set()
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            bad.add(number)
    return bad


class _NonStandardNumber(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NonStandardNumber(name)


# Strict JSON: NaN / Infinity are not JSON, and other readers (and OpenAI) reject them.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_FAST_DECODE = msgspec.json.Decoder().decode


def _invalid_json(message: str, line: int, column: int | None = None) -> Problem:
    return Problem(
        code="invalid_json",
        message=message,
        fix="make each line one complete JSON object (check quotes, commas and brackets)",
        line=line,
        column=column,
    )


def _parse(text: str, line: int) -> tuple[Any, Problem | None]:
    try:
        # msgspec parses valid JSON three times faster than `json`, to the same values (big
        # integers included); what it refuses (NaN, lone surrogates, bad JSON) is read again by
        # `json`, whose messages and leniency the problems are written for.
        return _FAST_DECODE(text), None
    except (msgspec.DecodeError, RecursionError):
        pass
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError as e:
        return None, _invalid_json(f"invalid JSON: {e.msg} (column {e.colno})", line, e.colno)
    except _NonStandardNumber as e:
        return None, _invalid_json(f"invalid JSON: {e} is not a JSON number", line)
    except RecursionError:
        return None, _invalid_json("invalid JSON: nested too deeply", line)
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):
        problem = _surrogate_problem(value, line)
        if problem is not None:
            return None, problem
    return value, None


def _surrogate_problem(value: Any, line: int) -> Problem | None:
    """A problem when a parsed value holds a lone surrogate, which no UTF-8 file can store."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return Problem(
            code="invalid_unicode",
            message="a \\uXXXX escape encodes half of a surrogate pair, which is not a character",
            fix="escape the character as a complete pair, or remove it",
            line=line,
        )
    except (ValueError, RecursionError):  # nesting too deep to re-encode: leave it to the checks
        return None
    return None


def _to_json(value: Any) -> str:
    """`value` as one line of JSON text; values JSON cannot hold (dates, bytes) become strings."""
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (ValueError, RecursionError):  # NaN in a table cell, or nesting too deep
        return json.dumps(value, ensure_ascii=False, default=str, allow_nan=True)


def _read_raw(path: Path, report_bom: bool = True) -> tuple[bytes, list[Problem]]:
    """The file's bytes without a UTF-8 BOM, and what was noticed on the way (binary, BOM)."""
    data = path.read_bytes()
    problems, start = head_problems(data, report_bom)
    return data[start:], problems


def _line_record(
    number: int,
    text: str,
    problem: Problem | None,
    parse: Callable[[str, int], tuple[Any, Problem | None]],
) -> Record:
    """One JSONL line's record (whole-file and streamed reading alike): a blank line is a
    warning, any other line is parsed unless decoding it already failed."""
    if problem is None and (not text or text.isspace()):
        problem = Problem(
            code="blank_line",
            message="blank line",
            fix="remove blank lines between examples",
            line=number,
            severity="warning",
        )
    value = None
    if problem is None:
        value, problem = parse(text, number)
    return Record(number, text, value, problem)


def _decode_lenient(data: bytes) -> tuple[str, set[int]]:
    """UTF-8 text (invalid bytes replaced) and the numbers of the lines that held invalid bytes."""
    try:
        return data.decode("utf-8"), set()
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace"), _bad_utf8_lines(data)


# --- JSON Lines -----------------------------------------------------------------------------


def _read_jsonl(path: Path) -> LoadedDataset:
    data, problems = _read_raw(path)
    if not data or data.isspace():
        problems.append(_empty_problem())
        return LoadedDataset(path, [], None, problems)

    try:
        text: str | None = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    whole = _whole_document(data, text)
    if whole is not None:
        return _read_whole_document(path, whole, problems)

    return LoadedDataset(path, jsonl_lines(data, text), None, problems)


def jsonl_lines(data: bytes, text: str | None = None) -> list[Record]:
    """The records of JSON Lines bytes (a whole file, or a run of whole lines of one), numbered
    from 1; `text`: `data` decoded, when the caller has it.

    Bytes that are not UTF-8 make a `non_utf8` problem on their line only.
    """
    if text is None:
        with contextlib.suppress(UnicodeDecodeError):
            text = data.decode("utf-8")
    records: list[Record] = []
    append = records.append
    lines: list[str] | list[bytes] = text.split("\n") if text is not None else data.split(b"\n")
    if lines[-1] in ("", b""):
        lines.pop()  # the final newline ends the last line; it does not start a new one
    parse = _parse
    if text is not None:
        # Most lines: a JSON value msgspec reads, without the calls of the general path.
        decode = _FAST_DECODE
        for number, raw in enumerate(lines, start=1):
            if raw[-1:] == "\r":
                raw = raw[:-1]
            if raw and not raw.isspace():
                try:
                    append(Record(number, raw, decode(raw)))  # type: ignore[arg-type]
                    continue
                except (msgspec.DecodeError, RecursionError):
                    pass
            append(_line_record(number, raw, None, parse))  # type: ignore[arg-type]
        return records
    for number, raw in enumerate(lines, start=1):
        append(line_record(number, raw))  # type: ignore[arg-type]
    return records


def line_record(number: int, raw: bytes) -> Record:
    """The record of line `number` of a JSON Lines file, from its bytes (without the "\\n"), as
    `jsonl_lines` reads it."""
    if raw[-1:] == b"\r":
        raw = raw[:-1]
    text, problem = _decode(raw, number)
    return _line_record(number, text, problem, _parse)


def _whole_document(data: bytes, text: str | None) -> list | dict | None:
    """The file as one JSON array, or one object spread over several lines; None for JSONL.

    A file whose first line parses on its own is JSON Lines, so large JSONL files are never
    parsed twice.
    """
    if text is None:
        return None
    stripped = text.lstrip()
    first = stripped[:1]
    if first == "{":
        newline = stripped.find("\n")
        if newline < 0 or _NON_SPACE.search(stripped, newline) is None:
            return None  # a single line: JSON Lines with one example
        try:
            _DECODER.decode(stripped[:newline])
            return None
        except (ValueError, RecursionError):
            pass
    elif first != "[":
        return None
    try:
        whole = _DECODER.decode(stripped)
    except (ValueError, RecursionError):
        return None
    if (
        first == "["
        and "\n" not in stripped.rstrip()
        and not (whole and all(isinstance(v, dict) for v in whole))
    ):
        return None  # a one-line array that does not hold examples: report it as a bad line
    return whole if isinstance(whole, list | dict) else None


def _read_whole_document(path: Path, whole: list | dict, problems: list[Problem]) -> LoadedDataset:
    if isinstance(whole, dict):
        problems.append(
            Problem(
                code="pretty_printed_json",
                message="the file is one JSON object spread over several lines, not JSON Lines",
                fix="write each example as one JSON object on a single line",
            )
        )
        values, unit = [whole], "line"
    else:
        problems.append(
            Problem(
                code="top_level_array",
                message="the file is one JSON array, not JSON Lines",
                fix="write one JSON object per line (`tuneforge data clean` converts it)",
            )
        )
        values, unit = whole, "element"
    records = []
    for i, v in enumerate(values, start=1):
        raw = _to_json(v)
        problem = _surrogate_problem(v, i)
        records.append(Record(i, raw, None if problem else v, problem))
    if not records:
        problems.append(_empty_problem())
    return LoadedDataset(path, records, None, problems, unit=unit)


# --- plain text -----------------------------------------------------------------------------


def _read_text_blocks(path: Path) -> LoadedDataset:
    """Blank-line separated blocks; each record's line is the block's first line in the file."""
    data, problems = _read_raw(path)
    text, bad_lines = _decode_lenient(data)
    records: list[Record] = []
    block: list[str] = []
    start = 0
    # Split on "\n" only (not str.splitlines, which also breaks on \x0b, \x1c, \u2028, ...), so
    # numbers match the file's lines as editors count them.
    for number, line in enumerate(text.split("\n"), start=1):
        if line.endswith("\r"):
            line = line[:-1]
        if line and not line.isspace():
            if not block:
                start = number
            block.append(line)
        elif block:
            records.append(_text_record(start, block, bad_lines))
            block = []
    if block:
        records.append(_text_record(start, block, bad_lines))
    if not records:
        problems.append(_empty_problem("text"))
    return LoadedDataset(path, records, Format.TEXT, problems, unit="line")


def _text_record(start: int, block: list[str], bad_lines: set[int]) -> Record:
    text = "\n".join(block)
    value = {"text": text}
    problem = None
    for number in range(start, start + len(block)):
        if number in bad_lines:
            problem = _non_utf8(number, None)
            break
    return Record(start, _to_json(value), None if problem else value, problem)


# --- tables ---------------------------------------------------------------------------------


def _read_table(
    path: Path, prompt_col: str | None, completion_col: str | None, text_col: str | None
) -> LoadedDataset:
    if path.suffix.lower() == ".parquet":
        return _read_parquet(path, prompt_col, completion_col, text_col)
    return _read_csv(path, prompt_col, completion_col, text_col)


def _read_parquet(
    path: Path, prompt_col: str | None, completion_col: str | None, text_col: str | None
) -> LoadedDataset:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises many types for a broken file
        raise DatasetError(f"{path}: not a readable Parquet file ({e})") from e
    mapping = _column_mapping(list(table.column_names), prompt_col, completion_col, text_col)
    if isinstance(mapping, Problem):
        return LoadedDataset(path, [], None, [mapping], unit="row")
    fmt = Format.TEXT if "text" in mapping else Format.PROMPT_COMPLETION
    columns = {key: table.column(col).to_pylist() for key, col in mapping.items()}
    records = []
    for i in range(table.num_rows):
        value = {key: values[i] for key, values in columns.items()}
        records.append(Record(i + 1, _to_json(value), value))  # rows are counted from 1
    problems = [] if records else [_empty_problem("rows")]
    return LoadedDataset(path, records, fmt, problems, unit="row")


def _read_csv(
    path: Path, prompt_col: str | None, completion_col: str | None, text_col: str | None
) -> LoadedDataset:
    # A BOM is what spreadsheet programs write; it is not worth a warning in a table.
    data, problems = _read_raw(path, report_bom=False)
    text, bad_lines = _decode_lenient(data)

    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    # (first line, last line, fields) per row; a quoted field may span several lines.
    rows: list[tuple[int, int, list[str]]] = []
    limit = csv.field_size_limit()
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # one long example is not an error
    try:
        previous = 0
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                problems.append(
                    Problem(
                        code="invalid_csv",
                        message=f"the table cannot be read past this line: {e}",
                        fix="check the quoting: a field holding the delimiter, a quote or a "
                        "newline must be wrapped in double quotes",
                        line=previous + 1,
                    )
                )
                break
            if fields:  # the reader returns [] for a blank line
                rows.append((previous + 1, reader.line_num, fields))
            previous = reader.line_num
    finally:
        csv.field_size_limit(limit)

    if not rows:
        problems.append(_empty_problem("rows"))
        return LoadedDataset(path, [], None, problems)
    header = rows[0][2]
    mapping = _column_mapping(header, prompt_col, completion_col, text_col)
    if isinstance(mapping, Problem):
        mapping.line = rows[0][0]
        return LoadedDataset(path, [], None, [*problems, mapping])
    fmt = Format.TEXT if "text" in mapping else Format.PROMPT_COMPLETION
    index = {key: header.index(col) for key, col in mapping.items()}
    records = []
    for first, last, fields in rows[1:]:
        value = {key: fields[i] if i < len(fields) else None for key, i in index.items()}
        problem = None
        if len(fields) != len(header):
            problem = Problem(
                code="csv_field_count",
                message=f"the row has {len(fields)} fields but the header has {len(header)}",
                fix="quote fields that contain the delimiter, a quote or a newline",
                line=first,
            )
        elif bad_lines:
            bad = next((n for n in range(first, last + 1) if n in bad_lines), None)
            if bad is not None:
                problem = _non_utf8(bad, None)
        records.append(Record(first, _to_json(value), None if problem else value, problem))
    if not records:
        problems.append(_empty_problem("rows"))
    return LoadedDataset(path, records, fmt, problems, unit="line")


def _column_mapping(
    columns: list[str], prompt_col: str | None, completion_col: str | None, text_col: str | None
) -> dict[str, str] | Problem:
    """Which table column becomes which field; a Problem naming the columns when none fits."""
    if text_col or (
        not prompt_col and not completion_col and "text" in columns and "prompt" not in columns
    ):
        wanted = {"text": text_col or "text"}
    else:
        wanted = {"prompt": prompt_col or "prompt", "completion": completion_col or "completion"}
    missing = [col for col in wanted.values() if col not in columns]
    if missing:
        shown = ", ".join(repr(c) for c in columns[:20]) or "no columns"
        return Problem(
            code="missing_columns",
            message=f"column(s) {', '.join(map(repr, missing))} not found; the table has: {shown}",
            fix="name the columns with --prompt-col / --completion-col (or --text-col)",
        )
    return wanted


# --- streaming (bounded memory) -------------------------------------------------------------


@dataclass(frozen=True)
class ReadLimits:
    """What a streamed read accepts before refusing the file (server uploads).

    A refusal is a file-level `Problem` (`too_large`), so the upload ends `error` with a
    reason instead of the process allocating whatever the file asks for.
    """

    max_rows: int = 10_000_000  # Parquet rows, by the footer, before anything is decoded
    max_bytes: int = 512 * 1024 * 1024  # Parquet: uncompressed (footer) and decoded text
    max_line_bytes: int = 16 * 1024 * 1024  # one JSONL line; the parser holds it whole
    # CSV / TSV / text blocks are read whole (a quoted CSV field may span lines), so only
    # files this small are accepted in those formats; JSON Lines has no such cap.
    max_whole_file_bytes: int = 8 * 1024 * 1024


# A streamed pass detects the format from at most this much of the file (and DETECT_SAMPLE
# records), so a file of a few huge lines is not parsed twice.
DETECT_BYTES = 32 * 1024 * 1024
# Rows decoded at a time from a Parquet file: memory is one batch, not the table.
PARQUET_BATCH_ROWS = 1024


@dataclass
class StreamedDataset:
    """A dataset read lazily: `records()` reads the file again on every call.

    `file_problems` holds what was seen up front (a binary file, a BOM, a Parquet footer over
    the limits); nothing else about the file is kept in memory.
    """

    path: Path
    format: Format | None
    file_problems: list[Problem]
    unit: str
    _records: Any = None  # () -> Iterator[Record]

    def records(self) -> Iterator[Record]:
        return iter(()) if self._records is None else self._records()


def stream_dataset(
    path: str | Path,
    format: Format | str | None = None,
    *,
    limits: ReadLimits = ReadLimits(),  # frozen: one shared default is safe
) -> StreamedDataset:
    """Open a dataset for a bounded-memory pass: records are read one at a time.

    JSON Lines is read line by line (a line over `limits.max_line_bytes` is a `line_too_long`
    problem, skipped without being held); Parquet is refused by its footer (rows,
    uncompressed bytes) before anything is decoded, then read in row batches; other formats
    (CSV / TSV, text blocks) are read as `read_dataset` reads them, once each file fits in
    `limits.max_bytes`. Numbers, messages and codes of per-line problems are those of
    `read_dataset`; a top-level JSON array or a pretty-printed object is reported, not parsed.

    Raises:
        DatasetError: as `read_dataset`.
    """
    path = Path(path)
    forced = parse_format(format) if format is not None else None
    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    if not path.is_file():
        raise DatasetError(f"{path}: not a regular file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        streamed = _stream_parquet(path, limits)
    elif suffix in TABLE_SUFFIXES or suffix in TEXT_SUFFIXES:
        streamed = _stream_small(path, limits)
    else:
        streamed = _stream_jsonl(path, limits)
    if forced is not None:
        streamed.format = forced
    elif streamed.format is None:
        streamed.format = _detect_streamed(streamed)
    return streamed


def _detect_streamed(streamed: StreamedDataset) -> Format | None:
    """The majority format of the first `DETECT_SAMPLE` parsed records (a short first pass)."""
    counts: Counter[Format] = Counter()
    seen = read = 0
    for record in streamed.records():
        if seen >= DETECT_SAMPLE or read > DETECT_BYTES:
            break
        read += len(record.raw)
        if record.problem is not None:
            continue
        seen += 1
        fmt = detect_format(record.data)
        if fmt is not None:
            counts[fmt] += 1
    return counts.most_common(1)[0][0] if counts else None


def _too_large(message: str) -> Problem:
    return Problem(
        code="too_large",
        message=message,
        fix="split the dataset into smaller files, or convert it to JSON Lines",
    )


def _stream_jsonl(path: Path, limits: ReadLimits) -> StreamedDataset:
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    problems, start = head_problems(head)
    stripped = head[start:].lstrip()
    if not stripped and path.stat().st_size <= SNIFF_BYTES:
        problems.append(_empty_problem())
        return StreamedDataset(path, None, problems, "line")
    whole = _streamed_document(path, stripped[:1])
    if whole is not None:
        problems.append(whole)
        return StreamedDataset(path, None, problems, "line")
    return StreamedDataset(
        path, None, problems, "line", lambda: _jsonl_records(path, limits.max_line_bytes)
    )


def _streamed_document(path: Path, first: bytes) -> Problem | None:
    """The problem of a file that is one JSON document rather than JSON Lines, if it is one.

    Judged by the first line alone (a JSON array, or an object whose first line does not
    parse), so the file is never read whole.
    """
    if first not in (b"[", b"{"):
        return None
    first_line = next(_jsonl_records(path, 1 << 20, stop=1), None)
    if first_line is None or first_line.problem is None:
        return None  # the first line is an example: JSON Lines
    if first == b"{" and first_line.raw.strip() != "{":
        return None  # a broken first example, not the opening brace of a pretty-printed one
    if first == b"[":
        return Problem(
            code="top_level_array",
            message="the file is one JSON array, not JSON Lines",
            fix="write one JSON object per line (`tuneforge data clean` converts it)",
        )
    return Problem(
        code="pretty_printed_json",
        message="the file is one JSON object spread over several lines, not JSON Lines",
        fix="write each example as one JSON object on a single line",
    )


def _jsonl_records(path: Path, max_line_bytes: int, stop: int | None = None) -> Iterator[Record]:
    """Records of a JSON Lines file, one line in memory at a time (as `_read_jsonl` numbers them)."""
    with open(path, "rb") as f:
        number = 0
        while stop is None or number < stop:
            raw = f.readline(max_line_bytes + 1)
            if not raw:
                return
            number += 1
            if number == 1 and raw.startswith(BOM):
                raw = raw[len(BOM) :]
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):  # skip the rest of the line unread
                    raw = f.readline(1 << 20)
                problem = _too_large(f"the line is longer than {max_line_bytes:,} bytes")
                problem.line = number
                yield Record(number, "", None, problem)
                continue
            raw = raw.removesuffix(b"\n").removesuffix(b"\r")
            text, problem = _decode(raw, number)
            yield _line_record(number, text, problem, _parse)


def _stream_small(path: Path, limits: ReadLimits) -> StreamedDataset:
    """CSV / TSV / text blocks: read whole (as `read_dataset` does) when under the byte cap."""
    size = path.stat().st_size
    if size > limits.max_whole_file_bytes:
        problem = _too_large(
            f"{path.suffix} files are read whole; this one is {size:,} bytes, more than "
            f"{limits.max_whole_file_bytes:,} (JSON Lines files may be larger)"
        )
        return StreamedDataset(path, None, [problem], "line")
    loaded = read_dataset(path)
    return StreamedDataset(
        path,
        loaded.format,
        loaded.file_problems,
        loaded.unit,
        lambda: iter(read_dataset(path).records),
    )


def _stream_parquet(path: Path, limits: ReadLimits) -> StreamedDataset:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        meta, schema = parquet.metadata, parquet.schema_arrow
    except Exception as e:  # pyarrow raises many types for a broken file
        raise DatasetError(f"{path}: not a readable Parquet file ({e})") from e
    mapping = _column_mapping(list(schema.names), None, None, None)
    if isinstance(mapping, Problem):
        return StreamedDataset(path, None, [mapping], "row")
    fmt = Format.TEXT if "text" in mapping else Format.PROMPT_COMPLETION
    wanted = set(mapping.values())
    # The footer's uncompressed size of the columns read: what the pages hold once
    # decompressed. (Dictionary pages expand further when decoded: counted row by row below.)
    uncompressed = sum(
        rg.column(i).total_uncompressed_size
        for rg in (meta.row_group(g) for g in range(meta.num_row_groups))
        for i in range(rg.num_columns)
        if rg.column(i).path_in_schema.split(".")[0] in wanted
    )
    if meta.num_rows > limits.max_rows:
        problem = _too_large(f"the table has {meta.num_rows:,} rows, more than {limits.max_rows:,}")
        return StreamedDataset(path, fmt, [problem], "row")
    if uncompressed > limits.max_bytes:
        problem = _too_large(
            f"the table's columns hold {uncompressed:,} bytes uncompressed, more than "
            f"{limits.max_bytes:,}"
        )
        return StreamedDataset(path, fmt, [problem], "row")
    if meta.num_rows == 0:
        return StreamedDataset(path, fmt, [_empty_problem("rows")], "row")
    import pyarrow as pa

    # Text columns are read dictionary-encoded, as stored: a repeated value is decoded once
    # per row, never a whole batch of copies at once.
    texts = [
        col
        for col in dict.fromkeys(mapping.values())
        if pa.types.is_string(t := schema.field(col).type)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
    ]
    return StreamedDataset(
        path, fmt, [], "row", lambda: _parquet_records(path, mapping, texts, limits.max_bytes)
    )


def _parquet_records(
    path: Path, mapping: dict[str, str], texts: list[str], max_bytes: int
) -> Iterator[Record]:
    """Rows as records, `PARQUET_BATCH_ROWS` at a time, until `max_bytes` of decoded text."""
    import pyarrow.parquet as pq

    columns = list(dict.fromkeys(mapping.values()))
    reader = pq.ParquetFile(path, read_dictionary=texts)
    number = decoded = 0
    for batch in reader.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
        arrays = {
            key: batch.column(batch.schema.get_field_index(col)) for key, col in mapping.items()
        }
        for i in range(batch.num_rows):
            number += 1
            value = {key: arr[i].as_py() for key, arr in arrays.items()}
            raw = _to_json(value)
            decoded += len(raw)
            if decoded > max_bytes:
                problem = _too_large(
                    f"the table decodes to more than {max_bytes:,} bytes of text (it is "
                    "dictionary-encoded: a few distinct values repeated many times)"
                )
                problem.line = number
                yield Record(number, "", None, problem)
                return
            yield Record(number, raw, value)
