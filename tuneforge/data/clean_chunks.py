"""`clean` on several cores: workers fix, check and fingerprint runs of lines; the parent dedupes.

Each worker takes a run of whole lines (`parallel.Chunk`) through steps 1-5 of `clean` (fixes,
validation, blocklist, PII, length) exactly as the in-process `_Cleaner` does, and sends back
compact results: its rejections, fix and redaction counts, and for each surviving example its
line number, its 16-byte `content_key`, its output line (written to a spill file the parent
reads back whole and writes kept runs from) and its near-duplicate signature (band keys and
shingle hashes as numpy arrays: a few bytes per example cross the pipe). The parent merges
chunks in line order and does what depends on order (step 6: the first copy of a duplicate
wins; near duplicates are found against the examples kept before), following the in-process
run's batches of `clean.SIGNATURE_BATCH` records: both files and the report are the same, byte
for byte.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from array import array
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.data import clean as _clean
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


def _index(options: CleanOptions) -> NearDuplicateIndex | None:
    if not options.near_dedupe:
        return None
    return NearDuplicateIndex(options.near_dup_threshold, options.num_perm, options.shingle_size)


def clean_chunk(chunk: Chunk, fmt: Format, options: CleanOptions, spill: str) -> dict[str, Any]:
    """A worker's part of `clean`: steps 1-5 and the fingerprints of one chunk's lines; the
    output lines of the examples that pass go to the file `spill`."""
    with paused_gc():
        data = read_chunk(chunk)
        records = jsonl_lines(data)
        cleaner = _Cleaner(LoadedDataset(Path(chunk.path), records, fmt), options)
        example = cleaner.example
        items = [item for item in map(example, records) if item is not None]
        keyed = options.dedupe or options.near_dedupe
        keys = b"".join(content_key(i.obj, i.slots) for i in items) if keyed else b""
        encoded = [_json_line(item.obj).encode("utf-8") for item in items]
        with open(spill, "wb") as f:
            f.writelines(encoded)
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
            "offsets": offsets,
            "newlines": np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10),
        }
        index = _index(options)
        if index is not None:
            result.update(_signatures(index, [item.slots for item in items]))
        return result


def _signatures(index: NearDuplicateIndex, slots: list[list[Slot]]) -> dict[str, Any]:
    """Every example's signature, packed: which row each has (-1: none), band keys, and shingle
    hashes with their offsets. (The MinHash values themselves are not needed past the bands.)"""
    rows = np.full(len(slots), -1, dtype=np.int64)
    bands, shingles = [], []
    for start in range(0, len(slots), 2048):
        texts: list[str | None] = [shingle_text(s) for s in slots[start : start + 2048]]
        for i, signature in enumerate(index.signatures(texts), start=start):
            if signature is not None:
                rows[i] = len(bands)
                bands.append(signature.bands)
                shingles.append(signature.shingles)
    ends = np.cumsum([len(s) for s in shingles], dtype=np.int64)
    return {
        "rows": rows,
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
        self.fd = fd  # the input, for the text of dropped duplicates
        self.out = out  # the output file
        self.kept = 0
        self.read = 0

    def add(self, chunk: Chunk, result: dict[str, Any], spill: str) -> None:
        base = self.read
        cleaner = self.cleaner
        for fix, count in result["fixes"].items():
            cleaner.fixes[fix] += count
            shown = cleaner.fix_lines.setdefault(fix, [])
            shown += [line + base for line in result["fix_lines"].get(fix, [])][: 5 - len(shown)]
        cleaner.redactions += result["redactions"]
        dropped = [
            Rejected(line + base, reason, code, raw)
            for line, code, reason, raw in result["rejected"]
        ]
        with open(spill, "rb") as f:
            lines = f.read()
        os.unlink(spill)
        dropped += self._dedupe(chunk, result, base, memoryview(lines))
        dropped.sort(key=lambda r: r.line)
        cleaner.rejected += dropped
        self.read += result["lines"]

    def _dedupe(
        self, chunk: Chunk, result: dict[str, Any], base: int, spill: memoryview
    ) -> list[Rejected]:
        """Step 6 as `_Cleaner.run` does it; writes the kept examples' lines (from `spill`, the
        output lines of the chunk's examples) and returns the dropped."""
        dedupe, near, seen = self.options.dedupe, self.near, self.seen
        keys, offsets = result["keys"], result["offsets"].tolist()
        lines = array("l", result["item_lines"])
        keyed = [keys[j : j + 16] for j in range(0, len(keys), 16)] or [None] * len(lines)
        rows = result["rows"].tolist() if near is not None else [-1] * len(lines)
        alone = near.isolated(result["bands"]).tolist() if near is not None else []
        deferred: list[tuple[int, int]] = []  # isolated examples indexed: (line, row), at the end
        dropped: list[Rejected] = []
        run = 0  # the first item of the run of kept items not yet written
        batch, batch_keys = self.batch, self.batch_keys
        write = self.out.write
        size = _clean.SIGNATURE_BATCH  # the in-process cleaner's batches of records
        for i, (line, key, row) in enumerate(zip(lines, keyed, rows, strict=True)):
            line += base
            if (line - 1) // size != batch:
                batch, batch_keys = (line - 1) // size, set()
            if key is None:
                continue  # neither exact nor near dedupe: every example is kept
            # As in `_Cleaner.run`: a signature only for the first of a content in its batch,
            # if that content was not kept before.
            fresh = key not in seen and key not in batch_keys
            batch_keys.add(key)
            first = seen.get(key) if dedupe else None
            if first is not None:
                reason, code = f"exact duplicate of line {first}", "duplicate"
            elif not fresh or row < 0 or near is None:
                seen.setdefault(key, line)
                continue
            elif alone[row]:
                deferred.append((line, row))
                seen[key] = line
                continue
            else:
                signature = self._signature(result, row)
                found = near.query(signature)
                if found is None:
                    near.add(line, signature)
                    seen[key] = line
                    continue
                code = "near_duplicate"
                reason = f"near duplicate of line {found[0]} (Jaccard similarity {found[1]:.2f})"
            dropped.append(Rejected(line, reason, code, self._raw(chunk, result, line - base)))
            write(spill[offsets[run] : offsets[i]])
            self.kept += i - run
            run = i + 1
        write(spill[offsets[run] : offsets[len(lines)]])
        self.kept += len(lines) - run
        self.batch, self.batch_keys = batch, batch_keys
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
        no_values = np.zeros(0, dtype=np.uint32)  # only bands and shingles are compared
        shingles = result["shingles"][ends[row] : ends[row + 1]]
        return Signature(no_values, result["bands"][row].tolist(), shingles)

    def _raw(self, chunk: Chunk, result: dict[str, Any], number: int) -> str:
        """The text of the chunk's line `number` (from 1), as `Record.raw` holds it."""
        newlines = result["newlines"]
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
    out.parent.mkdir(parents=True, exist_ok=True)
    spills = tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent)
    fd = os.open(plan.path, os.O_RDONLY)
    try:
        with paused_gc(), atomic_write(rejects) as rf, atomic_write(out, "wb") as f:
            merge = _Merge(options, cleaner, fd, f)
            names = [os.path.join(spills, str(i)) for i in range(len(plan.chunks))]
            tasks = [(c, fmt, options, name) for c, name in zip(plan.chunks, names, strict=True)]
            results = run_chunks(clean_chunk, tasks, workers)
            for chunk, name, result in zip(plan.chunks, names, results, strict=True):
                merge.add(chunk, result, name)
            if merge.kept + len(cleaner.rejected) != merge.read:  # every line accounted for
                raise AssertionError(
                    f"internal error: {merge.kept} kept + {len(cleaner.rejected)} rejected "
                    f"!= {merge.read} read"
                )
            rf.writelines(_json_line(r.to_dict()) for r in cleaner.rejected)
    finally:
        os.close(fd)
        shutil.rmtree(spills, ignore_errors=True)
    for p in plan.file_problems:
        if p.code in _FILE_FIXES:
            cleaner.fixes[p.code] += 1
    return clean_report(
        path, out, rejects, options, loaded, merge.read, merge.kept, cleaner, started
    )
