"""Cleaning a dataset: fix what is safe, drop what is not, deduplicate, filter, redact.

(Just over 500 lines: the options, the one pipeline both the in-process and the parallel
paths share, and its report, kept together so the accounting of every line reads in one file.)

`clean(path, out, options)` reads a dataset (any format `read_dataset` reads) and writes two
JSON Lines files, atomically: the cleaned examples to `out`, and every dropped line to
`out.rejects.jsonl` as `{"line", "reason", "code", "raw"}`. Every line read ends in exactly one
of them, and the returned `CleanReport` proves it (`kept + rejected == read`).

Each example goes through these steps, in order:

1. **Fixes** that cannot change what the model learns: Unicode NFC, line endings to "\\n",
   control characters removed, contents stripped at both ends and runs of spaces collapsed
   (never inside fenced or indented code blocks), role names lower-cased ("Assistant"), message
   weights written as 0 / 1, unknown keys inside messages dropped. File-wide fixes (a byte-order
   mark, a top-level JSON array, a pretty-printed object) are applied by writing JSON Lines.
2. **Validation** (`validate_example`): an example that still has an error is dropped with the
   problem's code and message (invalid JSON, bytes that are not UTF-8, no assistant message,
   an empty completion, ...).
3. **Blocklist**: examples containing a blocklisted phrase or pattern are dropped.
4. **PII redaction** (optional): emails, phone numbers, card and account numbers become typed
   placeholders (see `tuneforge.data.pii`).
5. **Length**: examples over `max_tokens` are dropped, or truncated at a message or word
   boundary. Tokens are counted exactly when a `Measure` is given (`tuneforge.tokenize.measure`:
   the model's tokenizer and chat template), else estimated as characters / 4 plus 4 per message.
6. **Deduplication**: exact duplicates (same normalised content) and near duplicates (Jaccard
   similarity of word shingles at least `near_dup_threshold`, found with MinHash LSH and then
   confirmed exactly) are dropped; the first occurrence is kept and the reason names its line.

Example:
    >>> report = clean("train.jsonl", "train.clean.jsonl", CleanOptions(redact_pii=True))
    >>> report.kept + report.rejected == report.read
    True
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec

from tuneforge.data.blocklist import Blocklist
from tuneforge.data.checks import validate_example
from tuneforge.data.content import Slot, text_slots
from tuneforge.data.dedupe import NearDuplicateIndex, content_key, shingle_text
from tuneforge.data.fixes import LengthCheck, fix_example
from tuneforge.data.io import Format, LoadedDataset, Record, parse_format, paused_gc, read_dataset
from tuneforge.data.lengths import Measure
from tuneforge.data.parallel import plan_jsonl
from tuneforge.data.pii import redact_pii
from tuneforge.fsutil import atomic_write

TooLong = Literal["drop", "truncate"]

# What each fix does, as the summary lists it.
FIX_LABELS: dict[str, str] = {
    "bom": "byte-order mark removed",
    "top_level_array": "top-level JSON array written as JSON Lines",
    "pretty_printed_json": "multi-line JSON object written on one line",
    "line_endings": 'line endings normalised to "\\n"',
    "unicode_nfc": "Unicode normalised to NFC",
    "control_characters": "control characters removed",
    "whitespace": "contents stripped at both ends, runs of spaces collapsed",
    "role_case": 'role names lower-cased ("Assistant" -> "assistant")',
    "weight": "message weights written as 0 or 1",
    "message_keys": "unknown keys dropped from messages",
    "truncated": "over-long example truncated to the token limit",
}
# File-wide reading problems that writing JSON Lines fixes.
_FILE_FIXES = ("bom", "top_level_array", "pretty_printed_json")
# Near-duplicate signatures are computed this many records at a time (vectorised); which
# examples get one depends on it (the first of a content in its batch), so the parallel merge
# (`clean_chunks`) follows the same batches.
SIGNATURE_BATCH = 2048
# How many line numbers the report keeps per fix, to show where it was applied.
_FIX_LINES_SHOWN = 5


@dataclass
class CleanOptions:
    """What `clean` does beyond the safe fixes and validation."""

    format: Format | str | None = None
    """Force the dataset format (chat, prompt_completion, preference, text); detected if None."""
    dedupe: bool = True
    """Drop exact duplicates (same content after normalisation, ignoring case and spacing)."""
    near_dedupe: bool = True
    """Drop near duplicates (word-shingle Jaccard similarity >= `near_dup_threshold`)."""
    near_dup_threshold: float = 0.9
    """Jaccard similarity from which two examples count as near duplicates."""
    shingle_size: int = 2
    """Words per shingle for near-duplicate detection (short chat turns need small shingles)."""
    num_perm: int = 64
    """MinHash permutations: more is more precise candidate finding, and slower."""
    blocklist: Blocklist | None = None
    """Examples containing one of its phrases or patterns are dropped."""
    redact_pii: bool = False
    """Replace emails, phone, card and account numbers with [EMAIL], [PHONE], ... placeholders."""
    max_tokens: int | None = None
    """Token limit per example; None keeps every length."""
    too_long: TooLong = "drop"
    """What to do with examples over `max_tokens`: drop them, or truncate them."""
    measure: Measure | None = None
    """Exact token counts (`tuneforge.tokenize.measure.token_measure`); None estimates
    characters / 4."""
    workers: int | None = None
    """Processes for a large JSON Lines file (None: one per CPU from 16 MiB on; 1: in-process).
    The result is the same, line for line; with `measure`, cleaning stays in-process."""

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 < self.near_dup_threshold <= 1.0:
            problems.append(f"near_dup_threshold must be in (0, 1], got {self.near_dup_threshold}")
        if self.shingle_size < 1:
            problems.append(f"shingle_size must be >= 1, got {self.shingle_size}")
        if self.num_perm < 8:
            problems.append(f"num_perm must be >= 8, got {self.num_perm}")
        if self.max_tokens is not None and self.max_tokens < 1:
            problems.append(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.workers is not None and self.workers < 1:
            problems.append(f"workers must be >= 1, got {self.workers}")
        if self.too_long not in ("drop", "truncate"):
            problems.append(f"too_long must be 'drop' or 'truncate', got {self.too_long!r}")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class Rejected:
    """One dropped line, as written to the rejects file."""

    line: int
    reason: str
    code: str
    raw: str

    def to_dict(self) -> dict[str, Any]:
        # `asdict`, spelled out: it costs more than encoding the line.
        return {"line": self.line, "reason": self.reason, "code": self.code, "raw": self.raw}


@dataclass
class CleanReport:
    """What `clean` did: counts that add up, fixes, rejections and redactions."""

    input: str
    output: str
    rejects: str
    format: str | None
    unit: str
    read: int
    kept: int
    rejected: int
    fixes: dict[str, int] = field(default_factory=dict)
    """How many examples (or, for file-wide fixes, files) each fix was applied to."""
    fix_lines: dict[str, list[int]] = field(default_factory=dict)
    """The first few line numbers each fix was applied to."""
    rejections: dict[str, int] = field(default_factory=dict)
    """How many lines were dropped for each reason code."""
    rejection_examples: dict[str, str] = field(default_factory=dict)
    """One full reason per code, as an example of what it means."""
    redactions: dict[str, int] = field(default_factory=dict)
    """How many of each PII type were replaced."""
    file_problems: list[dict[str, Any]] = field(default_factory=list)
    token_count: str | None = None
    """How lengths were measured: "tokenizer", "estimate" (characters / 4), or None."""
    seconds: float = 0.0

    @property
    def balanced(self) -> bool:
        """True when every line read was either kept or rejected."""
        return self.kept + self.rejected == self.read

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict."""
        return {**asdict(self), "balanced": self.balanced, "seconds": round(self.seconds, 3)}


