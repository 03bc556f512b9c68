"""`clean` on several cores: workers fix, check and fingerprint runs of lines; the parent dedupes.

Each worker takes a run of whole lines (`parallel.Chunk`) through steps 1-5 of `clean` (fixes,
validation, blocklist, PII, length) exactly as the in-process `_Cleaner` does, and sends back
compact results: its rejections, fix and redaction counts, and for each surviving example its
line number, its 16-byte `content_key`, its output line (UTF-8 bytes, one blob per chunk) and
its near-duplicate signature (band keys and shingle hashes as numpy arrays). The parent merges
chunks in line order and does what depends on order (step 6: the first copy of a duplicate
wins; near duplicates are found against the examples kept before), reproducing the in-process
run's batches of `_BATCH` lines, so both files and the report are the same byte for byte.
"""

from __future__ import annotations

import os
from array import array
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.data.clean import (
    _FILE_FIXES,
    CleanOptions,
    CleanReport,
    Rejected,
    _Cleaner,
    _json_line,
    clean_report,
)
from tuneforge.data.content import Slot
from tuneforge.data.dedupe import NearDuplicateIndex, Signature, content_key, shingle_text
from tuneforge.data.io import Format, LoadedDataset, jsonl_lines, paused_gc
from tuneforge.data.parallel import Chunk, JsonlPlan, read_chunk, run_chunks
from tuneforge.fsutil import atomic_write

# The in-process cleaner decides which examples need a near-duplicate signature a batch of this
# many records at a time (`_Cleaner.run`); the merge reproduces its batches.
_BATCH = 2048


def _index(options: CleanOptions) -> NearDuplicateIndex | None:
    if not options.near_dedupe:
        return None
    return NearDuplicateIndex(options.near_dup_threshold, options.num_perm, options.shingle_size)


def clean_chunk(chunk: Chunk, fmt: Format, options: CleanOptions) -> dict[str, Any]:
    """A worker's part of `clean`: steps 1-5 and the fingerprints of one chunk's lines."""
    with paused_gc():
        data = read_chunk(chunk)
        records = jsonl_lines(data)
        cleaner = _Cleaner(LoadedDataset(Path(chunk.path), records, fmt), options)
        example = cleaner.example
        items = [item for item in map(example, records) if item is not None]
        keyed = options.dedupe or options.near_dedupe
        keys = b"".join(content_key(i.obj, i.slots) for i in items) if keyed else b""
        encoded = [_json_line(item.obj).encode("utf-8") for item in items]
        offsets = np.zeros(len(items) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, encoded), np.int64, len(items)), out=offsets[1:])
        result: dict[str, Any] = {
            "lines": len(records),
            "rejected": [(r.line, r.code, r.reason, r.raw) for r in cleaner.rejected],
            "fixes": cleaner.fixes,
            "fix_lines": cleaner.fix_lines,
            "redactions": cleaner.redactions,
            "item_lines": array("l", [item.line for item in items]).tobytes(),
            "keys": keys,
            "out": b"".join(encoded),
            "offsets": offsets,
            "newlines": np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10),
        }
        index = _index(options)
        if index is not None:
            result.update(_signatures(index, [item.slots for item in items]))
        return result


def _signatures(index: NearDuplicateIndex, slots: list[list[Slot]]) -> dict[str, Any]:
    """Every example's signature, packed: which row each has (-1: none), hash values, band
    keys, and shingle hashes with their offsets."""
    rows = np.full(len(slots), -1, dtype=np.int64)
    values, bands, shingles = [], [], []
    for start in range(0, len(slots), _BATCH):
        texts: list[str | None] = [shingle_text(s) for s in slots[start : start + _BATCH]]
        for i, signature in enumerate(index.signatures(texts), start=start):
            if signature is not None:
                rows[i] = len(values)
                values.append(signature.hashvalues)
                bands.append(signature.bands)
                shingles.append(signature.shingles)
    ends = np.cumsum([len(s) for s in shingles], dtype=np.int64)
    return {
        "rows": rows,
        "hashvalues": np.array(values, dtype=np.uint32).reshape(len(values), index.num_perm),
        "bands": np.array(bands, dtype=np.uint64).reshape(len(bands), index.bands),
        "shingles": np.concatenate(shingles) if shingles else np.zeros(0, np.uint32),
        "shingle_offsets": np.r_[0, ends],
    }


