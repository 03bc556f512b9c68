"""Cleaning a dataset: fix what is safe, drop what is not, deduplicate, filter, redact.

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
   boundary. Tokens are counted with the model's tokenizer and chat template when one is given,
   else estimated as characters / 4 plus 4 per message.
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
import gc
import hashlib
import json
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from datasketch import MinHash

from tuneforge.data.io import Format, LoadedDataset, Record, parse_format, read_dataset
from tuneforge.data.pii import redact_pii
from tuneforge.data.validate import ROLES, count_tokens, estimate_tokens, validate_example
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
# How many line numbers the report keeps per fix, to show where it was applied.
_FIX_LINES_SHOWN = 5
MESSAGE_KEYS = frozenset({"role", "content", "name", "weight", "tool_calls", "tool_call_id"})


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
    tokenizer: Any = None
    """A Hugging Face tokenizer to count tokens exactly; None estimates characters / 4."""

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
        return asdict(self)


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


# --- blocklist -------------------------------------------------------------------------------


@dataclass
class Blocklist:
    """Phrases (case-insensitive, whole words) and regular expressions to keep out of the data.

    The file format: one phrase per line; lines starting with `re:` are Python regular
    expressions; `#` starts a comment line; blank lines are ignored. Phrases match whole words
    and any run of whitespace between their words; regexes are matched as written, ignoring case.

    Example:
        >>> Blocklist.from_lines(["typical of your kind", r"re:\\bidiot(s)?\\b"]).find("You idiot")
        're:\\\\bidiot(s)?\\\\b'
    """

    phrases: list[str]
    patterns: list[str]

    def __post_init__(self) -> None:
        self._phrase_re: re.Pattern | None = None
        if self.phrases:
            # Longest first, so a phrase is reported rather than a shorter one it contains.
            ordered = sorted(set(self.phrases), key=len, reverse=True)
            body = "|".join(r"\s+".join(map(re.escape, p.split())) for p in ordered)
            self._phrase_re = re.compile(rf"(?<!\w)(?:{body})(?!\w)", re.IGNORECASE)
            self._by_folded = {" ".join(p.casefold().split()): p for p in ordered}
        self._patterns = [(p, re.compile(p, re.IGNORECASE)) for p in self.patterns]

    @classmethod
    def from_lines(cls, lines: Iterable[str], source: str = "blocklist") -> Blocklist:
        """Parse blocklist lines; raises ValueError naming the line of an invalid regex."""
        phrases, patterns = [], []
        for number, line in enumerate(lines, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("re:"):
                pattern = line[3:].strip()
                try:
                    re.compile(pattern)
                except re.error as e:
                    raise ValueError(f"{source}:{number}: invalid regex {pattern!r}: {e}") from e
                patterns.append(pattern)
            else:
                phrases.append(" ".join(line.split()))
        return cls(phrases, patterns)

    @classmethod
    def load(cls, path: str | Path) -> Blocklist:
        """Read a blocklist file (UTF-8)."""
        path = Path(path)
        return cls.from_lines(path.read_text(encoding="utf-8").splitlines(), source=str(path))

    def __len__(self) -> int:
        return len(self.phrases) + len(self.patterns)

    def find(self, text: str) -> str | None:
        """The blocklisted phrase (as listed) or `re:` pattern found in `text`, or None."""
        if self._phrase_re is not None:
            match = self._phrase_re.search(text)
            if match:
                folded = " ".join(match.group(0).casefold().split())
                return self._by_folded.get(folded, match.group(0))
        for pattern, compiled in self._patterns:
            if compiled.search(text):
                return f"re:{pattern}"
        return None


# --- text normalisation ----------------------------------------------------------------------

# ASCII control characters other than "\n": with them, a text needs the full treatment.
_ASCII_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufeff]")
_FENCE = re.compile(r" {0,3}(?:```|~~~)")
_SPACE_RUN = re.compile(r"(?<=\S)[ \t]{2,}(?=\S)")


def _is_code_line(line: str) -> bool:
    """An indented code line (Markdown): four spaces or a tab before the text."""
    return line.startswith(("    ", "\t")) and not line.isspace()


def _already_clean(text: str) -> bool:
    """A quick test (C string methods only) that most ASCII prose passes: nothing to fix."""
    if not text.isascii():
        return False  # NFC and non-ASCII spaces need the full check
    if not text.isprintable() and _ASCII_CONTROL.search(text):  # isprintable: no "\n" either
        return False
    return not ("  " in text or " \n" in text or text[:1].isspace() or text[-1:].isspace())


def normalize_text(text: str) -> tuple[str, set[str]]:
    """Normalise one content string; returns the new text and the fixes applied.

    Line endings become "\\n", control characters are removed, and outside code (fenced with
    ``` or ~~~, or indented by four spaces or a tab) the text is put in Unicode NFC, runs of
    spaces and tabs between words are collapsed to one space and trailing spaces are removed.
    Code keeps its exact characters and indentation. The whole is stripped at both ends (leading
    indentation is kept when the text opens with indented code).

    Example:
        >>> normalize_text("  Hello   world \\r\\n")
        ('Hello world', {'whitespace', 'line_endings'})
    """
    if _already_clean(text):
        return text, set()
    fixes: set[str] = set()
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        fixes.add("line_endings")
    if _CONTROL.search(text):
        text = _CONTROL.sub("", text)
        fixes.add("control_characters")
    out = []
    in_fence = False
    for line in text.split("\n"):
        if _FENCE.match(line):
            in_fence = not in_fence
            out.append(line.rstrip() if not in_fence else line)
            continue
        if in_fence or _is_code_line(line):
            out.append(line)
            continue
        if not line.isascii() and not unicodedata.is_normalized("NFC", line):
            line = unicodedata.normalize("NFC", line)
            fixes.add("unicode_nfc")
        new = _SPACE_RUN.sub(" ", line).rstrip(" \t")
        if new != line:
            fixes.add("whitespace")
        out.append(new)
    text = "\n".join(out)
    first = text.lstrip("\n").split("\n", 1)[0]
    stripped = text.lstrip("\n").rstrip() if _is_code_line(first) else text.strip()
    if stripped != text:
        fixes.add("whitespace")
    return stripped, fixes


# --- per-example fixes -----------------------------------------------------------------------

Slot = tuple[Any, Any, str]  # (container, key, role): one content string, container[key]


def _message_slots(messages: Any, slots: list[Slot], prefix: str = "") -> None:
    if type(messages) is not list:
        return
    for m in messages:
        if type(m) is not dict:
            continue
        role = m.get("role")
        role = prefix + (role if type(role) is str else "?")
        content = m.get("content")
        if type(content) is str:
            slots.append((m, "content", role))
        elif type(content) is list:
            for part in content:
                if type(part) is dict and type(part.get("text")) is str:
                    slots.append((part, "text", role))


def text_slots(obj: dict) -> list[Slot]:
    """Every content string of an example, with the role (or field) it belongs to."""
    slots: list[Slot] = []
    if "messages" in obj:
        _message_slots(obj["messages"], slots)
    for key in ("prompt", "completion", "text"):
        if type(obj.get(key)) is str:
            slots.append((obj, key, key))
    inp = obj.get("input")
    if type(inp) is dict:
        _message_slots(inp.get("messages"), slots, "input:")
    for side in ("preferred", "non_preferred"):
        for key in (f"{side}_output", f"{side}_completion"):
            value = obj.get(key)
            if type(value) is str:
                slots.append((obj, key, f"{side}:assistant"))
            else:
                _message_slots(value, slots, f"{side}:")
    return slots


def _message_lists(obj: dict) -> Iterable[list]:
    for value in (
        obj.get("messages"),
        obj["input"].get("messages") if type(obj.get("input")) is dict else None,
        obj.get("preferred_output"),
        obj.get("non_preferred_output"),
    ):
        if type(value) is list:
            yield value


def _weight_as_int(weight: Any) -> int | None:
    """0 or 1 for a weight written as 1.0, true or "1" (and the same for 0), else None."""
    if type(weight) is float or type(weight) is bool:
        return int(weight) if weight in (0, 1) else None
    if type(weight) is str and weight.strip() in ("0", "1"):
        return int(weight)
    return None


def fix_example(obj: dict) -> tuple[list[Slot], set[str]]:
    """Apply the safe fixes to `obj` in place; returns its content slots and the fixes applied."""
    fixes: set[str] = set()
    for messages in _message_lists(obj):
        for m in messages:
            if type(m) is not dict:
                continue
            role = m.get("role")
            if type(role) is str and role not in ROLES:
                lowered = role.strip().lower()
                if lowered in ROLES:
                    m["role"] = lowered
                    fixes.add("role_case")
            if "weight" in m and type(m["weight"]) is not int:
                weight = _weight_as_int(m["weight"])
                if weight is not None:
                    m["weight"] = weight
                    fixes.add("weight")
            if not MESSAGE_KEYS.issuperset(m):
                for key in [k for k in m if k not in MESSAGE_KEYS]:
                    del m[key]
                fixes.add("message_keys")
    slots = text_slots(obj)
    for container, key, _ in slots:
        text = container[key]
        new, applied = normalize_text(text)
        if applied:
            container[key] = new
            fixes |= applied
    return slots, fixes


# --- length ----------------------------------------------------------------------------------


class LengthCheck:
    """Counts an example's tokens (exactly with a tokenizer, else estimated) and truncates."""

    def __init__(self, fmt: Format | None, max_tokens: int, tokenizer: Any = None):
        self.fmt = fmt
        self.max_tokens = max_tokens
        self.tokenizer = tokenizer

    def count(self, obj: dict) -> int:
        """Tokens training sees for `obj` (an estimate without a tokenizer)."""
        if self.tokenizer is None:
            return estimate_tokens(obj, self.fmt)
        return count_tokens(obj, self.fmt, self.tokenizer)

    def truncate(self, obj: dict) -> dict | None:
        """The longest cut of `obj` that fits, or None when it cannot be cut safely.

        Chat: the longest prefix of the conversation that ends with an assistant message
        (a reply is never cut mid-way, so the model never learns to stop mid-sentence). Text:
        the longest prefix ending at a word boundary. Prompt-completion and preference examples
        cannot be shortened without cutting the answer or its context: None.
        """
        if self.fmt is Format.CHAT:
            messages = obj["messages"]
            ends = [i + 1 for i, m in enumerate(messages) if m.get("role") == "assistant"]
            for end in reversed(ends[:-1] if ends and ends[-1] == len(messages) else ends):
                candidate = {**obj, "messages": messages[:end]}
                if not _trains(candidate["messages"]):
                    continue
                if self.count(candidate) <= self.max_tokens:
                    return candidate
            return None
        if self.fmt is Format.TEXT:
            text = obj["text"]
            low, high = 0, len(text)  # invariant: a cut at `low` chars fits
            while low < high:
                mid = (low + high + 1) // 2
                if self.count({**obj, "text": text[:mid]}) <= self.max_tokens:
                    low = mid
                else:
                    high = mid - 1
            cut = text[:low]
            if low < len(text) and not text[low].isspace():
                space = max(cut.rfind(" "), cut.rfind("\n"))
                cut = cut[:space] if space > 0 else cut
            cut = cut.rstrip()
            return {**obj, "text": cut} if cut else None
        return None


def _trains(messages: list) -> bool:
    return any(m.get("role") == "assistant" and m.get("weight", 1) != 0 for m in messages)


# --- deduplication ---------------------------------------------------------------------------

# Roles whose text is shared boilerplate across a dataset (a system prompt) and would make
# unrelated conversations look alike; near-duplicate detection compares the rest.
_BOILERPLATE_ROLES = frozenset({"system", "developer", "input:system", "input:developer"})
_WORD = re.compile(r"\w+")


def content_key(obj: dict, slots: list[Slot] | None = None) -> bytes:
    """A 16-byte hash of what an example teaches: its roles, texts, tool calls and tools.

    Case and spacing are ignored, and so are fields that do not reach the model (ids,
    metadata), so two examples with the same key are duplicates for training.
    """
    if slots is None:
        slots = text_slots(obj)
    parts = [f"{role}\x01{container[key]}" for container, key, role in slots]
    for messages in _message_lists(obj):
        for m in messages:
            if type(m) is dict and m.get("tool_calls"):
                parts.append("calls\x01" + _tool_calls_text(m["tool_calls"]))
    for tools in (
        obj.get("tools"),
        (obj.get("input") or {}).get("tools") if type(obj.get("input")) is dict else None,
    ):
        if tools:
            parts.append("tools\x01" + json.dumps(tools, sort_keys=True, ensure_ascii=False))
    text = "\x00".join(parts) if parts else json.dumps(obj, sort_keys=True, ensure_ascii=False)
    text = " ".join(text.lower().split())
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


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
        self._tables: list[dict[int, list[int]]] = [{} for _ in range(self.bands)]
        self._shingles: dict[int, np.ndarray] = {}
        self._unique: set[int] = set()
        self._pow = _powers(_BASE, 1)
        self._pow_inv = _powers(_BASE_INV, 1)

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
        if len(self._pow) < n + 1:
            size = max(n + 1, 2 * len(self._pow))
            self._pow, self._pow_inv = _powers(_BASE, size), _powers(_BASE_INV, size)
        word = _WORD_BYTE[data]
        edges = np.flatnonzero(np.diff(np.r_[False, word, False]))
        starts, ends = edges[0::2], edges[1::2]
        # Polynomial hash of each word from prefix sums: sum(c_i * BASE**i) over the word,
        # shifted to start at power 0 so the same word hashes the same anywhere.
        prefix = np.zeros(n + 1, dtype=np.uint32)
        np.cumsum(data * self._pow[:n], dtype=np.uint32, out=prefix[1:])
        hashes = (prefix[ends] - prefix[starts]) * self._pow_inv[starts]
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
                table[band] = [key]
            else:
                found.append(key)
        self._shingles[key] = signature.shingles


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
            LengthCheck(self.fmt, options.max_tokens, options.tokenizer)
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
                    about = "" if self.length.tokenizer is not None else "about "
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
        chunk = 2048  # near-duplicate signatures are computed a chunk at a time (vectorised)
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


@contextlib.contextmanager
def paused_gc():
    """Pause Python's cyclic garbage collector for a bulk pass over a dataset.

    Loading and cleaning allocate millions of small dicts and strings, none in reference
    cycles; each collection would rescan every object already loaded, which costs a third of
    the run time on large files. Reference counting still frees everything as usual.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


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

    rejections = Counter(r.code for r in cleaner.rejected)
    examples: dict[str, str] = {}
    for r in cleaner.rejected:
        examples.setdefault(r.code, f"line {r.line}: {r.reason}")
    token_count = None
    if options.max_tokens is not None:
        token_count = "tokenizer" if options.tokenizer is not None else "estimate"
    return CleanReport(
        input=str(path),
        output=str(out),
        rejects=str(rejects),
        format=None if loaded.format is None else loaded.format.value,
        unit=loaded.unit,
        read=read,
        kept=len(kept),
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


def _json_line(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False) + "\n"


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