def rejects_path(out: str | Path) -> Path:
    """Where the rejects of `out` go: `out` + ".rejects.jsonl"."""
    out = Path(out)
    return out.with_name(out.name + ".rejects.jsonl")


# --- the cleaner -----------------------------------------------------------------------------


@dataclass
class _Kept:
    line: int
    obj: dict
    slots: list[Slot]


class _Cleaner:
    """One run of `clean`: holds the counters while records stream through the steps."""

    def __init__(self, loaded: LoadedDataset, options: CleanOptions):
        self.loaded = loaded
        self.options = options
        self.fmt = loaded.format
        self.fixes: Counter[str] = Counter()
        self.fix_lines: dict[str, list[int]] = {}
        self.redactions: Counter[str] = Counter()
        self.rejected: list[Rejected] = []
        self.length = (
            LengthCheck(self.fmt, options.max_tokens, options.measure)
            if options.max_tokens is not None
            else None
        )

    def reject(self, record: Record, code: str, reason: str) -> None:
        self.rejected.append(Rejected(line=record.line, reason=reason, code=code, raw=record.raw))

    def note_fixes(self, line: int, fixes: Iterable[str]) -> None:
        for fix in fixes:
            self.fixes[fix] += 1
            shown = self.fix_lines.setdefault(fix, [])
            if len(shown) < _FIX_LINES_SHOWN:
                shown.append(line)

    def example(self, record: Record) -> _Kept | None:
        """Steps 1-5 for one record: the fixed example, or None when it was rejected."""
        if record.problem is not None:
            self.reject(record, record.problem.code, record.problem.message)
            return None
        obj = record.data
        if type(obj) is not dict:
            errors = validate_example(obj, self.fmt or Format.CHAT, record.line)
            self.reject(record, errors[0].code, errors[0].message)
            return None
        slots, fixes = fix_example(obj)
        if self.fmt is None:
            self.reject(record, "unknown_format", "the example matches no known format")
            return None
        for p in validate_example(obj, self.fmt, record.line):
            if p.severity == "error":
                self.reject(record, p.code, p.message)
                return None
        blocklist = self.options.blocklist
        if blocklist is not None:
            for container, key, _ in slots:
                found = blocklist.find(container[key])
                if found is not None:
                    what = "pattern" if found.startswith("re:") else "phrase"
                    self.reject(record, "blocklisted", f"contains blocklisted {what} {found!r}")
                    return None
        redacted: Counter[str] = Counter()
        if self.options.redact_pii:
            for container, key, _ in slots:
                new, counts = redact_pii(container[key])
                if counts:
                    container[key] = new
                    redacted += counts
        if self.length is not None:
            try:
                n = self.length.count(obj)
            except Exception as e:  # a chat template can raise anything on odd input
                self.reject(record, "tokenize_failed", f"cannot be tokenized: {e}")
                return None
            if n > self.length.max_tokens:
                cut = self.length.truncate(obj) if self.options.too_long == "truncate" else None
                if cut is None:
                    about = "" if self.length.measure is not None else "about "
                    why = (
                        " (cannot be truncated safely)"
                        if self.options.too_long == "truncate"
                        else ""
                    )
                    self.reject(
                        record,
                        "too_long",
                        f"{about}{n} tokens, more than the limit of {self.length.max_tokens}{why}",
                    )
                    return None
                obj = cut
                slots = text_slots(obj)
                fixes.add("truncated")
        # Redactions count only for examples that are kept up to here.
        self.redactions += redacted
        self.note_fixes(record.line, fixes)
        return _Kept(record.line, obj, slots)

    def run(self) -> list[_Kept]:
        options = self.options
        near = (
            NearDuplicateIndex(options.near_dup_threshold, options.num_perm, options.shingle_size)
            if options.near_dedupe
            else None
        )
        seen: dict[bytes, int] = {}
        kept: list[_Kept] = []
        records = self.loaded.records
        chunk = SIGNATURE_BATCH
        for start in range(0, len(records), chunk):
            batch = [(r, self.example(r)) for r in records[start : start + chunk]]
            keys: list[bytes | None] = []
            texts: list[str | None] = []
            batch_keys: set[bytes] = set()
            for _, item in batch:
                key = None
                if item is not None and (options.dedupe or near is not None):
                    key = content_key(item.obj, item.slots)
                keys.append(key)
                # A signature is only needed for the first occurrence of a content.
                fresh = key is not None and key not in seen and key not in batch_keys
                if fresh:
                    batch_keys.add(key)
                texts.append(shingle_text(item.slots) if near is not None and fresh else None)
            signatures = near.signatures(texts) if near is not None else None
            for i, (record, item) in enumerate(batch):
                if item is None:
                    continue
                key = keys[i]
                if key is not None and options.dedupe:
                    first = seen.get(key)
                    if first is not None:
                        self.reject(record, "duplicate", f"exact duplicate of line {first}")
                        continue
                if near is not None and signatures is not None and signatures[i] is not None:
                    found = near.query(signatures[i])
                    if found is not None:
                        line, similarity = found
                        self.reject(
                            record,
                            "near_duplicate",
                            f"near duplicate of line {line} (Jaccard similarity {similarity:.2f})",
                        )
                        continue
                    near.add(item.line, signatures[i])
                if key is not None:
                    seen.setdefault(key, item.line)
                kept.append(item)
        return kept


