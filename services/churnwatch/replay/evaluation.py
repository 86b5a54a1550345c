"""
How good were the alerts? Precision, recall and lead time against a ground truth.

Definitions (they are printed with the figures):
- A churner is lost at `lost_at`: its last activity plus the label horizon H when it went
  silent, or the moment it cancelled.
- An alert on a churner is timely when it was decided between H before its last activity and
  `lost_at`. Lead time = `lost_at` minus the first timely alert.
- Precision: the share of alerted customers with a timely alert (they did churn, and we told
  you in time). Recall: the share of churners with a timely alert.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class ChurnTruth:
    """What really happened to one customer."""

    churned: bool
    churn_at: datetime | None
    """The last activity of a churner."""
    cancelled: bool = False


@dataclass(slots=True)
class AlertLog:
    """The alerts of a run, reduced to what the evaluation needs."""

    first_by_customer: dict[str, datetime] = field(default_factory=dict)
    times_by_customer: dict[str, list[datetime]] = field(default_factory=dict)
    by_rule: Counter[str] = field(default_factory=Counter)
    by_action: Counter[str] = field(default_factory=Counter)
    total: int = 0
    alerts: list[tuple[str, str, datetime]] = field(default_factory=list)

    def add(self, customer_id: str, rule: str, action: str, at: datetime) -> None:
        self.total += 1
        self.alerts.append((customer_id, rule, at))
        self.by_rule[rule] += 1
        self.by_action[action] += 1
        self.times_by_customer.setdefault(customer_id, []).append(at)
        first = self.first_by_customer.get(customer_id)
        if first is None or at < first:
            self.first_by_customer[customer_id] = at


@dataclass(frozen=True, slots=True)
class Evaluation:
    customers: int
    churners: int
    alerted: int
    timely: int
    precision: float | None
    recall: float | None
    lead_days_p10: float | None
    lead_days_p50: float | None
    lead_days_p90: float | None
    timely_by_rule: dict[str, int] = field(default_factory=dict)
    """Per rule: how many of its alerts were timely (on a churner, in its window)."""


def _quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[round(q * 100) - 1] if 0 < q < 1 else values[0]


def _window(truth: ChurnTruth, horizon: timedelta) -> tuple[datetime, datetime] | None:
    """When an alert on this customer is in time: None for a customer who stayed."""
    if not truth.churned or truth.churn_at is None:
        return None
    lost_at = truth.churn_at if truth.cancelled else truth.churn_at + horizon
    return truth.churn_at - horizon, lost_at


def evaluate(
    log: AlertLog,
    truths: Mapping[str, ChurnTruth],
    *,
    horizon: timedelta,
    seen: Iterable[str] | None = None,
) -> Evaluation:
    """
    Score the alerts of a run against the truth.

    Args:
        log: the alerts.
        truths: per customer, what happened.
        horizon: the label horizon H.
        seen: the customers the run saw (default: all in `truths`).
    """
    population = set(truths) if seen is None else set(seen) & set(truths)
    churners = [c for c in population if truths[c].churned and truths[c].churn_at is not None]
    leads: list[float] = []
    timely_customers: set[str] = set()
    for customer_id in churners:
        window = _window(truths[customer_id], horizon)
        if window is None:  # every churner kept above has a churn time, so a window
            continue
        start, lost_at = window
        times = [t for t in log.times_by_customer.get(customer_id, ()) if start <= t <= lost_at]
        if times:
            timely_customers.add(customer_id)
            leads.append((lost_at - min(times)) / timedelta(days=1))
    alerted = [c for c in log.first_by_customer if c in population]
    leads.sort()
    timely_by_rule: Counter[str] = Counter()
    for customer_id, rule, at in log.alerts:
        known = truths.get(customer_id)
        window = None if known is None else _window(known, horizon)
        if window is not None and window[0] <= at <= window[1]:
            timely_by_rule[rule] += 1
    return Evaluation(
        customers=len(population),
        churners=len(churners),
        alerted=len(alerted),
        timely=len(timely_customers),
        precision=len(timely_customers) / len(alerted) if alerted else None,
        recall=len(timely_customers) / len(churners) if churners else None,
        lead_days_p10=_quantile(leads, 0.10),
        lead_days_p50=_quantile(leads, 0.50),
        lead_days_p90=_quantile(leads, 0.90),
        timely_by_rule=dict(timely_by_rule),
    )


def roc_auc(labels: Sequence[bool], scores: Sequence[float]) -> float | None:
    """
    Exact ROC AUC (ties count one half); None unless both classes are present.
    """
    pairs = sorted(zip(scores, labels, strict=True))
    positives = sum(1 for _, y in pairs if y)
    negatives = len(pairs) - positives
    if positives == 0 or negatives == 0:
        return None
    rank_sum = 0.0
    i = 0
    while i < len(pairs):
        j = i
        while j + 1 < len(pairs) and pairs[j + 1][0] == pairs[i][0]:
            j += 1
        mid_rank = (i + j) / 2 + 1
        rank_sum += mid_rank * sum(1 for k in range(i, j + 1) if pairs[k][1])
        i = j + 1
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)
