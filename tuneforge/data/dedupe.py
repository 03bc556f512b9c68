"""What counts as a duplicate, and finding them: exact (`content_key`) and near (MinHash LSH).

`content_key` is the one definition of an exact duplicate, used by `data check`, `data clean`
and `data split` alike: two examples with the same roles, texts, tool calls and tools, ignoring
case and spacing. `ExactDuplicates` finds them among any number of examples in bounded memory;
`NearDuplicateIndex` finds examples whose word shingles overlap at least a threshold.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import xxhash
from datasketch import MinHash

from tuneforge.data.content import Slot, message_lists, text_slots

# Roles whose text is shared boilerplate across a dataset (a system prompt) and would make
# unrelated conversations look alike; near-duplicate detection compares the rest.
_BOILERPLATE_ROLES = frozenset({"system", "developer", "input:system", "input:developer"})
_WORD = re.compile(r"\w+")


def content_key(obj: dict, slots: list[Slot] | None = None) -> bytes:
    """A 16-byte hash of what an example teaches: its roles, texts, tool calls and tools.

    Case and spacing are ignored (each text lower-cased, its runs of whitespace made one space,
    its ends stripped), and so are fields that do not reach the model (ids, metadata), so two
    examples with the same key are duplicates for training. `slots`: `text_slots(obj)`, when
    the caller has them already.
    """
    plain = _plain_chat_parts(obj)
    if plain:
        return plain_chat_key(plain)
    parts = _parts(obj, text_slots(obj) if slots is None else slots)
    # Labels and texts alternate, so "\x00" between them keeps the structure unambiguous.
    text = (
        "\x00".join(parts)
        if parts
        else _spaced(json.dumps(obj, sort_keys=True, ensure_ascii=False))
    )
    return _digest(text)


def plain_chat_key(parts: list[str]) -> bytes:
    """`content_key` of a chat example of plain `{"role", "content"}` messages, given as its
    roles and contents, alternating."""
    text = "\x00".join(parts)
    # Most examples are spaced already, which one scan of the whole text tells (with each
    # "\x00" read as a space, a text's edge space makes a double one); the others are spaced
    # text by text.
    if not _is_spaced(text.replace("\x00", " ")):
        text = "\x00".join([_spaced(p) if i % 2 else p for i, p in enumerate(parts)])
    return _digest(text)


def _digest(text: str) -> bytes:
    return xxhash.xxh3_128_digest(text.lower().encode("utf-8", "surrogatepass"))


def _is_spaced(text: str) -> bool:
    """True when `text` holds no whitespace but single spaces inside it, told by quick C scans
    rather than by splitting every word: for ASCII, a search for each other whitespace
    character (a `memchr` each); otherwise `isprintable`, false for all whitespace but " "."""
    if text.isascii():
        return not (
            "  " in text
            or "\n" in text
            or "\t" in text
            or "\r" in text
            or "\x0b" in text
            or "\x0c" in text
            or "\x1c" in text
            or "\x1d" in text
            or "\x1e" in text
            or "\x1f" in text
            or text[:1] == " "
            or text[-1:] == " "
        )
    return text.isprintable() and "  " not in text and text[:1] != " " and text[-1:] != " "


def _spaced(text: str) -> str:
    """`text` with runs of whitespace made one space and its ends stripped."""
    return text if _is_spaced(text) else " ".join(text.split())


def _plain_chat_parts(obj: dict) -> list[str] | None:
    """The roles and contents, alternating, of a chat example of plain `{"role", "content"}`
    messages (most are), found without walking its slots; None for any other example."""
    messages = obj.get("messages")
    if len(obj) != 1 or type(messages) is not list:
        return None
    parts: list[str] = []
    append = parts.append
    for m in messages:
        if type(m) is not dict or len(m) != 2:
            return None
        role = m.get("role")
        content = m.get("content")
        if type(role) is not str or type(content) is not str:
            return None
        append(role)
        append(content)
    return parts


def _parts(obj: dict, slots: list[Slot]) -> list[str]:
    """Labels (roles, "calls", "tools") alternating with the texts they lead, spaced."""
    parts: list[str] = []
    for container, key, role in slots:
        parts += (role, _spaced(container[key]))
    for messages in message_lists(obj):
        for m in messages:
            if type(m) is dict and m.get("tool_calls"):
                parts += ("calls", _spaced(_tool_calls_text(m["tool_calls"])))
    for tools in (
        obj.get("tools"),
        (obj.get("input") or {}).get("tools") if type(obj.get("input")) is dict else None,
    ):
        if tools:
            text = json.dumps(tools, sort_keys=True, ensure_ascii=False)
            parts += ("tools", _spaced(text))
    return parts


def _tool_calls_text(calls: Any) -> str:
    """Tool calls without their ids (random per example, irrelevant to what is learned)."""
    if type(calls) is not list:
        return json.dumps(calls, sort_keys=True, ensure_ascii=False, default=str)
    kept = []
    for call in calls:
        fn = call.get("function") if type(call) is dict else None
        kept.append([fn.get("name"), fn.get("arguments")] if type(fn) is dict else call)
    return json.dumps(kept, sort_keys=True, ensure_ascii=False, default=str)


def shingle_text(slots: list[Slot]) -> str:
    """The text near-duplicate detection compares: each content led by its role.

    System messages are left out (a shared system prompt would make every pair look alike)
    unless the example has nothing else.
    """
    chosen = [s for s in slots if s[2] not in _BOILERPLATE_ROLES] or slots
    return "\n".join(f"{role}: {container[key]}" for container, key, role in chosen)


def lsh_params(threshold: float, num_perm: int, recall: float = 0.98) -> tuple[int, int]:
    """LSH bands and rows `(b, r)` that find a pair at `threshold` with probability >= `recall`.

    The fewest bands (so the fewest false candidates) reaching that recall. A pair of Jaccard
    similarity s shares a band with probability 1 - (1 - s**r) ** b. Candidates are confirmed
    exactly afterwards, so false candidates only cost time, while a missed pair is a kept
    duplicate.
    """
    for r in range(num_perm, 0, -1):
        b = num_perm // r
        if 1 - (1 - threshold**r) ** b >= recall:
            return b, r
    return num_perm, 1


# Bytes that belong to words: ASCII letters (the text is lower-cased), digits, "_" and every
# byte of a multi-byte UTF-8 character, so non-Latin scripts form words too.
_WORD_BYTE = np.zeros(256, dtype=bool)
_WORD_BYTE[list(b"abcdefghijklmnopqrstuvwxyz0123456789_")] = True
_WORD_BYTE[128:] = True
# Polynomial word hash base (odd, so it is invertible modulo 2**32) and the shingle fold.
_BASE = 0x01000193
_BASE_INV = pow(_BASE, -1, 1 << 32)
_FOLD = np.uint32(0x9E3779B1)


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, the pre-mix of datasketch's "affine32" MinHash scheme."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _powers(base: int, n: int) -> np.ndarray:
    """base**0 .. base**(n-1) modulo 2**32."""
    out = np.full(n, base, dtype=np.uint32)
    out[0] = 1
    return np.cumprod(out, dtype=np.uint32)


# BASE**i and BASE**-i modulo 2**32 for i < len, grown as longer batches of text come.
_POWERS: list[np.ndarray] = [_powers(_BASE, 1), _powers(_BASE_INV, 1)]


@dataclass
class Signature:
    """An example's MinHash, its LSH band keys, and its shingle hashes (to confirm exactly)."""

    hashvalues: np.ndarray  # (num_perm,) uint32: equal to datasketch MinHash.hashvalues
    bands: list[int]  # one key per LSH band
    shingles: np.ndarray  # uint32 shingle hashes (repeats possible)


