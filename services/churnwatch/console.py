"""
Terminal rendering of results (rich tables); the only place that formats for humans.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from churnwatch.replay.demo import DemoResult
from churnwatch.replay.engine import Counts


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


PIPED_WIDTH: Final = 200
"""Columns of output that is not a terminal (a file, a pipe): wide enough that no table header
is cut and no sentence is split; a terminal gets its own width."""
PLAIN_EVERY_SECONDS: Final = 5.0
"""How often plain progress lines are written when stderr is not a terminal."""


def terminal(*, stderr: bool = False, quiet: bool = False) -> Console:
    """
    The console of a command: a terminal's own width, or `PIPED_WIDTH` columns without colour
    when the stream is piped or redirected.
    """
    stream = sys.stderr if stderr else sys.stdout
    tty = stream.isatty()
    return Console(stderr=stderr, quiet=quiet, width=None if tty else PIPED_WIDTH)


@contextmanager
def progress_counter(
    console: Console, label: str, total: int | None = None, unit: str = "records"
) -> Iterator[Callable[[int], None]]:
    """
    Progress on `console` (stderr); yields a function taking the count done so far. On a
    terminal: a live bar with a total and the time left where `total` is known, else a
    spinner with the count. Elsewhere (a log file, CI): a plain line every
    `PLAIN_EVERY_SECONDS` and one at the end, so that a pipe gets no control codes. `unit`
    names what is counted ("records", "days").
    """
    if console.quiet:
        yield lambda done: None
        return
    if not console.is_terminal:
        started = last = time.monotonic()
        count = 0

        def line(done: int) -> str:
            share = f" of {total:,} ({done / total:.0%})" if total else ""
            return f"{label}: {done:,} {unit}{share}, {time.monotonic() - started:.0f} s"

        def plain(done: int) -> None:
            nonlocal last, count
            count = done
            now = time.monotonic()
            if now - last >= PLAIN_EVERY_SECONDS:
                last = now
                console.print(line(done), highlight=False)

        yield plain
        console.print(line(count).replace(f"{label}:", f"{label}: done,", 1), highlight=False)
        return
    columns = [
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn() if total else TextColumn(""),
        TextColumn("{task.completed:,.0f} " + unit),
        TimeElapsedColumn(),
    ]
    if total:
        columns.append(TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(label, total=total)

        def update(done: int) -> None:
            progress.update(task, completed=done)

        yield update


def counts_table(counts: Counts) -> Table:
    table = Table(title="Records", show_header=True, header_style="bold")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("consumed", f"{counts.consumed:,}")
    table.add_row("processed", f"{counts.processed:,}")
    table.add_row("duplicates (skipped by event_id)", f"{counts.duplicates:,}")
    table.add_row("dead-lettered", f"{counts.dead_lettered:,}")
    for reason, n in sorted(counts.by_reason.items()):
        table.add_row(f"  - {reason}", f"{n:,}")
    table.add_row("alerts", f"{counts.alerts:,}")
    table.add_row("training examples resolved", f"{counts.examples:,}")
    balanced = "yes" if counts.balanced() else "NO"
    table.caption = f"consumed == processed + duplicates + dead-lettered: {balanced}"
    table.min_width = len(table.caption)  # a caption wraps at the table's width: keep it whole
    return table


def render_demo(console: Console, result: DemoResult, *, horizon_days: float) -> None:
    ev = result.evaluation
    console.print(counts_table(result.counts))

    alerts = Table(title="Alerts by rule and by action", header_style="bold")
    alerts.add_column("rule")
    alerts.add_column("alerts", justify="right")
    alerts.add_column("on churners, in time", justify="right")
    for rule, n in sorted(result.log.by_rule.items(), key=lambda kv: (-kv[1], kv[0])):
        timely = ev.timely_by_rule.get(rule, 0)
        alerts.add_row(rule, f"{n:,}", f"{timely / n:.0%}" if n else "n/a")
    alerts.add_section()
    for action, n in sorted(result.log.by_action.items()):
        alerts.add_row(f"action: {action}", f"{n:,}", "")
    console.print(alerts)

    quality = Table(title="How well and how early", header_style="bold")
    quality.add_column("measure")
    quality.add_column("value", justify="right")
    quality.add_row("customers seen", f"{ev.customers:,}")
    quality.add_row("churners (ground truth)", f"{ev.churners:,}")
    quality.add_row("customers alerted", f"{ev.alerted:,}")
    quality.add_row("alert precision (alerted customers who churned)", _fmt(ev.precision, ".1%"))
    quality.add_row("alert recall (churners alerted in time)", _fmt(ev.recall, ".1%"))
    leads = " / ".join(
        _fmt(v, ".1f") for v in (ev.lead_days_p10, ev.lead_days_p50, ev.lead_days_p90)
    )
    quality.add_row("lead time p10 / median / p90 (days)", leads)
    quality.add_row("model AUC (progressive, predict before learn)", _fmt(result.auc_model))
    quality.add_row("prior-only AUC (rules points)", _fmt(result.auc_prior))
    quality.add_row("blended score AUC", _fmt(result.auc_blended))
    quality.add_row("resolved labels learned", f"{result.labels:,}")
    quality.caption = (
        f"A churner is lost {horizon_days:g} days after its last activity (or when it cancels); "
        f"an alert is in time between {horizon_days:g} days before the last activity and then. "
        f"Lead time is counted to the moment the customer is lost."
    )
    console.print(quality)

    console.print("[bold]Example alerts[/bold]")
    for alert in result.examples:
        console.print(
            f"  [cyan]{alert.customer_id}[/cyan] {alert.rule} ({alert.severity}, {alert.action}, "
            f"{alert.segment}) at {alert.event_ts:%Y-%m-%d}: score {alert.score:.0f}"
            + (f" (was {alert.previous_score:.0f})" if alert.previous_score is not None else "")
        )
        console.print(f"    {alert.summary}")
    if result.dead_letters:
        console.print("[bold]Dead-lettered, first few[/bold]")
        for letter in result.dead_letters[:5]:
            console.print(f"  record {letter.position}: {letter.reason}: {letter.message}")
    console.print(
        f"model {result.model_version}, rules {result.rules_version}, "
        f"{result.counts.consumed:,} records in {result.seconds:.1f} s "
        f"({result.counts.consumed / max(result.seconds, 1e-9):,.0f} records/s)"
    )


def _money(value: float) -> str:
    return f"{value:,.2f}"


def render_overview(console: Console, data: dict[str, Any]) -> None:
    """`churnwatch overview`: the shape of GET /api/v1/overview as tables."""
    if data["as_of"] is None:
        console.print(f"Nothing has been scored yet ({data['customers']:,} customers stored).")
        return
    console.print(
        f"[bold]Overview[/bold] as of {data['as_of']} (the newest scoring, event time), "
        f"last {data['weeks']} weeks: {data['customers']:,} customers, "
        f"{data['at_risk']:,} not cancelled"
    )
    need, churned, saved = data["need_action"], data["churned"], data["saved"]
    csat, tickets = data["satisfaction"], data["tickets"]
    kpis = Table(title="The base", header_style="bold")
    kpis.add_column("measure")
    kpis.add_column("customers", justify="right")
    kpis.add_column("revenue", justify="right")
    kpis.add_row("need action", f"{need['customers']:,}", _money(need["revenue"]))
    kpis.add_row(
        f"churned ({churned['cancelled']:,} cancelled, {churned['judged_lost']:,} judged lost)",
        f"{churned['customers']:,}",
        _money(churned["revenue"]),
    )
    kpis.add_row("saved", f"{saved['customers']:,}", _money(saved["revenue"]))
    kpis.add_row("mean CSAT", _fmt(csat["mean_csat"], ".2f"), f"{csat['ratings']:,} ratings")
    kpis.add_row(
        "median ticket resolution (days)",
        _fmt(tickets["median_resolution_days"], ".1f"),
        f"{tickets['resolved']:,} resolved",
    )
    kpis.add_row(
        "open tickets, median age (days)",
        f"{tickets['open']:,}",
        _fmt(tickets["median_open_age_days"], ".1f"),
    )
    kpis.caption = f"Need action: {need['definition']}. Revenue: {data['revenue_unit']}."
    console.print(kpis)

    bins = data["risk_bins"]
    segments = Table(title="Risk by segment (customers not cancelled)", header_style="bold")
    for column in ("segment", "customers", "need action", "mean risk", "revenue"):
        segments.add_column(column, justify="left" if column == "segment" else "right")
    for low, high in itertools.pairwise(bins):
        segments.add_column(f"{low:.1f}-{high:.1f}", justify="right")
    for s in data["segments"]:
        segments.add_row(
            s["segment"],
            f"{s['customers']:,}",
            f"{s['need_action']:,}",
            _fmt(s["mean_risk"], ".2f"),
            _money(s["revenue"]),
            *(f"{n:,}" for n in s["histogram"]),
        )
    console.print(segments)

    weekly = Table(title="By week", header_style="bold")
    for column in ("week ending", "at risk", "scored", "mean risk", "cancelled", "alerts"):
        weekly.add_column(column, justify="left" if column == "week ending" else "right")
    for w in data["weekly"]:
        weekly.add_row(
            w["week_end"][:10],
            f"{w['at_risk']:,}",
            f"{w['scored']:,}",
            _fmt(w["mean_risk"], ".3f"),
            f"{w['cancelled']:,}",
            f"{w['alerts']:,}",
        )
    weekly.caption = data["definitions"]["at_risk_by_week"]
    console.print(weekly)

    verdicts = ("open", "useful", "false_alarm", "saved", "lost")
    alerts = Table(title="Alerts by week and rule, with their verdicts", header_style="bold")
    for column in ("week ending", "rule", "alerts", *verdicts):
        alerts.add_column(column, justify="left" if column in ("week ending", "rule") else "right")
    for w in reversed(data["weekly"]):
        for rule, mix in w["by_rule"].items():
            alerts.add_row(
                w["week_end"][:10],
                rule,
                f"{mix['alerts']:,}",
                *(f"{mix.get(v, 0):,}" for v in verdicts),
            )
    console.print(alerts)
