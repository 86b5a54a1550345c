"""
The overview of the whole base (GET /api/v1/overview, the page at /overview and
`churnwatch overview`): pure arithmetic over what the scoring workers already store, so it
adds nothing to the per-event path. `Views.overview` reads the inputs from Redis; `build`
turns them into the report.

Every time here is event time. The report is as of the newest scoring in the store (not the
wall clock), so the same stored data gives the same report, and its weeks are the `weeks`
seven-day windows that end then.

What each figure is:

- **risk by segment**: the customers still at risk (not cancelled) by churn probability in
  tenths, per segment, with how many need action now (the at-risk list's definition).
- **at risk by week**: at each week's end, the customers whose newest scoring up to then was
  above their segment's bound (the score half of "needs action": whether an alert had a
  verdict then is not known in event time), and their mean churn probability. Only customers
  with a kept scoring up to the week's end count (`scored`): the store keeps the newest
  scorings of each customer (`CHURNWATCH_REDIS_HISTORY_KEPT`), so the early weeks of a long
  history count fewer.
- **churned and saved**: churned = cancelled, or an alert judged `lost`; saved = an alert
  judged `saved` and not churned since. Their revenue is their lifetime net spend (purchases
  less returns, currencies not converted), as is the revenue of the customers who need action.
- **alerts by week and rule**, each with the verdicts given so far (`open`: none yet), over the
  alerts the store keeps per customer (`CHURNWATCH_REDIS_ALERTS_KEPT`).
- **satisfaction**: the mean of every CSAT rating the states have counted.
- **tickets**: the median time from a ticket's opening to its solving or closing, over the
  tickets the states remember (open ones and those closed within the feature config's
  retention, 60 days); the state keeps a ticket's opening and its latest status, not its
  first reply, so this is the time to resolution. Open tickets: how many, and their median age.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from statistics import median
from typing import Any, Final

from churnwatch.core.events import EPOCH, format_ts
from churnwatch.core.feedback import VERDICTS
from churnwatch.core.state import CustomerState

DEFAULT_WEEKS: Final = 12
MAX_WEEKS: Final = 104
RISK_BINS: Final = 10
"""The risk histogram's bins: tenths of churn probability."""
_DAY: Final = timedelta(days=1)
_WEEK: Final = timedelta(days=7)
_OPEN: Final = "open"


@dataclass(frozen=True, slots=True)
class Facts:
    """What the overview needs of one customer's state."""

    customer_id: str
    segment: str
    churn_probability: float | None
    scored_at: datetime | None
    cancelled_at: datetime | None
    revenue: float
    csat_sum: int
    csat_count: int
    resolution_days: tuple[float, ...]
    """Opened to solved or closed, of each remembered ticket that is resolved."""
    open_ticket_opened: tuple[float, ...]
    """When each remembered open ticket opened (days since the epoch)."""


def facts_of(state: CustomerState) -> Facts:
    """The overview's part of a customer state."""
    f = state.features
    resolved = tuple(max(t.status_day - t.opened_day, 0.0) for t in f.tickets if not t.is_open)
    return Facts(
        customer_id=state.customer_id,
        segment=state.segment,
        churn_probability=state.churn_probability,
        scored_at=state.scored_at,
        cancelled_at=state.cancelled_at,
        revenue=max(f.purchase_amount - f.return_amount, 0.0),
        csat_sum=f.csat_sum,
        csat_count=f.csat_count,
        resolution_days=resolved,
        open_ticket_opened=tuple(t.opened_day for t in f.tickets if t.is_open),
    )


@dataclass(frozen=True, slots=True)
class AlertFact:
    """One stored alert: when (event time), its rule, its customer."""

    alert_id: str
    customer_id: str
    rule: str
    at: datetime


def as_of(facts: Iterable[Facts]) -> datetime | None:
    """The newest scoring in the store: the time the overview is as of (None: none yet)."""
    times = [f.scored_at for f in facts if f.scored_at is not None]
    return max(times) if times else None


