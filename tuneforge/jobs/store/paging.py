"""Cursor pagination, as OpenAI's lists: newest first, `after` an object's id, `has_more`.

A cursor is the row's `seq` (insertion order). The id given as `after` must belong to the
caller's scope (its organization or job): another organization's id must look exactly like
one that never existed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tuneforge.jobs.errors import NotFound

MAX_PAGE = 10000


@dataclass
class Page:
    """One page of a cursor-paginated list."""

    data: list[Any]
    has_more: bool


def clamp_limit(limit: int) -> int:
    """A page's size, 1 to `MAX_PAGE`."""
    return max(1, min(int(limit), MAX_PAGE))


def after_cursor(s: Session, q: Any, table: Any, after: str | None, desc: bool, *scope: Any) -> Any:
    """`q` limited to the rows past `after` (NotFound unless `after` is a row of `table` in
    `scope`)."""
    if not after:
        return q
    seq = s.scalar(select(table.seq).where(table.id == after, *scope))
    if seq is None:
        raise NotFound(f"`after`: no such object {after!r}", param="after")
    return q.where(table.seq < seq if desc else table.seq > seq)


def page(
    s: Session, q: Any, table: Any, after: str | None, limit: int, order: str, *scope: Any
) -> Page:
    """One page of `q` (rows of `table`) by cursor; `after` must match `scope` (the caller's
    org or job), not the page's other filters."""
    limit = clamp_limit(limit)
    desc = order != "asc"
    q = after_cursor(s, q, table, after, desc, *scope)
    q = q.order_by(table.seq.desc() if desc else table.seq.asc()).limit(limit + 1)
    rows = list(s.scalars(q))
    return Page(rows[:limit], len(rows) > limit)
