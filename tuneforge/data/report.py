"""What checking a dataset found: `Report`, and the bounded sample of problems of a streamed
check."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tuneforge.data.io import Format, Problem
from tuneforge.data.lengths import TokenStats


@dataclass
class Report:
    """The result of checking one dataset.

    `problems` are ordered: file-wide ones first, then by line. `examples_read` counts records
    (blank lines excluded); `examples_valid` those with no error. `ok` is True when training
    would accept the file: no error-severity problem at all.
    """

    path: str
    format: Format | None
    unit: str
    examples_read: int
    examples_valid: int
    problems: list[Problem]
    stats: dict[str, Any] = field(default_factory=dict)
    tokens: TokenStats | None = None
    # (code, severity) -> count of every problem, when `problems` is only a sample
    # (`validate_streamed`).
    problem_counts: Counter[tuple[str, str]] | None = None

    def _counts(self) -> Counter[tuple[str, str]]:
        if self.problem_counts is not None:
            return self.problem_counts
        return Counter((p.code, p.severity) for p in self.problems)

    @property
    def counts_by_code(self) -> dict[str, int]:
        """How many problems of each code, most frequent first."""
        counts: Counter[str] = Counter()
        for (code, _), n in self._counts().items():
            counts[code] += n
        return dict(counts.most_common())

    @property
    def counts_by_severity(self) -> dict[str, int]:
        """How many errors and warnings."""
        counts: Counter[str] = Counter()
        for (_, severity), n in self._counts().items():
            counts[severity] += n
        return {"error": counts["error"], "warning": counts["warning"]}

    @property
    def errors(self) -> list[Problem]:
        """The error-severity problems."""
        return [p for p in self.problems if p.severity == "error"]

    @property
    def ok(self) -> bool:
        """True when there is no error: training would not fail on this file."""
        return all(p.severity != "error" for p in self.problems)

    def listed(self, limit: int | None = None) -> list[Problem]:
        """The problems to show: errors before warnings, each in line order; `limit` at most."""
        ordered = [p for p in self.problems if p.severity == "error"]
        ordered += [p for p in self.problems if p.severity != "error"]
        return ordered if not limit else ordered[:limit]

    def to_dict(self, limit: int | None = None) -> dict[str, Any]:
        """The report as a JSON-ready dict; `limit` caps how many problems are listed."""
        shown = self.listed(limit)
        return {
            "path": self.path,
            "format": None if self.format is None else self.format.value,
            "unit": self.unit,
            "ok": self.ok,
            "examples_read": self.examples_read,
            "examples_valid": self.examples_valid,
            "counts_by_severity": self.counts_by_severity,
            "counts_by_code": self.counts_by_code,
            "stats": self.stats,
            "tokens": None if self.tokens is None else self.tokens.to_dict(),
            "problems_total": sum(self._counts().values()),
            "problems": [p.to_dict() for p in shown],
        }


# --- bounded memory (server uploads) ---------------------------------------------------------


class ProblemSample:
    """Counts of every problem, and the first `keep` errors and warnings by line.

    File-wide problems (no line) sort first, as in `Report.problems`.
    """

    def __init__(self, keep: int):
        self.keep = keep
        self.counts: Counter[tuple[str, str]] = Counter()
        self.kept: dict[str, list[Problem]] = {"error": [], "warning": []}

    def add(self, p: Problem) -> None:
        self.counts[p.code, p.severity] += 1
        kept = self.kept[p.severity]
        kept.append(p)
        if len(kept) > 2 * self.keep:  # trim now and then: amortized O(1) per problem
            kept.sort(key=_problem_order)
            del kept[self.keep :]

    def problems(self) -> list[Problem]:
        out = []
        for kept in self.kept.values():
            kept.sort(key=_problem_order)
            out += kept[: self.keep]
        return sorted(out, key=_problem_order)


def _problem_order(p: Problem) -> tuple[bool, int]:
    return (p.line is not None, p.line or 0)