def week_starts(end: datetime, weeks: int) -> list[datetime]:
    """The starts of the `weeks` seven-day windows that end at `end`, oldest first."""
    return [end - _WEEK * (weeks - i) for i in range(weeks)]


def _bin(p: float) -> int:
    return min(int(p * RISK_BINS), RISK_BINS - 1)


def _money(value: float) -> float:
    return round(value, 2)


def _median(values: Sequence[float]) -> float | None:
    return round(median(values), 2) if values else None


def above_bound(segment: str, p: float | None, bounds: Mapping[str, float]) -> bool:
    """A churn probability above the segment's bound (a segment without one: never)."""
    bound = bounds.get(segment)
    return bound is not None and p is not None and p > bound


def build(
    facts: Sequence[Facts],
    *,
    end: datetime,
    weeks: int,
    segments: Sequence[str],
    bounds: Mapping[str, float],
    open_alerts: Iterable[str],
    histories: Mapping[str, Sequence[tuple[datetime, float]]],
    alerts: Iterable[AlertFact],
    verdicts: Mapping[str, Mapping[str, Any]],
    definition: str,
) -> dict[str, Any]:
    """
    The overview as of `end` (see the module's docstring for what each figure is).

    Args:
        facts: every customer in the store.
        end: the time the report is as of (`as_of`).
        weeks: how many seven-day windows end at `end`.
        segments: the rules file's segments, in its order.
        bounds: segment -> the churn probability above which a customer needs action.
        open_alerts: customers with an alert that has no verdict (the at-risk list's set).
        histories: customer -> its kept scorings (event time, churn probability), oldest
            first; only those up to `end` and the last one before the first week are used.
        alerts: the stored alerts (their rule and event time).
        verdicts: alert_id -> its verdict record (`verdict`, `customer_id`).
        definition: how the at-risk list defines who needs action (said with the count).
    """
    starts = week_starts(end, weeks)
    ends = [*starts[1:], end]
    by_id = {f.customer_id: f for f in facts}
    opened = set(open_alerts)
    active = [f for f in facts if f.cancelled_at is None]

    need_ids = {
        f.customer_id
        for f in active
        if f.churn_probability is not None
        and (above_bound(f.segment, f.churn_probability, bounds) or f.customer_id in opened)
    }
    seg_rows = []
    for segment in (*segments, *sorted({f.segment for f in active} - set(segments))):
        members = [f for f in active if f.segment == segment]
        scored = [f.churn_probability for f in members if f.churn_probability is not None]
        histogram = [0] * RISK_BINS
        for p in scored:
            histogram[_bin(p)] += 1
        seg_rows.append(
            {
                "segment": segment,
                "customers": len(members),
                "threshold": bounds.get(segment),
                "scored": len(scored),
                "need_action": sum(f.customer_id in need_ids for f in members),
                "mean_risk": round(sum(scored) / len(scored), 4) if scored else None,
                "histogram": histogram,
                "revenue": _money(sum(f.revenue for f in members)),
            }
        )

    judged: dict[str, set[str]] = {v: set() for v in VERDICTS}
    for record in verdicts.values():
        verdict, cid = record.get("verdict"), record.get("customer_id")
        if isinstance(verdict, str) and verdict in judged and isinstance(cid, str):
            judged[verdict].add(cid)
    churned = {f.customer_id for f in facts if f.cancelled_at is not None} | {
        cid for cid in judged["lost"] if cid in by_id
    }
    saved = {cid for cid in judged["saved"] if cid in by_id} - churned

    weekly: list[dict[str, Any]] = []
    for start, stop in zip(starts, ends, strict=True):
        weekly.append(
            {
                "week_start": format_ts(start),
                "week_end": format_ts(stop),
                "at_risk": 0,
                "scored": 0,
                "mean_risk": 0.0,
                "cancelled": 0,
                "alerts": 0,
                "by_rule": {},
            }
        )
    for cid, points in histories.items():
        fact = by_id.get(cid)
        if fact is None or not points:
            continue
        times = [at for at, _ in points]
        for row, stop in zip(weekly, ends, strict=True):
            i = bisect_right(times, stop)
            if i == 0:
                continue
            if fact.cancelled_at is not None and fact.cancelled_at <= stop:
                continue  # lost by then, no longer at risk
            row["scored"] += 1
            row["mean_risk"] += points[i - 1][1]
            if above_bound(fact.segment, points[i - 1][1], bounds):
                row["at_risk"] += 1
    for fact in facts:
        if fact.cancelled_at is not None:
            w = _week_of(fact.cancelled_at, starts, end)
            if w is not None:
                weekly[w]["cancelled"] += 1
    rules: set[str] = set()
    for alert in alerts:
        w = _week_of(alert.at, starts, end)
        if w is None:
            continue
        given = verdicts.get(alert.alert_id)
        verdict = given.get("verdict") if given else None
        key = verdict if isinstance(verdict, str) and verdict in VERDICTS else _OPEN
        mix = weekly[w]["by_rule"].setdefault(alert.rule, {"alerts": 0})
        mix["alerts"] += 1
        mix[key] = mix.get(key, 0) + 1
        weekly[w]["alerts"] += 1
        rules.add(alert.rule)
    for row in weekly:
        row["by_rule"] = dict(sorted(row["by_rule"].items()))
        row["mean_risk"] = round(row["mean_risk"] / row["scored"], 4) if row["scored"] else None

    ratings = sum(f.csat_count for f in facts)
    resolution = sorted(d for f in facts for d in f.resolution_days)
    end_day = (end - EPOCH) / _DAY
    open_ages = sorted(max(end_day - o, 0.0) for f in facts for o in f.open_ticket_opened)
    return {
        "as_of": format_ts(end),
        "weeks": weeks,
        "customers": len(facts),
        "at_risk": len(active),
        "risk_bins": [round(i / RISK_BINS, 2) for i in range(RISK_BINS + 1)],
        "segments": seg_rows,
        "need_action": {
            "customers": len(need_ids),
            "revenue": _money(sum(by_id[c].revenue for c in need_ids)),
            "definition": definition,
        },
        "churned": {
            "customers": len(churned),
            "cancelled": sum(f.cancelled_at is not None for f in facts),
            "judged_lost": len(judged["lost"] & set(by_id)),
            "revenue": _money(sum(by_id[c].revenue for c in churned)),
        },
        "saved": {
            "customers": len(saved),
            "revenue": _money(sum(by_id[c].revenue for c in saved)),
        },
        "weekly": weekly,
        "rules": sorted(rules),
        "satisfaction": {
            "ratings": ratings,
            "mean_csat": (round(sum(f.csat_sum for f in facts) / ratings, 3) if ratings else None),
        },
        "tickets": {
            "resolved": len(resolution),
            "median_resolution_days": _median(resolution),
            "open": len(open_ages),
            "median_open_age_days": _median(open_ages),
        },
        "revenue_unit": "lifetime purchases less returns, currencies not converted",
        "definitions": {
            "at_risk_by_week": "customers whose newest scoring by the week's end was above "
            "their segment's threshold (of those with a kept scoring by then: scored; "
            "mean_risk is their mean churn probability)",
            "churned": "cancelled, or an alert judged lost",
            "saved": "an alert judged saved, and not churned since",
            "tickets": "time from opening to solved or closed, over the remembered tickets",
        },
    }


def _week_of(at: datetime, starts: Sequence[datetime], end: datetime) -> int | None:
    """The index of the week that holds `at` (a week is (start, start + 7 days]), or None."""
    if not starts or at <= starts[0] or at > end:
        return None
    return bisect_left(starts, at) - 1
