"""Validating datasets: every problem with its line number, a category and a one-line fix.

`validate_example` checks one parsed example against its format (OpenAI chat, prompt-completion,
preference or text) and is what the cleaner and the upload API reuse; `is_valid_example` answers
the same question with a yes or no. `validate` runs them over a whole `LoadedDataset` and adds the
checks that need the whole file: too few examples, exact duplicates, examples longer than the
model's context, and the prompt / completion conventions of OpenAI's legacy `prepare_data` tool.
`validate_streamed` runs the same checks over a `StreamedDataset` in bounded memory (uploads).

Severity: an "error" makes the file unfit for training. OpenAI rejects a whole file for one bad
line and TuneForge keeps the same rule, so a file is either fit or not; `tuneforge data clean`
fixes or drops the bad lines. A "warning" is suspicious, or advice, and never stops training.
`Report.ok` is True exactly when there is no error.

The per-example checks live in `checks` / `check_chat`, the problem catalogue in `problems`, token
lengths in `lengths` (exact counts come in as a `Measure` from `tuneforge.tokenize.measure`),
duplicates in `dedupe` (the same `content_key` as `data clean` and `data split`), the
prompt-completion advice in `advice`, and printing in `printing`.

Example:
    >>> report = validate(read_dataset("train.jsonl"))
    >>> report.ok, report.counts_by_code
    (False, {'missing_content': 2, 'duplicate_example': 1})
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from tuneforge.data.advice import PromptCompletionAdvice, prompt_completion_advice
from tuneforge.data.check_chat import HAS_SYSTEM, HAS_USER, PLAIN_CHAT, plain_chat_bits
from tuneforge.data.checks import CHECKERS, Checker
from tuneforge.data.dedupe import ExactDuplicates, content_key, plain_chat_key
from tuneforge.data.io import (
    Format,
    LoadedDataset,
    Problem,
    Record,
    StreamedDataset,
    jsonl_lines,
    line_record,
    paused_gc,
    read_dataset,
)
from tuneforge.data.lengths import Measure, token_lengths
from tuneforge.data.parallel import Chunk, plan_jsonl, read_chunk, run_chunks
from tuneforge.data.problems import MIN_EXAMPLES, RECOMMENDED_EXAMPLES, kind_of, problem
from tuneforge.data.report import ProblemSample, Report


def validate(
    loaded: LoadedDataset,
    *,
    measure: Measure | None = None,
    max_tokens: int | None = None,
    min_examples: int = MIN_EXAMPLES,
) -> Report:
    """Check every example of `loaded` and the dataset as a whole.

    Args:
        loaded: what `read_dataset` returned; its reading problems are part of the report.
        measure: exact token counts (`tuneforge.tokenize.measure.token_measure`); when given,
            each valid example is measured as training encodes it. Without it, lengths are
            estimated from characters, and only when `max_tokens` is given.
        max_tokens: the context length to check against (None: no limit).
        min_examples: fewer valid examples than this is an error.

    Example:
        >>> report = validate(read_dataset("train.jsonl"), max_tokens=2048)
        >>> report.ok
        True
    """
    with paused_gc():
        return _validate(loaded, measure, max_tokens, min_examples)


@dataclass
class _Counts:
    """What one pass over the records counts (the report's numbers)."""

    records: int = 0
    read: int = 0  # blank lines are records, not examples read
    valid: int = 0
    no_system: int = 0
    no_user: int = 0

    def add_valid(self, seen: int) -> None:
        """Count a valid example with the `HAS_*` bits of the roles `seen` in it."""
        self.valid += 1
        if not seen & HAS_SYSTEM:
            self.no_system += 1
        if not seen & HAS_USER:
            self.no_user += 1


def _checked(
    records: Iterable[Record],
    check: Checker | None,
    add: Callable[[Problem], None],
    counts: _Counts,
) -> Iterator[Record]:
    """Check each record, `add` every problem, and yield the records with no error."""
    for record in records:
        counts.records += 1
        found = record.problem
        if found is not None:
            add(found)
            if found.code != "blank_line":
                counts.read += 1
            continue
        counts.read += 1
        obj, line = record.data, record.line
        if type(obj) is not dict:
            add(problem("data_type", f"the example is {kind_of(obj)}, not a JSON object", line))
            continue
        if check is None:
            continue
        out: list[Problem] = []
        seen = check(obj, line, out)
        if out:
            for p in out:
                add(p)
            if any(p.severity == "error" for p in out):
                continue
        counts.add_valid(seen)
        yield record


def _too_few(valid: int, min_examples: int) -> Problem | None:
    if valid < min_examples:
        return problem(
            "too_few_examples",
            f"{valid} valid example(s); training needs at least {min_examples}",
        )
    if valid < RECOMMENDED_EXAMPLES:
        return problem("few_examples", f"only {valid} valid examples")
    return None


def _validate(
    loaded: LoadedDataset, measure: Measure | None, max_tokens: int | None, min_examples: int
) -> Report:
    fmt = loaded.format
    problems: list[Problem] = list(loaded.file_problems)
    counts = _Counts()
    valid_examples: list[tuple[int, dict]] = []
    first_seen: dict[bytes, int] = {}
    check = CHECKERS.get(fmt) if fmt is not None else None  # type: ignore[arg-type]
    if check is None and any(r.problem is None and type(r.data) is dict for r in loaded.records):
        problems.append(
            problem("unknown_format", "no example matches a known format, so none was checked")
        )
    add = problems.append
    for record in _checked(loaded.records, check, add, counts):
        line = record.line
        valid_examples.append((line, record.data))
        first = first_seen.setdefault(content_key(record.data), line)
        if first != line:
            add(problem("duplicate_example", f"the same example as line {first}", line))
    return _report(
        loaded.path,
        fmt,
        loaded.unit,
        bool(loaded.records),
        problems,
        counts,
        len(first_seen),
        valid_examples,
        measure,
        max_tokens,
        min_examples,
    )


def _report(
    path: Path,
    fmt: Format | None,
    unit: str,
    any_records: bool,
    problems: list[Problem],
    counts: _Counts,
    unique: int,
    valid_examples: list[tuple[int, dict]],
    measure: Measure | None,
    max_tokens: int | None,
    min_examples: int,
) -> Report:
    """The whole-file checks after the per-line ones, and the report (`problems` in line order).

    `valid_examples` are needed for prompt-completion advice and token lengths only.
    """
    valid = counts.valid
    stats: dict[str, Any] = {}
    if fmt in (Format.CHAT, Format.PREFERENCE):
        stats["examples_without_system"] = counts.no_system
        stats["examples_without_user"] = counts.no_user
    stats["duplicates"] = valid - unique

    if fmt is Format.PROMPT_COMPLETION and len(valid_examples) >= 2:
        problems += prompt_completion_advice([obj for _, obj in valid_examples])
    tokens = None
    if measure is not None or max_tokens is not None:
        tokens, failed = token_lengths(valid_examples, fmt, measure, max_tokens, problems)
        valid -= failed

    if any_records or not any(p.code == "empty_file" for p in problems):
        few = _too_few(valid, min_examples)
        if few is not None:
            problems.append(few)

    problems.sort(key=lambda p: (p.line is not None, p.line or 0))
    return Report(
        path=str(path),
        format=fmt,
        unit=unit,
        examples_read=counts.read,
        examples_valid=valid,
        problems=problems,
        stats=stats,
        tokens=tokens,
    )


# --- a large JSON Lines file on several cores -------------------------------------------------


def check_file(
    path: str | Path,
    format: Format | str | None = None,
    *,
    prompt_col: str | None = None,
    completion_col: str | None = None,
    text_col: str | None = None,
    measure: Measure | None = None,
    max_tokens: int | None = None,
    min_examples: int = MIN_EXAMPLES,
    workers: int | None = None,
) -> Report:
    """`validate(read_dataset(path, format, ...), ...)`, on several cores for a large file.

    A JSON Lines file of at least `parallel.MIN_PARALLEL_BYTES` is split into runs of lines
    that worker processes parse and check; the report is the same, problem for problem.
    `workers`: processes to use (None: one per CPU for a large file; 1: in-process). Token
    lengths (`measure`, `max_tokens`), prompt-completion advice and files that are not plain
    JSON Lines are checked in-process.

    Raises:
        DatasetError: as `read_dataset`.
    """
    planned = None
    if measure is None and max_tokens is None:
        planned = plan_jsonl(path, format, workers)
    if planned is None or planned[0].format is Format.PROMPT_COMPLETION:
        loaded = read_dataset(
            path, format, prompt_col=prompt_col, completion_col=completion_col, text_col=text_col
        )
        return validate(loaded, measure=measure, max_tokens=max_tokens, min_examples=min_examples)
    plan, n = planned
    fmt = plan.format
    problems = list(plan.file_problems)
    add = problems.append
    counts = _Counts()
    duplicates = ExactDuplicates()
    base = 0  # lines before the chunk
    with paused_gc():
        tasks = [(chunk, fmt) for chunk in plan.chunks]
        for lines, chunk_counts, found, keys, valid_lines in run_chunks(_check_chunk, tasks, n):
            for name in ("records", "read", "valid", "no_system", "no_user"):
                setattr(counts, name, getattr(counts, name) + getattr(chunk_counts, name))
            for code, message, fix, line, severity, column in found:
                add(Problem(code, message, fix, line + base, severity, column))
            duplicates.add_many(keys, np.frombuffer(valid_lines, dtype=np.int64) + base)
            base += lines
        unique = _report_duplicates(duplicates, add)
        return _report(
            plan.path,
            fmt,
            "line",
            base > 0,
            problems,
            counts,
            unique,
            [],
            None,
            None,
            min_examples,
        )


def _report_duplicates(duplicates: ExactDuplicates, add: Callable[[Problem], None]) -> int:
    """`add` a `duplicate_example` problem for every copy; returns the number of unique
    examples."""
    unique = duplicates.count
    for line, first in duplicates.found():
        unique -= 1
        add(problem("duplicate_example", f"the same example as line {first}", line))
    return unique


def _check_chunk(chunk: Chunk, fmt: Format) -> tuple[int, _Counts, list[tuple], bytes, bytes]:
    """A worker's part of `check_file`: (lines, counts, problems as tuples, the content keys of
    the valid examples, their line numbers as an `array("q")`); lines count from 1."""
    with paused_gc():
        data = read_chunk(chunk)
        found: list[Problem] = []
        counts = _Counts()
        keys = bytearray()
        lines = array("q")
        if fmt is Format.CHAT:
            n, records = _plain_chats(data, counts, keys, lines)
        else:
            records = jsonl_lines(data)
            n = len(records)
        for record in _checked(records, CHECKERS[fmt], found.append, counts):
            keys += content_key(record.data)
            lines.append(record.line)
        problems = [(p.code, p.message, p.fix, p.line, p.severity, p.column) for p in found]
        return n, counts, problems, bytes(keys), lines.tobytes()


def _plain_chats(
    data: bytes, counts: _Counts, keys: bytearray, lines: array
) -> tuple[int, list[Record]]:
    """Check the lines of JSON Lines `data` that are plain chats with nothing wrong (most
    lines) straight from their bytes, adding them to `counts`, `keys` and `lines`; returns the
    number of lines and the records of the others, for the full checks.

    Typed decoding (`PLAIN_CHAT`), `plain_chat_bits` and `plain_chat_key` together cost half
    of reading a line into dicts and checking it in full, and come to the same.
    """
    raws = data.split(b"\n")
    if raws[-1] == b"":
        raws.pop()  # the final newline ends the last line; it does not start a new one
    rest = []
    decode = PLAIN_CHAT.decode
    for number, raw in enumerate(raws, start=1):
        try:
            messages = decode(raw).messages
        except (msgspec.DecodeError, RecursionError):
            messages = []
        seen = plain_chat_bits(messages) if messages else None
        if seen is None:
            rest.append(line_record(number, raw))
            continue
        counts.records += 1
        counts.read += 1
        counts.add_valid(seen)
        keys += plain_chat_key([text for m in messages for text in (m.role, m.content)])
        lines.append(number)
    return len(raws), rest


# --- bounded memory (server uploads) ---------------------------------------------------------


def validate_streamed(
    streamed: StreamedDataset, *, min_examples: int = MIN_EXAMPLES, keep: int = 50
) -> Report:
    """`validate` for files of any size, in memory bounded by one example and `keep`.

    The same checks, codes, messages and line numbers as `validate` (without token lengths),
    over `streamed.records()` read one at a time; the report lists the first `keep` errors
    and warnings, while its counts (`problem_counts`) cover every problem. Duplicates are
    found from hashes; prompt-completion advice needs a second pass over the file.

    Example:
        >>> report = validate_streamed(stream_dataset("big.jsonl"))
        >>> report.ok, report.counts_by_code
        (True, {'duplicate_example': 3})
    """
    with paused_gc():
        return _validate_streamed(streamed, min_examples, keep)


def _validate_streamed(streamed: StreamedDataset, min_examples: int, keep: int) -> Report:
    fmt = streamed.format
    sample = ProblemSample(keep)
    for p in streamed.file_problems:
        sample.add(p)
    counts = _Counts()
    duplicates = ExactDuplicates()
    advice = PromptCompletionAdvice() if fmt is Format.PROMPT_COMPLETION else None
    check = CHECKERS.get(fmt) if fmt is not None else None  # type: ignore[arg-type]
    records = streamed.records()
    saw_object: list[bool] = []
    if check is None:
        records = _noting_objects(records, saw_object)
    for record in _checked(records, check, sample.add, counts):
        duplicates.add(content_key(record.data), record.line)
        if advice is not None:
            advice.add(record.data)
    if saw_object:
        sample.add(
            problem("unknown_format", "no example matches a known format, so none was checked")
        )
    unique = _report_duplicates(duplicates, sample.add)
    stats: dict[str, Any] = {}
    if fmt in (Format.CHAT, Format.PREFERENCE):
        stats["examples_without_system"] = counts.no_system
        stats["examples_without_user"] = counts.no_user
    stats["duplicates"] = counts.valid - unique
    if advice is not None and counts.valid >= 2:
        for p in advice.problems(_separator_inside(streamed, advice.prompt_suffix)):
            sample.add(p)
    if counts.records or not any(code == "empty_file" for code, _ in sample.counts):
        few = _too_few(counts.valid, min_examples)
        if few is not None:
            sample.add(few)
    return Report(
        path=str(streamed.path),
        format=fmt,
        unit=streamed.unit,
        examples_read=counts.read,
        examples_valid=counts.valid,
        problems=sample.problems(),
        stats=stats,
        problem_counts=sample.counts,
    )


def _noting_objects(records: Iterator[Record], seen: list[bool]) -> Iterator[Record]:
    """`records`, noting in `seen` whether one parsed to a JSON object."""
    for record in records:
        if not seen and record.problem is None and type(record.data) is dict:
            seen.append(True)
        yield record


def _separator_inside(streamed: StreamedDataset, suffix: str) -> int:
    """How many valid prompts hold `suffix` before their end (a second pass over the file)."""
    if not suffix:
        return 0
    check = CHECKERS[Format.PROMPT_COMPLETION]
    inside = 0
    for record in _checked(streamed.records(), check, lambda p: None, _Counts()):
        prompt = record.data["prompt"]
        inside += suffix in prompt[: -len(suffix)]
    return inside
