"""
The backtest's report: the terminal tables, `metrics.json`, and a self-contained HTML page
whose plots are inline SVG drawn here (no JavaScript, nothing fetched).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

from rich.console import Console
from rich.table import Table

from churnwatch.core.events import format_ts
from churnwatch.core.feedback import VERDICTS, RuleFeedback
from churnwatch.replay.backtest import SCORE_BINS, BacktestResult, auc_noise, write_scores
from churnwatch.replay.baselines import TOP_SHARES, RankingMeasures
from churnwatch.replay.evaluation import Evaluation
from churnwatch.replay.sweep import RuleSweep, SweepPoint

METRICS_VERSION: Final = 1
_COLORS: Final = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2")


def _r(value: float | None, digits: int = 4) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits)


def _pct(share: float) -> str:
    return f"{share * 100:g}%"


def _evaluation(ev: Evaluation) -> dict[str, Any]:
    return {
        "customers": ev.customers,
        "churners": ev.churners,
        "customers_alerted": ev.alerted,
        "alerted_in_time": ev.timely,
        "precision": _r(ev.precision),
        "recall": _r(ev.recall),
        "lead_days": {
            "p10": _r(ev.lead_days_p10, 2),
            "p50": _r(ev.lead_days_p50, 2),
            "p90": _r(ev.lead_days_p90, 2),
        },
    }


def _measures(m: RankingMeasures) -> dict[str, Any]:
    return {
        "label": m.label,
        "roc_auc": _r(m.roc_auc),
        "average_precision": _r(m.average_precision),
        "precision_at_top": {_pct(k): _r(v) for k, v in m.precision_at.items()},
        "lift_at_top": {_pct(k): _r(v, 3) for k, v in m.lift_at.items()},
        "brier": _r(m.brier, 5),
        "calibration": [
            {
                "count": b.count,
                "mean_predicted": _r(b.mean_predicted),
                "observed": _r(b.observed_rate),
            }
            for b in m.calibration
        ],
    }


def _point(p: SweepPoint) -> dict[str, Any]:
    return {
        "segment": p.segment,
        "threshold": None if math.isnan(p.threshold) else p.threshold,
        "alerts": p.alerts,
        "alerts_per_week": _r(p.alerts_per_week, 2),
        "budgeted_per_week": _r(p.budget_per_week, 2),
        "customers_alerted": p.customers_alerted,
        "alerted_in_time": p.timely,
        "precision": _r(p.precision),
        "recall": _r(p.recall),
        "lead_days_p50": _r(p.lead_days_p50, 2),
    }


def metrics(result: BacktestResult) -> dict[str, Any]:
    """Every figure of the backtest as plain JSON data (metrics.json)."""
    r = result
    ranking = r.ranking
    days = r.horizon / timedelta(days=1)
    out: dict[str, Any] = {
        "version": METRICS_VERSION,
        "history": {
            "events": r.events,
            "records": r.records,
            "customers": r.customers,
            "first_at": format_ts(r.first_at),
            "last_at": format_ts(r.last_at),
            "weeks": _r(r.weeks, 3),
            "partitions": r.partitions,
            "consumed": r.counts.consumed,
            "processed": r.counts.processed,
            "duplicates": r.counts.duplicates,
            "dead_lettered": r.counts.dead_lettered,
            "training_examples": r.counts.examples,
        },
        "rules": {"source": r.rules_source, "version": r.rules_version},
        "horizon_days": days,
        "labels": {"source": r.labels_source, "timed": r.labels_timed},
        "model": {
            "at_cutoff": {
                "version": r.model_at_cutoff.version,
                "labels": r.model_at_cutoff.labels,
                "weight_in_score": _r(r.model_at_cutoff.weight),
            },
            "at_end": {
                "version": r.model_at_end.version,
                "labels": r.model_at_end.labels,
                "weight_in_score": _r(r.model_at_end.weight),
            },
            "progressive_auc": {k: _r(v) for k, v in r.progressive.items()},
        },
        "ranking": {
            "cutoff_at": format_ts(ranking.cutoff_at),
            "cutoff_method": r.cutoff_method,
            "definition": ranking.definition,
            "population": ranking.population,
            "positives": ranking.positives,
            "base_rate": _r(ranking.positives / ranking.population if ranking.population else None),
            "excluded": ranking.excluded,
            "onboarding": ranking.onboarding,
            "window_beyond_history_days": _r(ranking.window_beyond_history_days, 2),
            "scores": {m.name: _measures(m) for m in ranking.measures},
            "batch_model": {
                "status": r.batch.status,
                "training_examples": r.batch.examples,
                "training_positives": r.batch.positives,
            },
        },
        "quality_bars": [{"bar": b.name, "passed": b.passed, "detail": b.detail} for b in r.bars],
        "alerts": {
            "total": r.alerts.log.total,
            "per_1000_customers_per_week": _r(r.alerts.per_1000_per_week, 3),
            "by_rule": dict(sorted(r.alerts.log.by_rule.items())),
            "by_action": dict(sorted(r.alerts.log.by_action.items())),
            "in_time_by_rule": dict(sorted(r.alerts.evaluation.timely_by_rule.items())),
            **_evaluation(r.alerts.evaluation),
        },
        "notes": r.notes,
        "seconds": _r(r.seconds, 2),
    }
    if r.feedback is not None:
        entries, unmatched = r.feedback
        out["feedback"] = {
            "rules": [e.to_dict() for e in entries],
            "verdicts_matching_no_alert": unmatched,
        }
    if r.sweep is not None:
        s = r.sweep
        out["sweep"] = {
            "budget": {
                "csms": s.budget.csms,
                "alerts_per_csm_per_week": s.budget.alerts_per_csm,
                "per_week": s.budget.per_week,
                "counts": s.budget.counts,
            },
            "other_rules_per_week": _r(s.other_per_week, 2),
            "rules": {
                rs.rule: {
                    "current": rs.current,
                    "margin": rs.margin,
                    "cooldown_days": rs.cooldown_days,
                    "real_alerts": rs.actual,
                    "recomputed_alerts": rs.recomputed,
                    "reproduced_alerts": rs.reproduced,
                    "points": [_point(p) for p in rs.points],
                    "proposal": {
                        "thresholds": rs.proposal.thresholds,
                        "feasible": rs.proposal.feasible,
                        "note": rs.proposal.note,
                        "check": _point(rs.proposal.check),
                    },
                }
                for rs in s.rules
            },
            "patch_yaml": s.patch_yaml,
            "patch_diff": s.patch_diff,
        }
    if r.compare is not None:
        c = r.compare
        out["compare"] = {
            "a": {
                "rules": c.a.source,
                "version": c.a.rules_version,
                "alerts": c.a.alerts,
                **_evaluation(c.a.evaluation),
            },
            "b": {
                "rules": c.b.source,
                "version": c.b.rules_version,
                "alerts": c.b.alerts,
                **_evaluation(c.b.evaluation),
            },
            "by_rule": [
                {
                    "rule": row.rule,
                    "alerts_a": row.alerts_a,
                    "alerts_b": row.alerts_b,
                    "customers_a": row.customers_a,
                    "customers_b": row.customers_b,
                    "customers_only_a": row.only_a,
                    "customers_only_b": row.only_b,
                    "customers_both": row.both,
                }
                for row in c.rows
            ],
            "examples_only_a": [
                {
                    "customer_id": e.customer_id,
                    "rule": e.rule,
                    "first_at": format_ts(e.first_at),
                    "churned": e.churned,
                }
                for e in c.only_a
            ],
            "examples_only_b": [
                {
                    "customer_id": e.customer_id,
                    "rule": e.rule,
                    "first_at": format_ts(e.first_at),
                    "churned": e.churned,
                }
                for e in c.only_b
            ],
        }
    return out


# -- the terminal ---------------------------------------------------------------------------


def _f(value: float | None, spec: str = ".3f") -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else format(value, spec)
    )


def render_terminal(console: Console, result: BacktestResult) -> None:
    """The backtest's figures as rich tables."""
    from churnwatch.console import counts_table

    r = result
    console.print(counts_table(r.counts))
    ranking = r.ranking
    table = Table(
        title=f"Ranking at T = {format_ts(ranking.cutoff_at)} ({ranking.population:,} customers, "
        f"{ranking.positives:,} lost within {r.horizon / timedelta(days=1):g} days)",
        header_style="bold",
    )
    table.add_column("score")
    table.add_column("ROC AUC", justify="right")
    table.add_column("avg precision", justify="right")
    for share in TOP_SHARES:
        table.add_column(f"precision top {_pct(share)}", justify="right")
    for share in TOP_SHARES:
        table.add_column(f"lift {_pct(share)}", justify="right")
    table.add_column("Brier", justify="right")
    for m in ranking.measures:
        table.add_row(
            m.name,
            _f(m.roc_auc),
            _f(m.average_precision),
            *(_f(m.precision_at[s]) for s in TOP_SHARES),
            *(_f(m.lift_at[s], ".2f") for s in TOP_SHARES),
            _f(m.brier, ".4f"),
        )
    table.caption = ranking.definition
    console.print(table)
    if r.batch.model is None:
        console.print(f"batch model: {r.batch.status}")
    console.print(
        f"model at T: {r.model_at_cutoff.labels:,} resolved labels "
        f"(weight {r.model_at_cutoff.weight:.2f} in the churnwatch score), "
        f"{r.model_at_cutoff.version}"
    )
    for bar in r.bars:
        mark = {True: "[green]pass[/green]", False: "[red]FAIL[/red]", None: "[yellow]n/a[/yellow]"}
        console.print(f"  {mark[bar.passed]} {bar.name}: {bar.detail}")
    noise = _bar_noise(r)
    if noise is not None and any(bar.passed is False for bar in r.bars):
        console.print(
            f"  (with {r.ranking.positives:,} churners among {r.ranking.population:,} customers "
            f"an AUC is known to about +-{2 * noise:.3f}: a bar missed by less is within the "
            "noise of a history this size; benchmarks/backtest_quality.py judges 20,000)"
        )

    ev = r.alerts.evaluation
    alerts = Table(title="Alerts", header_style="bold")
    alerts.add_column("rule")
    alerts.add_column("alerts", justify="right")
    alerts.add_column("per 1,000 customers a week", justify="right")
    alerts.add_column("on churners, in time", justify="right")
    scale = max(r.customers / 1000, 1e-9) * r.weeks
    for rule, n in sorted(r.alerts.log.by_rule.items(), key=lambda kv: (-kv[1], kv[0])):
        timely = ev.timely_by_rule.get(rule, 0)
        alerts.add_row(rule, f"{n:,}", f"{n / scale:.2f}", f"{timely / n:.0%}" if n else "n/a")
    alerts.add_section()
    alerts.add_row("all", f"{r.alerts.log.total:,}", f"{r.alerts.per_1000_per_week:.2f}", "")
    console.print(alerts)
    quality = Table(title="How well and how early", header_style="bold")
    quality.add_column("measure")
    quality.add_column("value", justify="right")
    quality.add_row("labels", r.labels_source)
    quality.add_row("churners", f"{ev.churners:,}")
    quality.add_row("customers alerted", f"{ev.alerted:,}")
    quality.add_row("alert precision", _f(ev.precision, ".1%"))
    quality.add_row("alert recall", _f(ev.recall, ".1%"))
    quality.add_row(
        "lead time p10 / median / p90 (days)",
        " / ".join(_f(v, ".1f") for v in (ev.lead_days_p10, ev.lead_days_p50, ev.lead_days_p90)),
    )
    quality.add_row("model AUC (progressive)", _f(r.progressive.get("model")))
    quality.add_row("prior AUC (progressive)", _f(r.progressive.get("prior")))
    console.print(quality)
    if r.sweep is not None:
        for rs in r.sweep.rules:
            _render_sweep(console, rs, r.sweep.budget.per_week)
        if r.sweep.patch_diff:
            console.print("[bold]Proposed rules patch[/bold]")
            console.print(r.sweep.patch_diff, markup=False, highlight=False)
    if r.compare is not None:
        c = r.compare
        table = Table(
            title=f"A = {c.a.source} vs. B = {c.b.source} (customers per rule)", header_style="bold"
        )
        for name in ("rule", "alerts A", "alerts B", "only A", "only B", "both"):
            table.add_column(name, justify="left" if name == "rule" else "right")
        for row in c.rows:
            table.add_row(
                row.rule,
                f"{row.alerts_a:,}",
                f"{row.alerts_b:,}",
                f"{row.only_a:,}",
                f"{row.only_b:,}",
                f"{row.both:,}",
            )
        table.caption = (
            f"precision A {_f(c.a.evaluation.precision, '.1%')}, "
            f"B {_f(c.b.evaluation.precision, '.1%')}; "
            f"recall A {_f(c.a.evaluation.recall, '.1%')}, B {_f(c.b.evaluation.recall, '.1%')}"
        )
        console.print(table)
        for side, items in (("only A", c.only_a), ("only B", c.only_b)):
            for e in items[:10]:
                churned = {True: "churned", False: "stayed", None: "no label"}[e.churned]
                console.print(
                    f"  {side}: {e.customer_id} {e.rule} at {format_ts(e.first_at)} ({churned})"
                )
    if r.feedback is not None:
        _render_feedback(console, *r.feedback)
    for note in r.notes:
        console.print(f"[yellow]note[/yellow]: {note}")