class NearDuplicateIndex:
    """Finds near duplicates: MinHash LSH for candidates, exact Jaccard similarity to confirm.

    An example is the set of its word shingles (`shingle_size` consecutive words, hashed to 32
    bits). Its MinHash is datasketch's (`MinHash(num_perm, seed)`, "affine32" scheme: the same
    permutations, and hash values equal to `update_batch` over the same shingle hashes), but
    computed for thousands of examples at once with numpy, words and shingles included, which is
    what makes cleaning run at tens of thousands of examples a second. The LSH bands are chosen
    for recall at the threshold (`lsh_params`) and kept in plain dicts: a candidate costs an
    exact Jaccard check, a missed pair would be a kept duplicate.

    Example:
        >>> index = NearDuplicateIndex(threshold=0.9)
        >>> a, b = index.signatures(["the cat sat on the mat", "The cat sat on the mat!"])
        >>> index.add(1, a); index.query(b)
        (1, 1.0)
    """

    def __init__(
        self, threshold: float = 0.9, num_perm: int = 64, shingle_size: int = 2, seed: int = 1
    ):
        self.threshold = threshold
        self.num_perm = num_perm
        self.shingle_size = shingle_size
        self.seed = seed
        self._a, self._b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
        self.bands, self.rows = lsh_params(threshold, num_perm)
        # Random odd multipliers folding a band's `rows` values into one 64-bit key.
        rng = np.random.default_rng(seed)
        self._band_mix = rng.integers(1, 1 << 63, size=self.rows, dtype=np.uint64) | np.uint64(1)
        self._tables: list[dict[int, int | list[int]]] = [{} for _ in range(self.bands)]
        self._shingles: dict[int, np.ndarray] = {}
        self._unique: set[int] = set()

    def __len__(self) -> int:
        return len(self._shingles)

    def _word_hashes(self, texts: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """(word hashes, index of the text each word belongs to) for all words of `texts`.

        Words are runs of letters, digits and "_", compared ignoring case.
        """
        encoded = [t.lower().encode("utf-8", "surrogatepass") if t else b"" for t in texts]
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        # A separator byte between texts, so that no word spans two of them.
        data = np.frombuffer(b"\x00".join(encoded) + b"\x00", dtype=np.uint8)
        n = len(data)
        if len(_POWERS[0]) < n + 1:  # shared by every index: each batch reuses them
            size = max(n + 1, 2 * len(_POWERS[0]))
            _POWERS[:] = _powers(_BASE, size), _powers(_BASE_INV, size)
        pow_, pow_inv = _POWERS
        word = _WORD_BYTE.take(data)  # `take`: a byte table lookup, faster than indexing
        edges = np.flatnonzero(np.diff(np.r_[False, word, False]))
        starts, ends = edges[0::2], edges[1::2]
        # Polynomial hash of each word from prefix sums: sum(c_i * BASE**i) over the word,
        # shifted to start at power 0 so the same word hashes the same anywhere.
        prefix = np.empty(n + 1, dtype=np.uint32)
        prefix[0] = 0
        np.multiply(data, pow_[:n], out=prefix[1:])
        np.cumsum(prefix[1:], out=prefix[1:])
        hashes = (prefix[ends] - prefix[starts]) * pow_inv[starts]
        text_starts = np.r_[0, np.cumsum(lengths + 1)[:-1]]
        owners = np.searchsorted(text_starts, starts, side="right") - 1
        return hashes, owners

    def signatures(self, texts: list[str | None]) -> list[Signature | None]:
        """Signatures for many texts at once (see `shingle_text`); None for a text without words."""
        out: list[Signature | None] = [None] * len(texts)
        if not any(texts):
            return out
        words, owners = self._word_hashes(texts)
        k = self.shingle_size
        shingles, shingle_owners = words.copy(), owners
        if k > 1:
            m = len(words) - k + 1
            shingles = words[:m].copy() if m > 0 else words[:0].copy()
            for j in range(1, k):
                shingles *= _FOLD
                shingles ^= words[j : j + m]
            inside = owners[: max(m, 0)] == owners[k - 1 :]
            shingles, shingle_owners = shingles[inside], owners[: max(m, 0)][inside]
            # Texts with fewer than k words are one shingle: all their words folded.
            counts = np.bincount(owners, minlength=len(texts))
            short = np.flatnonzero((counts > 0) & (counts < k))
            if len(short):
                extra = []
                for i in short.tolist():
                    h = 0
                    for w in words[owners == i].tolist():
                        h = ((h * int(_FOLD)) ^ w) & 0xFFFFFFFF
                    extra.append(h)
                shingles = np.r_[shingles, np.array(extra, dtype=np.uint32)]
                shingle_owners = np.r_[shingle_owners, short]
                order = np.argsort(shingle_owners, kind="stable")
                shingles, shingle_owners = shingles[order], shingle_owners[order]
        if not len(shingles):
            return out
        bounds = np.flatnonzero(np.r_[True, shingle_owners[1:] != shingle_owners[:-1]])
        hashvalues = self._minhash(shingles, bounds)
        band_keys = self._band_keys(hashvalues).tolist()
        ends = [*bounds[1:].tolist(), len(shingles)]
        for row, (start, end) in enumerate(zip(bounds.tolist(), ends, strict=True)):
            out[int(shingle_owners[start])] = Signature(
                hashvalues[row], band_keys[row], shingles[start:end]
            )
        return out

    def _minhash(self, shingles: np.ndarray, bounds: np.ndarray) -> np.ndarray:
        """(examples, num_perm) minima of each permutation over each example's shingles."""
        mixed = _fmix32(shingles)
        out = np.empty((len(bounds), self.num_perm), dtype=np.uint32)
        permuted = np.empty_like(mixed)
        # One permutation at a time: a 1-D pass over the shingles stays in cache, where a
        # (shingles, num_perm) matrix would not.
        for j in range(self.num_perm):
            np.multiply(mixed, self._a[j], out=permuted)
            permuted += self._b[j]
            out[:, j] = np.minimum.reduceat(permuted, bounds)
        return out

    def _band_keys(self, hashvalues: np.ndarray) -> np.ndarray:
        """(examples, bands) uint64 keys: each band's rows folded with random odd multipliers."""
        n = len(hashvalues)
        used = hashvalues[:, : self.bands * self.rows].reshape(n, self.bands, self.rows)
        return (used.astype(np.uint64) * self._band_mix).sum(axis=2, dtype=np.uint64)

    def query(self, signature: Signature) -> tuple[int, float] | None:
        """(key, similarity) of the most similar indexed example at or above the threshold."""
        candidates: set[int] = set()
        for table, band in zip(self._tables, signature.bands, strict=True):
            found = table.get(band)
            if found is not None:
                if type(found) is int:
                    candidates.add(found)
                else:
                    candidates.update(found)
        if not candidates:
            return None
        mine = np.unique(signature.shingles)
        best: tuple[int, float] | None = None
        for key in candidates:
            theirs = self._shingles[key]
            if key not in self._unique:  # made unique on first comparison, and kept so
                theirs = self._shingles[key] = np.unique(theirs)
                self._unique.add(key)
            small, large = sorted((len(mine), len(theirs)))
            if small < self.threshold * large:
                continue  # the sizes alone keep the similarity under the threshold
            common = np.intersect1d(mine, theirs, assume_unique=True).size
            similarity = common / (len(mine) + len(theirs) - common)
            # The most similar wins; among equals, the earliest.
            if similarity >= self.threshold and (
                best is None or (similarity, -key) > (best[1], -best[0])
            ):
                best = (key, similarity)
        return best

    def add(self, key: int, signature: Signature) -> None:
        """Index an example under `key` (its line number: the earliest wins ties)."""
        for table, band in zip(self._tables, signature.bands, strict=True):
            found = table.get(band)
            if found is None:
                table[band] = key  # most band keys stay unique: no list for them
            elif type(found) is int:
                table[band] = [found, key]
            else:
                found.append(key)
        self._shingles[key] = signature.shingles

    def isolated(self, bands: np.ndarray) -> np.ndarray:
        """For rows of band keys (examples, bands), True where no band key is indexed or shared
        with another row: such an example has no candidate, so `query` finds nothing for it
        before or after any of the other rows is added, and `add_isolated` may add it later."""
        alone = np.ones(len(bands), dtype=bool)
        for j, table in enumerate(self._tables):
            column = bands[:, j]
            ordered = np.sort(column)
            shared = ordered[1:][ordered[1:] == ordered[:-1]]
            if len(shared):
                alone &= ~np.isin(column, shared)
            if table:  # one lookup per row (`keys() & set` would walk the whole table)
                alone &= ~np.fromiter(map(table.__contains__, column.tolist()), bool, len(column))
        return alone

    def add_isolated(self, keys: list[int], bands: np.ndarray, shingles: list[np.ndarray]) -> None:
        """`add` for many examples at once, each `isolated` among these and the indexed ones."""
        for table, column in zip(self._tables, bands.T, strict=True):
            table.update(zip(column.tolist(), keys, strict=True))
        self._shingles.update(zip(keys, shingles, strict=True))


# --- exact duplicates in bounded memory -----------------------------------------------------

# `ExactDuplicates` keeps this many examples' hashes in memory (24 MiB), then spills them to disk.
DUPLICATES_IN_MEMORY = 1 << 20
_BUCKETS = 16  # spilled hashes are split by their top bits: one bucket is sorted at a time
_ENTRY = [("high", "<u8"), ("low", "<u8"), ("line", "<u8")]


class ExactDuplicates:
    """Exact duplicates from one 16-byte `content_key` and a line number per example (24 bytes, in a
    flat array): no line and no per-example Python object is kept. Past `in_memory`
    examples the entries go to temporary bucket files, so memory stays bounded by one
    bucket however many lines the file has."""

    def __init__(self, in_memory: int | None = None) -> None:
        self.in_memory = DUPLICATES_IN_MEMORY if in_memory is None else in_memory
        self.entries = array("Q")  # high, low, line, high, low, line, ...
        self.count = 0
        self._spill_dir: str | None = None

    def add(self, key: bytes, line: int) -> None:
        """Note an example by its 16-byte `content_key` and line number."""
        self.entries.extend(
            (int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little"), line)
        )
        self.count += 1
        if len(self.entries) >= 3 * self.in_memory:
            self._spill()

    def add_many(self, keys: bytes, lines: Any) -> None:
        """`add` for many examples at once: their keys end to end, and their line numbers (an
        integer array or sequence of the same length)."""
        entries = np.empty(len(lines), dtype=_ENTRY)
        pairs = np.frombuffer(keys, dtype="<u8")
        entries["high"], entries["low"] = pairs[0::2], pairs[1::2]
        entries["line"] = lines
        self.entries.frombytes(entries.tobytes())
        self.count += len(entries)
        if len(self.entries) >= 3 * self.in_memory:
            self._spill()

    def _spill(self) -> None:
        if self._spill_dir is None:
            self._spill_dir = tempfile.mkdtemp(prefix="tuneforge-duplicates-")
        entries = np.frombuffer(self.entries, dtype=_ENTRY)
        bucket = entries["high"] >> np.uint64(64 - 4)
        for b in range(_BUCKETS):
            with open(os.path.join(self._spill_dir, str(b)), "ab") as f:
                f.write(entries[bucket == b].tobytes())
        del entries, bucket
        self.entries = array("Q")

    def found(self) -> Iterator[tuple[int, int]]:
        """(line, line of its first copy) of every duplicate; in line order within a bucket."""
        if self._spill_dir is None:
            yield from _duplicates_in(np.frombuffer(self.entries, dtype=_ENTRY))
            return
        self._spill()
        try:
            for b in range(_BUCKETS):
                path = os.path.join(self._spill_dir, str(b))
                if os.path.exists(path):
                    yield from _duplicates_in(np.fromfile(path, dtype=_ENTRY))
        finally:
            shutil.rmtree(self._spill_dir, ignore_errors=True)


def _duplicates_in(entries: Any) -> Iterator[tuple[int, int]]:
    if len(entries) < 2:
        return
    order = np.lexsort((entries["line"], entries["low"], entries["high"]))  # by hash, then line
    e = entries[order]
    same = np.zeros(len(e), dtype=bool)
    same[1:] = (e["high"][1:] == e["high"][:-1]) & (e["low"][1:] == e["low"][:-1])
    # The first line of each run of equal hashes, carried along the run.
    starts = np.where(~same, np.arange(len(e)), 0)
    np.maximum.accumulate(starts, out=starts)
    dup_lines, first_lines = e["line"][same], e["line"][starts[same]]
    by_line = np.argsort(dup_lines, kind="stable")
    for i in by_line.tolist():
        yield int(dup_lines[i]), int(first_lines[i])