def clean(
    path: str | Path,
    out: str | Path,
    options: CleanOptions | None = None,
    *,
    rejects: str | Path | None = None,
    prompt_col: str | None = None,
    completion_col: str | None = None,
    text_col: str | None = None,
) -> CleanReport:
    """Clean the dataset at `path` into `out` (JSON Lines), dropped lines into `rejects`.

    `rejects` defaults to `out` + ".rejects.jsonl". Both files are written atomically: if the
    run fails or is interrupted, neither is left half-written (an existing file stays as it was).
    Table and text files are read with the column options of `read_dataset`.

    Raises:
        DatasetError: the file cannot be read as a dataset at all.
    """
    started = time.perf_counter()
    options = options or CleanOptions()
    out = Path(out)
    rejects = Path(rejects) if rejects is not None else rejects_path(out)
    fmt = parse_format(options.format) if options.format is not None else None
    if options.measure is None:
        planned = plan_jsonl(path, fmt, options.workers)
        if planned is not None:
            from tuneforge.data.clean_chunks import clean_chunks  # it builds on this module

            return clean_chunks(path, out, rejects, options, *planned, started)
    with paused_gc():
        loaded = read_dataset(
            path, fmt, prompt_col=prompt_col, completion_col=completion_col, text_col=text_col
        )
        cleaner = _Cleaner(loaded, options)
        kept = cleaner.run()
    for p in loaded.file_problems:
        if p.code in _FILE_FIXES:
            cleaner.fixes[p.code] += 1
    cleaner.rejected.sort(key=lambda r: r.line)
    read = len(loaded.records)
    if len(kept) + len(cleaner.rejected) != read:  # every line must be accounted for
        raise AssertionError(
            f"internal error: {len(kept)} kept + {len(cleaner.rejected)} rejected != {read} read"
        )
    _write_outputs(out, rejects, kept, cleaner.rejected)
    return clean_report(path, out, rejects, options, loaded, read, len(kept), cleaner, started)


