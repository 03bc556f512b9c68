"""Reading a large JSON Lines file on several cores: line-aligned byte ranges and a worker pool.

`plan_jsonl` decides whether a file can be checked or cleaned in chunks (a JSON Lines file, large
enough to repay starting processes) and splits it into byte ranges that start and end at line
boundaries; `run_chunks` runs a function on each range in worker processes and yields the
results in file order. Workers parse and check their lines and send back compact results
(problems, 16-byte content keys, MinHash band keys and shingle hashes as numpy arrays, output
bytes); the parent merges them in line order and does what depends on order (which copy of a
duplicate comes first), so the outcome is that of the single-process code, line for line.

Line numbers inside a chunk count from 1; the parent adds the lines of the chunks before.

Workers are forked where that is safe (POSIX, a single-threaded parent), else spawned. Spawned
workers hash strings with another seed, so fixes applied the same number of times may be listed
in another order when they first appear on the same line; counts and lines are the same.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tuneforge.data.io import (
    SNIFF_BYTES,
    TABLE_SUFFIXES,
    TEXT_SUFFIXES,
    Format,
    Problem,
    head_problems,
    jsonl_lines,
    majority_format,
    parse_format,
)

# Files smaller than this are read in-process when the number of workers is automatic: starting
# workers and shipping results costs more than it saves.
MIN_PARALLEL_BYTES = 16 * 1024 * 1024
# Bytes per chunk: small enough that the parent merges one while workers parse the next, large
# enough that each task's overhead (a pickle and a pipe round trip) is negligible.
CHUNK_BYTES = 4 * 1024 * 1024
# The parent detects the format from the first DETECT_SAMPLE parsed lines of at most this much.
_DETECT_LIMIT = 64 * 1024 * 1024
# Whitespace `str.lstrip` removes that `bytes.lstrip` keeps: a file starting with one is read
# in-process, where its first line is judged exactly.
_UNICODE_SPACE = bytes(range(0x1C, 0x20))

T = TypeVar("T")


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def worker_count(workers: int | None, size: int) -> int:
    """How many processes to use: `workers` when given, else one per CPU for a file of at least
    `MIN_PARALLEL_BYTES` (one: in-process)."""
    if workers is not None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        return workers
    if multiprocessing.current_process().daemon:
        return 1  # a daemonic process may not start processes of its own
    return available_cpus() if size >= MIN_PARALLEL_BYTES else 1


@dataclass
class Chunk:
    """One run of whole lines: bytes [start, end) of the file."""

    path: str
    start: int
    end: int


@dataclass
class JsonlPlan:
    """A JSON Lines file split into chunks, with what the parent found before splitting it."""

    path: Path
    format: Format | None
    file_problems: list[Problem]
    chunks: list[Chunk] = field(default_factory=list)


def plan_jsonl(
    path: str | Path,
    format: Format | str | None,
    workers: int | None,
    chunk_bytes: int | None = None,
) -> tuple[JsonlPlan, int] | None:
    """The chunks and worker count for reading `path` in parallel, or None to read it in-process.

    None for one worker, for anything but a plain JSON Lines file (tables, text, an empty
    file, a JSON array, a pretty-printed object, or a first line that does not parse, which
    `read_dataset` judges as a whole), and when the format cannot be detected from the first
    lines. Reading problems found here are those `read_dataset` reports for the file (a binary
    file, a byte-order mark).
    """
    path = Path(path)
    forced = parse_format(format) if format is not None else None
    if not path.is_file() or path.suffix.lower() in TABLE_SUFFIXES | TEXT_SUFFIXES:
        return None
    size = path.stat().st_size
    n = worker_count(workers, size)
    if n <= 1:
        return None
    with open(path, "rb") as f:
        problems, start = head_problems(f.read(SNIFF_BYTES))
        if not _is_jsonl(f, start):
            return None
        chunks = _chunks(f, str(path), start, size, chunk_bytes or CHUNK_BYTES)
        fmt = forced if forced is not None else _detect(f, chunks)
    if fmt is None:
        return None
    return JsonlPlan(path, fmt, problems, chunks), n


def _is_jsonl(f: Any, start: int) -> bool:
    """True when the file is surely JSON Lines: not empty, and not one JSON document."""
    f.seek(start)
    head = f.read(SNIFF_BYTES)
    stripped = head.lstrip()
    if not stripped or stripped[:1] in _UNICODE_SPACE or stripped[0] >= 0x80:
        return False  # empty, or whitespace `read_dataset` judges differently: in-process
    if stripped[:1] == b"[":
        return False
    if stripped[:1] != b"{":
        return True
    # A first line that parses on its own makes the file JSON Lines (as `read_dataset` judges).
    records = jsonl_lines(_line_at(f, start + len(head) - len(stripped)))
    return bool(records) and records[0].problem is None


def _line_at(f: Any, offset: int) -> bytes:
    """The line starting at `offset` (without its newline)."""
    f.seek(offset)
    return f.readline().rstrip(b"\n")


def _chunks(f: Any, path: str, start: int, size: int, chunk_bytes: int) -> list[Chunk]:
    """Runs of whole lines of about `chunk_bytes` each, covering bytes [start, size)."""
    chunks = []
    at = start
    while at < size:
        end = at + chunk_bytes
        if end >= size:
            end = size
        else:
            f.seek(end - 1)
            f.readline()  # to just after the line holding byte end - 1
            end = f.tell()
        chunks.append(Chunk(path, at, end))
        at = end
    return chunks


def _detect(f: Any, chunks: list[Chunk]) -> Format | None:
    """The majority format of the first parsed lines, as `read_dataset` detects it."""

    def values() -> Iterator[Any]:
        for chunk in chunks:
            if chunk.end > _DETECT_LIMIT:
                raise _Undecided
            f.seek(chunk.start)
            for record in jsonl_lines(f.read(chunk.end - chunk.start)):
                if record.problem is None:
                    yield record.data

    try:
        return majority_format(values())
    except _Undecided:
        return None


class _Undecided(Exception):
    pass


def read_chunk(chunk: Chunk) -> bytes:
    """The bytes of `chunk`."""
    with open(chunk.path, "rb") as f:
        f.seek(chunk.start)
        return f.read(chunk.end - chunk.start)


def _context() -> Any:
    """Fork where it is safe (POSIX, no other thread to copy half-way), else spawn."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def run_chunks(fn: Callable[..., T], tasks: list[tuple], workers: int) -> Iterator[T]:
    """`fn(*task)` for each task, in `workers` processes; results in task order, as they come."""
    with _context().Pool(min(workers, len(tasks)) or 1) as pool:
        yield from pool.imap(_call, [(fn, task) for task in tasks])


def _call(job: tuple[Callable[..., T], tuple]) -> T:
    fn, task = job
    return fn(*task)