class _Merge:
    """The parent's side: step 6 over the chunks' examples in line order, and the accounting."""

    def __init__(self, options: CleanOptions, cleaner: _Cleaner, fd: int, out: Any):
        self.options = options
        self.cleaner = cleaner  # holds the merged fixes, redactions and rejections
        self.near = _index(options)
        self.seen: dict[bytes, int] = {}
        self.batch = -1
        self.batch_keys: set[bytes] = set()
        self.fd = fd
        self.out = out
        self.kept = 0
        self.read = 0

    def add(self, chunk: Chunk, result: dict[str, Any]) -> None:
        base = self.read
        cleaner = self.cleaner
        for fix, count in result["fixes"].items():
            cleaner.fixes[fix] += count
            shown = cleaner.fix_lines.setdefault(fix, [])
            shown += [line + base for line in result["fix_lines"].get(fix, [])][: 5 - len(shown)]
        cleaner.redactions += result["redactions"]
        dropped = [
            Rejected(line + base, reason, code, raw)
            for line, code, reason, raw in (result["rejected"])
        ]
        dropped += self._dedupe(chunk, result, base)
        dropped.sort(key=lambda r: r.line)
        cleaner.rejected += dropped
        self.read += result["lines"]

    def _dedupe(self, chunk: Chunk, result: dict[str, Any], base: int) -> list[Rejected]:
        """Step 6 as `_Cleaner.run` does it; writes the kept examples, returns the dropped."""
        options, near, seen = self.options, self.near, self.seen
        keys, blob, offsets = result["keys"], memoryview(result["out"]), result["offsets"]
        rows = result.get("rows")
        alone = near.isolated(result["bands"]) if near is not None else None
        # Isolated examples that reach the index (line, signature row): added at the end.
        deferred: list[tuple[int, int]] = []
        dropped: list[Rejected] = []
        run = 0  # the first item of the run of kept items not yet written
        lines = array("l", result["item_lines"])
        for i, line in enumerate(lines):
            line += base
            key = keys[16 * i : 16 * i + 16] if keys else None
            batch = (line - 1) // _BATCH
            if batch != self.batch:
                self.batch, self.batch_keys = batch, set()
            # As in `_Cleaner.run`: a signature only for the first of a content in its batch
            # and not kept before.
            fresh = key is not None and key not in seen and key not in self.batch_keys
            if key is not None:
                self.batch_keys.add(key)
            reason = code = None
            if key is not None and options.dedupe:
                first = seen.get(key)
                if first is not None:
                    reason, code = f"exact duplicate of line {first}", "duplicate"
            if code is None and near is not None and fresh and rows[i] >= 0 and alone[rows[i]]:
                deferred.append((line, int(rows[i])))
            elif code is None and near is not None and fresh and rows[i] >= 0:
                signature = self._signature(result, int(rows[i]))
                found = near.query(signature)
                if found is not None:
                    code = "near_duplicate"
                    reason = (
                        f"near duplicate of line {found[0]} (Jaccard similarity {found[1]:.2f})"
                    )
                else:
                    near.add(line, signature)
            if code is None:
                if key is not None:
                    seen.setdefault(key, line)
                continue
            raw = self._raw(chunk, result["newlines"], line - base)
            dropped.append(Rejected(line, reason, code, raw))  # type: ignore[arg-type]
            if run < i:
                self.out.write(blob[offsets[run] : offsets[i]])
            self.kept += i - run
            run = i + 1
        if run < len(lines):
            self.out.write(blob[offsets[run] : offsets[len(lines)]])
        self.kept += len(lines) - run
        if deferred and near is not None:
            ends, shingles = result["shingle_offsets"].tolist(), result["shingles"]
            added = [row for _, row in deferred]
            near.add_isolated(
                [line for line, _ in deferred],
                result["bands"][added],
                [shingles[ends[r] : ends[r + 1]] for r in added],
            )
        return dropped

    @staticmethod
    def _signature(result: dict[str, Any], row: int) -> Signature:
        ends = result["shingle_offsets"]
        return Signature(
            result["hashvalues"][row],
            result["bands"][row].tolist(),
            result["shingles"][ends[row] : ends[row + 1]],
        )

    def _raw(self, chunk: Chunk, newlines: np.ndarray, number: int) -> str:
        """The text of the chunk's line `number` (from 1), as `Record.raw` holds it."""
        start = 0 if number == 1 else int(newlines[number - 2]) + 1
        end = int(newlines[number - 1]) if number - 1 < len(newlines) else chunk.end - chunk.start
        raw = os.pread(self.fd, end - start, chunk.start + start)
        return raw.removesuffix(b"\r").decode("utf-8")


def clean_chunks(
    path: str | Path,
    out: Path,
    rejects: Path,
    options: CleanOptions,
    plan: JsonlPlan,
    workers: int,
    started: float,
) -> CleanReport:
    """`clean` of a planned JSON Lines file in `workers` processes (see the module)."""
    fmt = plan.format
    assert fmt is not None  # a plan has a format
    loaded = LoadedDataset(plan.path, [], fmt, plan.file_problems)
    cleaner = _Cleaner(loaded, options)
    fd = os.open(plan.path, os.O_RDONLY)
    try:
        with paused_gc(), atomic_write(rejects) as rf, atomic_write(out, "wb") as f:
            merge = _Merge(options, cleaner, fd, f)
            tasks = [(chunk, fmt, options) for chunk in plan.chunks]
            for chunk, result in zip(
                plan.chunks, run_chunks(clean_chunk, tasks, workers), strict=True
            ):
                merge.add(chunk, result)
            if merge.kept + len(cleaner.rejected) != merge.read:  # every line accounted for
                raise AssertionError(
                    f"internal error: {merge.kept} kept + {len(cleaner.rejected)} rejected "
                    f"!= {merge.read} read"
                )
            rf.writelines(_json_line(r.to_dict()) for r in cleaner.rejected)
    finally:
        os.close(fd)
    for p in plan.file_problems:
        if p.code in _FILE_FIXES:
            cleaner.fixes[p.code] += 1
    return clean_report(
        path, out, rejects, options, loaded, merge.read, merge.kept, cleaner, started
    )