def clean_report(
    path: str | Path,
    out: Path,
    rejects: Path,
    options: CleanOptions,
    loaded: LoadedDataset,
    read: int,
    kept: int,
    cleaner: _Cleaner,
    started: float,
) -> CleanReport:
    """The report of a finished run (`cleaner.rejected` in line order)."""
    rejections = Counter(r.code for r in cleaner.rejected)
    examples: dict[str, str] = {}
    for r in cleaner.rejected:
        examples.setdefault(r.code, f"line {r.line}: {r.reason}")
    token_count = None
    if options.max_tokens is not None:
        token_count = "tokenizer" if options.measure is not None else "estimate"
    return CleanReport(
        input=str(path),
        output=str(out),
        rejects=str(rejects),
        format=None if loaded.format is None else loaded.format.value,
        unit=loaded.unit,
        read=read,
        kept=kept,
        rejected=len(cleaner.rejected),
        fixes=dict(cleaner.fixes.most_common()),
        fix_lines={k: cleaner.fix_lines[k] for k in cleaner.fixes if k in cleaner.fix_lines},
        rejections=dict(rejections.most_common()),
        rejection_examples=examples,
        redactions=dict(cleaner.redactions.most_common()),
        file_problems=[p.to_dict() for p in loaded.file_problems if p.code not in _FILE_FIXES],
        token_count=token_count,
        seconds=time.perf_counter() - started,
    )


