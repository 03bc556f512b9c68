"""Blocklists: phrases and regular expressions to keep out of training data and to count in
generated text (`clean` drops examples with one; evaluation reports the rate in outputs)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


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