def _render_feedback(console: Console, entries: list[RuleFeedback], unmatched: int) -> None:
    table = Table(
        title=f"CSM verdicts on these alerts ({unmatched} verdicts matched no alert)",
        header_style="bold",
    )
    for column in ("rule", "alerts", "judged", *VERDICTS, "false-alarm rate"):
        table.add_column(column, justify="left" if column == "rule" else "right")
    for e in entries:
        table.add_row(
            e.rule,
            str(e.alerts),
            str(e.judged),
            *(str(e.counts.get(v, 0)) for v in VERDICTS),
            _f(e.false_alarm_rate, ".1%"),
        )
    console.print(table)


def _render_sweep(console: Console, rs: RuleSweep, budget: float) -> None:
    table = Table(title=f"Threshold sweep: {rs.rule} (all segments)", header_style="bold")
    for name in ("threshold", "alerts/week", "budgeted/week", "precision", "recall", "lead p50"):
        table.add_column(name, justify="right")
    for p in rs.points:
        if p.segment != "all":
            continue
        current = p.threshold in rs.current.values()
        table.add_row(
            f"{p.threshold:g}{' *' if current else ''}",
            f"{p.alerts_per_week:.1f}",
            f"{p.budget_per_week:.1f}",
            _f(p.precision, ".1%"),
            _f(p.recall, ".1%"),
            _f(p.lead_days_p50, ".1f"),
        )
    table.caption = (
        f"recomputed from recorded scores: {rs.reproduced} of the rule's {rs.actual} real alerts "
        f"reproduced; * = a current threshold. Proposed for a budget of {budget:g}/week: "
        + ", ".join(f"{k} {v:g}" for k, v in rs.proposal.thresholds.items())
        + f" ({rs.proposal.note})"
    )
    console.print(table)