_ENCODE = json.JSONEncoder(ensure_ascii=False).encode  # built once: `json.dumps` builds one a call


def _json_line(obj: Any) -> str:
    """`obj` as `json.dumps(obj, ensure_ascii=False)` writes it, and a newline.

    A plain chat (string roles and contents: no float, whose spelling differs) is written by
    msgspec, whose single-line format is json's, five times faster.
    """
    messages = obj.get("messages") if type(obj) is dict else None
    if len(obj) == 1 and type(messages) is list and all(_plain(m) for m in messages):
        with contextlib.suppress(msgspec.EncodeError, UnicodeEncodeError):
            return msgspec.json.format(msgspec.json.encode(obj), indent=0).decode() + "\n"
    return _ENCODE(obj) + "\n"


def _plain(message: Any) -> bool:
    return (
        type(message) is dict
        and len(message) == 2
        and type(message.get("role")) is str
        and type(message.get("content")) is str
    )


def _write_outputs(out: Path, rejects: Path, kept: list[_Kept], rejected: list[Rejected]) -> None:
    """Write both files atomically: an exception in either leaves neither half-written."""
    with atomic_write(rejects) as rf, atomic_write(out) as f:
        rf.writelines(_json_line(r.to_dict()) for r in rejected)
        f.writelines(_json_line(item.obj) for item in kept)


def print_clean_report(report: CleanReport, console: Any) -> None:
    """Print `report` with Rich: the accounting, fixes, rejections by reason and redactions."""
    from rich.markup import escape
    from rich.table import Table

    summary = Table(title="clean", box=None, show_header=False, title_justify="left")
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("input", escape(report.input))
    summary.add_row("format", report.format or "unknown")
    summary.add_row("read", f"{report.read:,}")
    summary.add_row("kept", f"[green]{report.kept:,}[/green] -> {escape(report.output)}")
    summary.add_row("rejected", f"[red]{report.rejected:,}[/red] -> {escape(report.rejects)}")
    verdict = "[green]yes[/green]" if report.balanced else "[red]NO[/red]"
    summary.add_row("kept + rejected = read", verdict)
    if report.token_count == "estimate":
        summary.add_row("token lengths", "estimated as characters / 4 (pass --model to count)")
    console.print(summary)
    for p in report.file_problems:
        console.print(f"[yellow]{escape(p['code'])}[/yellow]: {escape(p['message'])}")
    if report.fixes:
        table = Table(title="fixes", title_justify="left", header_style="bold")
        table.add_column("fix")
        table.add_column("examples", justify="right")
        table.add_column("e.g. lines", style="dim")
        for code, count in report.fixes.items():
            lines = ", ".join(map(str, report.fix_lines.get(code, [])))
            table.add_row(FIX_LABELS.get(code, code), f"{count:,}", lines)
        console.print(table)
    if report.rejections:
        table = Table(title="rejected", title_justify="left", header_style="bold")
        table.add_column("reason")
        table.add_column("lines", justify="right")
        table.add_column("example", style="dim")
        for code, count in report.rejections.items():
            table.add_row(code, f"{count:,}", escape(report.rejection_examples.get(code, "")))
        console.print(table)
    if report.redactions:
        table = Table(title="redacted", title_justify="left", header_style="bold")
        table.add_column("type")
        table.add_column("count", justify="right")
        for kind, count in report.redactions.items():
            table.add_row(f"[{kind}]", f"{count:,}")
        console.print(table)
