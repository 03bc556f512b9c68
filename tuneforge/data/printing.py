"""Printing a check `Report` with Rich."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from tuneforge.data.problems import UNCLEANABLE
from tuneforge.data.report import Report


def print_report(report: Report, console: Console, limit: int = 50) -> None:
    """Print `report` with Rich: each problem (line, code, message, fix), a summary table, the
    counts by code and a verdict line. `limit` caps the problems listed (0: all).
    """

    unit = {"element": "item", "row": "row"}.get(report.unit, "line")
    shown = report.listed(limit)
    if shown:
        table = Table(box=None, show_edge=False, pad_edge=False, header_style="bold")
        table.add_column(unit, justify="right", no_wrap=True)
        table.add_column("code", no_wrap=True)
        table.add_column("problem and fix")
        for p in shown:
            colour = "red" if p.severity == "error" else "yellow"
            cell = Text(p.message)
            cell.append("\nfix: " + p.fix, style="dim")
            where = "file" if p.line is None else str(p.line)
            table.add_row(where, Text(p.code, style=colour), cell)
        console.print(table)
        if len(shown) < len(report.problems):
            console.print(
                f"[dim]… and {len(report.problems) - len(shown)} more problems "
                "(--limit 0 lists all, --json gives them all as JSON)[/dim]"
            )
        console.print()

    summary = Table(title="summary", box=None, show_header=False, title_justify="left")
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("file", escape(report.path))
    summary.add_row("format", str(report.format or "unknown"))
    summary.add_row("examples read", f"{report.examples_read:,}")
    summary.add_row("examples valid", f"{report.examples_valid:,}")
    severity = report.counts_by_severity
    summary.add_row("errors / warnings", f"{severity['error']:,} / {severity['warning']:,}")
    for key, value in report.stats.items():
        summary.add_row(key.replace("_", " "), f"{value:,}")
    tokens = report.tokens
    if tokens is not None:
        kind = "tokens" if tokens.exact else "tokens (estimated)"
        summary.add_row(
            kind,
            f"min {tokens.min:,}  mean {tokens.mean:,.0f}  p95 {tokens.p95:,}  max {tokens.max:,}"
            f"  total {tokens.total:,}",
        )
        if tokens.limit is not None:
            summary.add_row("over the limit", f"{tokens.over_limit:,} (limit {tokens.limit:,})")
    console.print(summary)

    if report.problems:
        by_code = Table(title="problems by code", box=None, title_justify="left")
        by_code.add_column("code")
        by_code.add_column("severity")
        by_code.add_column("count", justify="right")
        pairs: dict[tuple[str, str], int] = {}
        for p in report.problems:
            pairs[p.code, p.severity] = pairs.get((p.code, p.severity), 0) + 1
        for (code, sev), n in sorted(pairs.items(), key=lambda kv: (kv[0][1], -kv[1])):
            colour = "red" if sev == "error" else "yellow"
            by_code.add_row(Text(code, style=colour), sev, f"{n:,}")
        console.print(by_code)

    errors = severity["error"]
    if report.ok:
        note = f", {severity['warning']:,} warning(s) worth a look" if severity["warning"] else ""
        console.print(
            f"[bold green]✓ ready to train:[/bold green] {report.examples_valid:,} examples{note}"
        )
    else:
        fatal = next((p for p in report.problems if p.code in UNCLEANABLE), None)
        advice = (
            escape(f"{fatal.message}: {fatal.fix}.")
            if fatal is not None
            else f"`tuneforge data clean {escape(report.path)}` fixes what is safe and drops "
            "the rest."
        )
        console.print(f"[bold red]✗ training would fail:[/bold red] {errors:,} error(s). {advice}")