# -- SVG ------------------------------------------------------------------------------------

_W: Final = 460
_H: Final = 300
_PAD_L: Final = 56
_PAD_R: Final = 12
_PAD_T: Final = 14
_PAD_B: Final = 44


def _nice(high: float) -> float:
    if high <= 0 or not math.isfinite(high):
        return 1.0
    exp: float = 10.0 ** math.floor(math.log10(high))
    for step in (1, 2, 2.5, 5, 10):
        if high <= step * exp:
            return step * exp
    return 10 * exp


def _ticks(low: float, high: float, n: int = 5) -> list[float]:
    return [low + (high - low) * i / n for i in range(n + 1)]


def _tick_label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


class _Frame:
    def __init__(self, xmin: float, xmax: float, ymin: float, ymax: float) -> None:
        self.xmin, self.xmax, self.ymin, self.ymax = xmin, xmax, ymin, ymax

    def x(self, v: float) -> float:
        span = (self.xmax - self.xmin) or 1.0
        return _PAD_L + (v - self.xmin) / span * (_W - _PAD_L - _PAD_R)

    def y(self, v: float) -> float:
        span = (self.ymax - self.ymin) or 1.0
        return _H - _PAD_B - (v - self.ymin) / span * (_H - _PAD_T - _PAD_B)


def _axes(frame: _Frame, xlabel: str, ylabel: str) -> list[str]:
    parts = [
        f'<rect x="{_PAD_L}" y="{_PAD_T}" width="{_W - _PAD_L - _PAD_R}" '
        f'height="{_H - _PAD_T - _PAD_B}" fill="#fff" stroke="#999"/>'
    ]
    for t in _ticks(frame.xmin, frame.xmax):
        x = frame.x(t)
        parts.append(
            f'<line x1="{x:.1f}" y1="{_H - _PAD_B}" x2="{x:.1f}" y2="{_H - _PAD_B + 4}" '
            'stroke="#999"/>'
            f'<text x="{x:.1f}" y="{_H - _PAD_B + 16}" text-anchor="middle">{_tick_label(t)}</text>'
        )
    for t in _ticks(frame.ymin, frame.ymax):
        y = frame.y(t)
        parts.append(
            f'<line x1="{_PAD_L - 4}" y1="{y:.1f}" x2="{_W - _PAD_R}" y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{_PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end">{_tick_label(t)}</text>'
        )
    parts.append(
        f'<text x="{(_PAD_L + _W - _PAD_R) / 2:.0f}" y="{_H - 8}" text-anchor="middle">'
        f"{html.escape(xlabel)}</text>"
        f'<text x="14" y="{(_PAD_T + _H - _PAD_B) / 2:.0f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {(_PAD_T + _H - _PAD_B) / 2:.0f})">{html.escape(ylabel)}</text>'
    )
    return parts


def _svg(parts: Sequence[str], legend: Sequence[tuple[str, str]]) -> str:
    items = "".join(
        f'<span class="key"><i style="background:{color}"></i>{html.escape(name)}</span>'
        for name, color in legend
    )
    body = "".join(parts)
    return (
        f'<figure><svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" '
        f'width="{_W}" height="{_H}" font-size="11" font-family="sans-serif">{body}</svg>'
        f"<figcaption>{items}</figcaption></figure>"
    )


def svg_lines(
    series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    *,
    xlabel: str,
    ylabel: str,
    xmax: float | None = None,
    ymax: float | None = None,
    diagonal: bool = False,
    markers: bool = False,
) -> str:
    """A line chart of (name, xs, ys) series on axes from 0."""
    xs = [v for _, x, _ in series for v in x]
    ys = [v for _, _, y in series for v in y]
    frame = _Frame(
        0.0, xmax or _nice(max(xs, default=1.0)), 0.0, ymax or _nice(max(ys, default=1.0))
    )
    parts = _axes(frame, xlabel, ylabel)
    if diagonal:
        top = min(frame.xmax, frame.ymax)
        parts.append(
            f'<line x1="{frame.x(0):.1f}" y1="{frame.y(0):.1f}" x2="{frame.x(top):.1f}" '
            f'y2="{frame.y(top):.1f}" stroke="#bbb" stroke-dasharray="4 3"/>'
        )
    legend = []
    for i, (name, x, y) in enumerate(series):
        color = _COLORS[i % len(_COLORS)]
        legend.append((name, color))
        points = " ".join(f"{frame.x(a):.1f},{frame.y(b):.1f}" for a, b in zip(x, y, strict=True))
        if points:
            parts.append(
                f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="1.6"/>'
            )
        if markers:
            parts.extend(
                f'<circle cx="{frame.x(a):.1f}" cy="{frame.y(b):.1f}" r="2.5" fill="{color}"/>'
                for a, b in zip(x, y, strict=True)
            )
    return _svg(parts, legend)


def svg_bars(
    categories: Sequence[str],
    series: Sequence[tuple[str, Sequence[float]]],
    *,
    xlabel: str,
    ylabel: str,
    stacked: bool = False,
) -> str:
    """Grouped (or stacked) bars, one group per category."""
    n = max(len(categories), 1)
    if stacked:
        top = max((sum(s[1][i] for s in series) for i in range(len(categories))), default=1.0)
    else:
        top = max((v for _, values in series for v in values), default=1.0)
    frame = _Frame(0.0, float(n), 0.0, _nice(top))
    parts = [p for p in _axes(frame, xlabel, ylabel) if "<text" not in p or "rotate" in p]
    # x ticks: category names, thinned to about 12
    step = max(1, math.ceil(n / 12))
    for i in range(0, n, step):
        x = frame.x(i + 0.5)
        parts.append(
            f'<text x="{x:.1f}" y="{_H - _PAD_B + 16}" text-anchor="middle">'
            f"{html.escape(categories[i])}</text>"
        )
    for t in _ticks(frame.ymin, frame.ymax):
        parts.append(
            f'<text x="{_PAD_L - 6}" y="{frame.y(t) + 4:.1f}" text-anchor="end">'
            f"{_tick_label(t)}</text>"
        )
    width = (frame.x(1) - frame.x(0)) * 0.8
    legend = []
    base = [0.0] * len(categories)
    for k, (name, values) in enumerate(series):
        color = _COLORS[k % len(_COLORS)]
        legend.append((name, color))
        for i, v in enumerate(values):
            if v <= 0:
                continue
            if stacked:
                x0 = frame.x(i) + (frame.x(1) - frame.x(0)) * 0.1
                y0, y1 = frame.y(base[i] + v), frame.y(base[i])
                base[i] += v
                w = width
            else:
                w = width / max(len(series), 1)
                x0 = frame.x(i) + (frame.x(1) - frame.x(0)) * 0.1 + k * w
                y0, y1 = frame.y(v), frame.y(0)
            parts.append(
                f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{w:.1f}" height="{max(y1 - y0, 0):.1f}" '
                f'fill="{color}" fill-opacity="0.8">'
                f"<title>{html.escape(name)}: {v:g}</title></rect>"
            )
    return _svg(parts, legend)


# -- the HTML page --------------------------------------------------------------------------

_CSS: Final = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#222;line-height:1.4}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 8px}
td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f4f4f4}
figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}
figcaption{font-size:12px}.key{margin-right:10px}.key i{display:inline-block;width:10px;
height:10px;margin-right:4px}.pass{color:#080}.fail{color:#c00;font-weight:bold}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto}.note{color:#850}
"""


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            numeric = isinstance(cell, int | float) or (
                isinstance(cell, str)
                and cell.replace(".", "").replace(",", "").replace("%", "").isdigit()
            )
            cells.append(f"<td{' class=n' if numeric else ''}>{html.escape(str(cell))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _hist(values: Sequence[float], width: float) -> tuple[list[str], list[float]]:
    if not values:
        return [], []
    top = max(values)
    n = max(1, math.ceil((top + 1e-9) / width))
    counts = [0.0] * n
    for v in values:
        counts[min(int(v // width), n - 1)] += 1
    return [f"{i * width:g}" for i in range(n)], counts


def render_html(result: BacktestResult) -> str:
    """The report as one self-contained HTML page."""
    r = result
    ranking = r.ranking
    days = r.horizon / timedelta(days=1)
    out: list[str] = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>churnwatch backtest: {html.escape(r.events)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>churnwatch backtest</h1><p>{html.escape(r.events)}: {r.records:,} records, "
        f"{r.customers:,} customers, {format_ts(r.first_at)} to {format_ts(r.last_at)} "
        f"({r.weeks:.1f} weeks). Rules {html.escape(r.rules_source)} "
        f"(version {html.escape(r.rules_version)}); label horizon H = {days:g} days; "
        f"labels: {html.escape(r.labels_source)}.</p>",
    ]
    for note in r.notes:
        out.append(f"<p class=note>Note: {html.escape(note)}</p>")
    if r.feedback is not None:
        entries, unmatched = r.feedback
        out.append(
            "<h2>CSM verdicts: false alarms per rule</h2><table><tr><th>rule</th>"
            "<th>alerts</th><th>judged</th><th>false alarms</th><th>false-alarm rate</th></tr>"
        )
        for e in entries:
            out.append(
                f"<tr><td>{html.escape(e.rule)}</td><td>{e.alerts}</td><td>{e.judged}</td>"
                f"<td>{e.counts.get('false_alarm', 0)}</td>"
                f"<td>{_f(e.false_alarm_rate, '.1%')}</td></tr>"
            )
        out.append(f"</table><p>{unmatched} verdicts matched no alert of this backtest.</p>")

    out.append("<h2>Does the score rank churners?</h2>")
    out.append(
        f"<p>{html.escape(ranking.definition)} Population {ranking.population:,}, "
        f"{ranking.positives:,} lost within H (base rate "
        f"{(ranking.positives / ranking.population if ranking.population else 0):.1%}); "
        f"left out: {html.escape(json.dumps(ranking.excluded))}; "
        f"{ranking.onboarding:,} scored by the onboarding profile.</p>"
    )
    out.append(
        f"<p>Model at T: <b>{r.model_at_cutoff.labels:,} resolved labels</b>, weight "
        f"{r.model_at_cutoff.weight:.2f} in the churnwatch score (below the rules' "
        f"<code>min_labels</code> the prior alone decides). Batch model: "
        f"{html.escape(r.batch.status)} ({r.batch.examples:,} training snapshots resolved by T, "
        f"{r.batch.positives:,} churned).</p>"
    )
    rows = []
    for m in ranking.measures:
        rows.append(
            [
                m.label,
                _f(m.roc_auc),
                _f(m.average_precision),
                *(_f(m.precision_at[s]) for s in TOP_SHARES),
                *(_f(m.lift_at[s], ".2f") for s in TOP_SHARES),
                _f(m.brier, ".4f"),
            ]
        )
    out.append(
        _table(
            [
                "score",
                "ROC AUC",
                "average precision",
                *(f"precision top {_pct(s)}" for s in TOP_SHARES),
                *(f"lift top {_pct(s)}" for s in TOP_SHARES),
                "Brier",
            ],
            rows,
        )
    )
    out.append(
        "<p>Quality bars: "
        + "; ".join(
            f"<span class={'pass' if b.passed else 'fail' if b.passed is False else 'note'}>"
            f"{'pass' if b.passed else 'FAIL' if b.passed is False else 'n/a'}</span> "
            f"{html.escape(b.name)} ({html.escape(b.detail)})"
            for b in r.bars
        )
        + "</p>"
    )
    bins = [f"{i * 100 / SCORE_BINS:g}" for i in range(SCORE_BINS)]
    shares = []
    for group in ("churners", "stayers"):
        counts = ranking.score_bins[group]
        total = sum(counts) or 1
        shares.append((f"{group} ({sum(counts):,})", [c / total for c in counts]))
    out.append(
        svg_bars(
            bins, shares, xlabel="engagement score at T (0 = at risk)", ylabel="share of group"
        )
    )
    named = [m for m in ranking.measures if m.roc.x]
    out.append(
        svg_lines(
            [(m.name, m.roc.x, m.roc.y) for m in named],
            xlabel="false-positive rate",
            ylabel="true-positive rate",
            xmax=1.0,
            ymax=1.0,
            diagonal=True,
        )
    )
    out.append(
        svg_lines(
            [(m.name, m.pr.x, m.pr.y) for m in named],
            xlabel="recall",
            ylabel="precision",
            xmax=1.0,
            ymax=1.0,
        )
    )
    calibrated = [m for m in ranking.measures if m.calibration]
    top = max(
        (max(b.mean_predicted, b.observed_rate) for m in calibrated for b in m.calibration),
        default=1.0,
    )
    out.append(
        svg_lines(
            [
                (
                    m.name,
                    [b.mean_predicted for b in m.calibration],
                    [b.observed_rate for b in m.calibration],
                )
                for m in calibrated
            ],
            xlabel="mean predicted probability (10 bins of equal size)",
            ylabel="observed churn rate",
            xmax=_nice(top),
            ymax=_nice(top),
            diagonal=True,
            markers=True,
        )
    )

    ev = r.alerts.evaluation
    out.append("<h2>Alerts: how many, how real, how early</h2>")
    out.append(
        "<p>A churner is lost when it cancels, or H after its last activity when it goes silent; "
        "an alert is in time between H before its last activity and the moment it is lost, and "
        "the lead time is counted to that moment. Precision: alerted customers with an alert in "
        "time; recall: churners with an alert in time.</p>"
    )
    out.append(
        _table(
            ["measure", "value"],
            [
                ["alerts", f"{r.alerts.log.total:,}"],
                ["alerts per 1,000 customers per week", f"{r.alerts.per_1000_per_week:.2f}"],
                ["churners", f"{ev.churners:,}"],
                ["customers alerted", f"{ev.alerted:,}"],
                ["alert precision", _f(ev.precision, ".1%")],
                ["alert recall", _f(ev.recall, ".1%")],
                ["lead time p10 (days)", _f(ev.lead_days_p10, ".1f")],
                ["lead time median (days)", _f(ev.lead_days_p50, ".1f")],
                ["lead time p90 (days)", _f(ev.lead_days_p90, ".1f")],
                ["model AUC, progressive (predict before learn)", _f(r.progressive.get("model"))],
                ["prior AUC, progressive", _f(r.progressive.get("prior"))],
                ["churnwatch score AUC, progressive", _f(r.progressive.get("blended"))],
            ],
        )
    )
    scale = max(r.customers / 1000, 1e-9) * r.weeks
    out.append(
        _table(
            [
                "rule",
                "alerts",
                "per 1,000 customers a week",
                "in time on churners",
                "csm_task",
                "email",
            ],
            [
                [
                    rule,
                    f"{n:,}",
                    f"{n / scale:.2f}",
                    f"{ev.timely_by_rule.get(rule, 0) / n:.0%}",
                    f"{r.alerts.by_rule_action.get((rule, 'csm_task'), 0):,}",
                    f"{r.alerts.by_rule_action.get((rule, 'email'), 0):,}",
                ]
                for rule, n in sorted(r.alerts.log.by_rule.items(), key=lambda kv: (-kv[1], kv[0]))
            ],
        )
    )
    cats, per_bin = _hist(r.alerts.leads, 5.0)
    out.append(
        svg_bars(
            cats, [("churners", per_bin)], xlabel="lead time (days, bins of 5)", ylabel="churners"
        )
    )
    weeks = max((w for counter in r.alerts.weekly.values() for w in counter), default=-1) + 1
    out.append(
        svg_bars(
            [str(w) for w in range(weeks)],
            [
                (rule, [float(r.alerts.weekly[rule].get(w, 0)) for w in range(weeks)])
                for rule in sorted(r.alerts.weekly)
            ],
            xlabel="week of the history",
            ylabel="alerts",
            stacked=True,
        )
    )
    examples = [a for items in r.alerts.examples.values() for a in items][:8]
    if examples:
        out.append("<h3>Example alerts</h3><ul>")
        out.extend(
            f"<li><code>{html.escape(a.customer_id)}</code> {html.escape(a.rule)} "
            f"({a.severity}, {a.action}, {html.escape(a.segment)}) at {format_ts(a.event_ts)}: "
            f"{html.escape(a.summary)}</li>"
            for a in examples
        )
        out.append("</ul>")

    if r.sweep is not None:
        s = r.sweep
        out.append("<h2>Threshold sweep</h2>")
        out.append(
            f"<p>Budget: {s.budget.csms} CSMs x {s.budget.alerts_per_csm:g} alerts a week = "
            f"{s.budget.per_week:g} a week, counting "
            f"{'alerts routed to csm_task' if s.budget.counts == 'csm_task' else 'every alert'}; "
            f"the other rules send {s.other_per_week:.1f} of them a week. Each score rule's alerts "
            "are recomputed from the scores the replay recorded, with the core's hysteresis and "
            "cooldown (core.alerts.evaluate_score); one threshold for every segment per row, "
            "alerts counted in the segment they fired in.</p>"
        )
        for rs in s.rules:
            out.append(f"<h3>{html.escape(rs.rule)}</h3>")
            out.append(
                f"<p>{rs.reproduced} of its {rs.actual} real alerts reproduced by the "
                f"recomputation at its current thresholds ({rs.recomputed} recomputed). "
                f"Proposal: <code>{html.escape(json.dumps(rs.proposal.thresholds))}</code>: "
                f"{html.escape(rs.proposal.note)}; recomputed together: "
                f"{rs.proposal.check.alerts_per_week:.1f} alerts a week, precision "
                f"{_f(rs.proposal.check.precision, '.1%')}, "
                f"recall {_f(rs.proposal.check.recall, '.1%')}, "
                f"median lead {_f(rs.proposal.check.lead_days_p50, '.1f')} days.</p>"
            )
            segments = sorted({p.segment for p in rs.points})
            series_v = []
            series_p = []
            for seg in segments:
                pts = [p for p in rs.points if p.segment == seg]
                series_v.append((seg, [p.threshold for p in pts], [p.alerts_per_week for p in pts]))
                series_p.append(
                    (
                        seg,
                        [p.threshold for p in pts if p.precision is not None],
                        [p.precision or 0.0 for p in pts if p.precision is not None],
                    )
                )
            out.append(
                svg_lines(
                    series_v, xlabel="threshold", ylabel="alerts per week", xmax=100, markers=True
                )
            )
            out.append(
                svg_lines(
                    series_p,
                    xlabel="threshold",
                    ylabel="precision",
                    xmax=100,
                    ymax=1.0,
                    markers=True,
                )
            )
            out.append(
                _table(
                    [
                        "segment",
                        "threshold",
                        "alerts/week",
                        "budgeted/week",
                        "precision",
                        "recall",
                        "lead p50",
                    ],
                    [
                        [
                            p.segment,
                            f"{p.threshold:g}",
                            f"{p.alerts_per_week:.2f}",
                            f"{p.budget_per_week:.2f}",
                            _f(p.precision, ".1%"),
                            _f(p.recall, ".1%"),
                            _f(p.lead_days_p50, ".1f"),
                        ]
                        for p in rs.points
                    ],
                )
            )
        out.append("<h3>Rules patch (review before applying)</h3>")
        out.append(f"<pre>{html.escape(s.patch_yaml)}</pre>")
        if s.patch_diff:
            out.append(f"<pre>{html.escape(s.patch_diff)}</pre>")

    if r.compare is not None:
        c = r.compare
        out.append("<h2>Rules compared on the same history</h2>")
        out.append(
            _table(
                ["", "rules", "alerts", "customers alerted", "precision", "recall", "lead p50"],
                [
                    [
                        side,
                        f"{x.source} ({x.rules_version})",
                        f"{x.alerts:,}",
                        f"{x.customers_alerted:,}",
                        _f(x.evaluation.precision, ".1%"),
                        _f(x.evaluation.recall, ".1%"),
                        _f(x.evaluation.lead_days_p50, ".1f"),
                    ]
                    for side, x in (("A", c.a), ("B", c.b))
                ],
            )
        )
        out.append(
            _table(
                ["rule", "alerts A", "alerts B", "customers only A", "customers only B", "both"],
                [
                    [row.rule, row.alerts_a, row.alerts_b, row.only_a, row.only_b, row.both]
                    for row in c.rows
                ],
            )
        )
        for side, items in (("only A", c.only_a), ("only B", c.only_b)):
            out.append(f"<h3>Alerted {side} (first alert per customer and rule; examples)</h3>")
            out.append(
                _table(
                    ["customer", "rule", "first alert", "outcome"],
                    [
                        [
                            e.customer_id,
                            e.rule,
                            format_ts(e.first_at),
                            {True: "churned", False: "stayed", None: "no label"}[e.churned],
                        ]
                        for e in items
                    ],
                )
            )
    out.append(
        f"<p><small>{r.counts.consumed:,} records consumed, {r.counts.processed:,} processed, "
        f"{r.counts.duplicates:,} duplicates, {r.counts.dead_lettered:,} dead-lettered; "
        f"ranking replay at T by {r.cutoff_method}; {r.seconds:.1f} s.</small></p>"
    )
    out.append("</body></html>")
    return "\n".join(out)


def write_report(result: BacktestResult, directory: Path) -> list[Path]:
    """
    Write metrics.json, report.html, scores.csv (every customer scored at T, as `churnwatch
    score --as-of T` writes it) and, with a sweep, thresholds.yaml and thresholds.diff.
    """
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    path = directory / "metrics.json"
    path.write_text(json.dumps(metrics(result), indent=2, sort_keys=False) + "\n", encoding="utf-8")
    written.append(path)
    path = directory / "report.html"
    path.write_text(render_html(result), encoding="utf-8")
    written.append(path)
    path = directory / "scores.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        write_scores(handle, result.scores)
    written.append(path)
    if result.sweep is not None:
        path = directory / "thresholds.yaml"
        path.write_text(result.sweep.patch_yaml, encoding="utf-8")
        written.append(path)
        if result.sweep.patch_diff:
            path = directory / "thresholds.diff"
            path.write_text(result.sweep.patch_diff, encoding="utf-8")
            written.append(path)
    return written


def _bar_noise(r: BacktestResult) -> float | None:
    """The standard error of the online model's AUC at the cut-off, where it was measured."""
    online = r.ranking.get("online_model")
    if online is None or online.roc_auc is None:
        return None
    positives = r.ranking.positives
    return auc_noise(online.roc_auc, positives, r.ranking.population - positives)
