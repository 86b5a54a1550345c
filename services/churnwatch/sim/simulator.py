"""
The customer simulator: a stream of realistic customer events, and the truth about who churned.

It is the ground truth churnwatch's alerts are judged against, and the data the model is chosen
on. How it works:

- Customers (`population.py`) have a spend level (which gives the segment), login, purchase and
  ticket rates, and a *story* that scripts the level their latent health is pulled toward.
  About 18% join during the period (no history before their first event: cold start), 15% never
  log in (purchase-only), and about 22% churn within 180 days (starter most, enterprise least).
  That is the default regime, `subscription`; `SimConfig.regime` picks another kind of business
  (see "Regimes" below).
- Day by day, vectorized across customers: health (0 = the customer's normal) mean-reverts
  toward the story's level, with noise, and is hit by bad experiences (urgent or high tickets
  left unresolved, returns, low csat). The daily churn hazard is
  `base_hazard * exp(-HAZARD_SLOPE * health)` (x270 at health -1); `sudden` churners leave on a
  fixed day whatever their health. Login and purchase rates are `2 * sigmoid(4 * health)` times
  the customer's own, so before most churns activity thins out over weeks, but not before a
  sudden one, and a `bad_month` customer thins out and then comes back.
- Volume: about 32 valid events per customer over 180 days (72% logins, 16% purchases, 11%
  ticket events, under 1% returns and cancels), with a daily and weekly rhythm.
- A customer who churns on day d emits nothing from day d on, except an explicit `cancel` event on
  day d for some of them. `churn_at` is its last event (the cancel, when there is one): that is
  churnwatch's label definition (silent for the horizon H = 30 days, or cancelled).
- A customer who is still a customer is never silent for 30 days (except in a `shop`, below):
  after 18 to 27 quiet days (per customer) it shows up again (a login, or a purchase for
  purchase-only customers). So the truth agrees with churnwatch's label definition, except at
  the end: customers who churn in the last 30 days of the simulation are `churned` in the truth
  although the events alone cannot show it yet; score them with that in mind (or only count
  `churn_at` before the end minus H).
- A churner has at least one event in the simulation (churn waits for a customer's first event);
  every customer appears in the events.
- Scheduled follow-ups (ticket updates, returns) of a customer who churned are dropped, so a
  churner may leave a ticket open.

Regimes (`SimConfig.regime`; the numbers are for 3,000 customers over 365 days, seed 7):

- `subscription` (the default): as above; about 63 events per customer a year, a purchase
  every two to three weeks (median gap 13 days), 24% churn in the year, 31% of churners cancel.
- `shop`: purchase-only. No logins, ever; about 4 events per customer a year (70% purchases,
  returns for about one order in eight, a ticket now and then in the two weeks after an
  order). Most customers buy once or twice in a year (71% at most twice, 48% once); a minority
  buys every few weeks to months (median gap between a customer's purchases 30 days, 10% under
  8 days, 10% over 116: the next order only becomes likely over the two weeks after one). New
  customers (40%) join with their first purchase; every other customer buys at least once in
  the first `min(days, 365)` days, so every customer still appears in the events. About 25%
  churn in a year; churners simply stop buying (no cancels). A shop customer who is still a
  customer may be silent for months, so here the 30-day label and the truth disagree for many
  customers: that is the point of the regime (a shop needs another horizon, or rules like
  rules/examples/ecommerce.yaml that judge the gap against the customer's own rhythm).
- `b2b`: few, heavy accounts (choose a few hundred: each one is a few thousand events a year).
  About 2,200 events per account a year: several logins a day from its users on weekdays
  (office hours, hardly any at weekends), a ticket every two weeks or so, and an invoice (a
  `purchase` worth the account's users times a per-user price for the period: a median of
  about 600 EUR, over 2,500 for one in ten) every month (65%) or quarter (35%), on the same
  day of the month (gaps of 28 to 31 or 87 to 92 days); the invoice shrinks as health falls
  (users leave). Churn is rarer (about 10% a year) and slower (fades over four to ten months,
  service failures); about half the churners cancel.

Order and ids: records come out day by day, sorted by `ts` (ties by customer, type, reference);
with `disorder` a quarter of the events are emitted up to that much later than their `ts` order
(keep it under an hour: a ticket's updates come at least an hour after it opened). Event ids
`ev-{seed}-{n}` count records in emission order; a duplicate is the same bytes again right after
the original (a redelivery); a malformed record follows the valid record it was derived from.

Determinism: two generators spawned from the seed, one for behaviour and one for the wire
(disorder, duplicates, malformed records), so the truth does not depend on the wire options and
`truths()` can be computed without encoding anything. No global random state, no clock.

Memory: O(customers) (about 0.5 KiB each) plus one day's records and the pending follow-ups.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import numpy as np
from numpy.typing import NDArray

from churnwatch.core.errors import ChurnwatchError, ConfigError
from churnwatch.core.events import format_ts
from churnwatch.sim.population import (
    DRIFT,
    F64,
    I8,
    I64,
    LOYAL,
    NEVER,
    REGIMES,
    SEGMENTS,
    STORIES,
    Bools,
    Ints,
    Population,
    Regime,
    draw_population,
)
from churnwatch.sim.wire import (
    CANCEL,
    CANCEL_REASONS,
    DAY_MS,
    HOUR_MS,
    KINDS,
    LOGIN,
    MALFORMED_KINDS,
    MALFORMED_WEIGHTS,
    PURCHASE,
    RETURN,
    RETURN_REASONS,
    TICKET,
    Encoder,
)

THETA: Final = 0.1
"""Daily pull of health toward the story's level."""
SIGMA: Final = 0.05
"""Daily noise of health."""
HAZARD_SLOPE: Final = 5.6
"""Hazard = base hazard * exp(-slope * health): x1000 at health -1."""

_HOUR_WEIGHTS: Final = np.array(
    [
        *(0.3, 0.2, 0.15, 0.1, 0.1, 0.2, 0.5, 1.0, 1.6, 1.8, 1.8, 1.7),
        *(1.6, 1.7, 1.7, 1.6, 1.5, 1.4, 1.4, 1.5, 1.6, 1.4, 1.0, 0.6),
    ]
)
_HOUR_CUM: Final = np.cumsum(_HOUR_WEIGHTS) / _HOUR_WEIGHTS.sum()
_OFFICE_HOUR_WEIGHTS: Final = np.array(
    [
        *(0.05, 0.03, 0.02, 0.02, 0.03, 0.1, 0.4, 1.2, 2.2, 2.6, 2.6, 2.3),
        *(1.8, 2.2, 2.4, 2.3, 2.0, 1.5, 0.9, 0.6, 0.4, 0.3, 0.2, 0.1),
    ]
)
_OFFICE_HOUR_CUM: Final = np.cumsum(_OFFICE_HOUR_WEIGHTS) / _OFFICE_HOUR_WEIGHTS.sum()
_ORDER_TICKET_DAYS: Final = 14
"""`shop`: tickets come in the days after an order (where is it, it arrived broken)."""
_REORDER_DAYS: Final = 14.0
"""`shop`: the days over which the chance of the next order builds up after one."""
_SEVERITY_P: Final = np.array([[0.30, 0.45, 0.18, 0.07], [0.15, 0.40, 0.30, 0.15]])
_RESOLVE_DAYS: Final = np.array([2.0, 1.2, 0.6, 0.3])  # median, by severity
_NEGLECT_P: Final = np.array([0.04, 0.04, 0.12, 0.12])  # left unresolved for a week or more
_PENALTY_AFTER: Final = np.array([0, 0, 4, 2])  # days open before it starts to hurt
_PENALTY: Final = np.array([0.0, 0.0, 0.03, 0.06])  # health lost per day while it hurts
_CSAT_SHOCK: Final = np.array([0.0, -0.5, -0.25, -0.05, 0.05, 0.1])
_RETURN_SHOCK: Final = -0.15
_MALFORMED_CUM: Final = np.cumsum(MALFORMED_WEIGHTS) / sum(MALFORMED_WEIGHTS)


@dataclass(frozen=True, slots=True)
class SimConfig:
    """
    What to simulate; the same config gives the same bytes.
    """

    customers: int = 20_000
    days: int = 180
    seed: int = 7
    start_at: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    malformed_rate: float = 0.0
    """Malformed records per valid event (each follows the event it was derived from)."""
    duplicate_rate: float = 0.0
    """Share of valid events emitted twice (same bytes, right after: a redelivery)."""
    disorder: timedelta = timedelta(0)
    """Some events are emitted up to this much later than their `ts` order; 0 = in order."""
    regime: Regime = "subscription"
    """The kind of business: `subscription`, `shop` or `b2b` (see the module docstring)."""

    def __post_init__(self) -> None:
        if self.customers < 1:
            raise ConfigError(f"customers must be at least 1, got {self.customers}")
        if self.days < 1:
            raise ConfigError(f"days must be at least 1, got {self.days}")
        if self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed}")
        if self.start_at.tzinfo is None or self.start_at.utcoffset() is None:
            raise ConfigError(f"start_at must be timezone-aware, got {self.start_at.isoformat()}")
        if self.start_at.microsecond % 1000:
            msg = f"start_at must be at millisecond precision, got {self.start_at.isoformat()}"
            raise ConfigError(msg)
        for name in ("malformed_rate", "duplicate_rate"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {rate}")
        if self.disorder < timedelta(0):
            raise ConfigError(f"disorder must not be negative, got {self.disorder}")
        if self.regime not in REGIMES:
            msg = f"regime must be one of {', '.join(REGIMES)}, got {self.regime!r}"
            raise ConfigError(msg)


@dataclass(frozen=True, slots=True)
class Truth:
    """
    What really happened to one customer: one row of labels.csv.

    `archetype` is the customer's story (see `churnwatch.sim.population`); `churned` says how it
    ended. A `loyal` customer who churned anyway is `drift`.
    """

    customer_id: str
    segment: str
    churned: bool
    churn_at: datetime | None
    archetype: str


@dataclass(frozen=True, slots=True)
class SimSummary:
    """
    Counts of one run, for the CLI to print.
    """

    customers: int
    days: int
    records: int
    events: int
    duplicates: int
    malformed: int
    churned: int
    events_by_type: dict[str, int]
    archetypes: dict[str, int]


@dataclass(frozen=True, slots=True)
class _Batch:
    """
    Events as columns; `ref` is the order, ticket or channel number.
    """

    cust: I64
    ts: I64
    kind: I8
    ref: I64
    amount: F64
    severity: I8
    status: I8
    csat: I8
    reason: I8

    def take(self, which: Bools | I64) -> _Batch:
        return _Batch(
            self.cust[which],
            self.ts[which],
            self.kind[which],
            self.ref[which],
            self.amount[which],
            self.severity[which],
            self.status[which],
            self.csat[which],
            self.reason[which],
        )

    @staticmethod
    def concat(batches: list[_Batch]) -> _Batch:
        return _Batch(
            np.concatenate([b.cust for b in batches]),
            np.concatenate([b.ts for b in batches]),
            np.concatenate([b.kind for b in batches]),
            np.concatenate([b.ref for b in batches]),
            np.concatenate([b.amount for b in batches]),
            np.concatenate([b.severity for b in batches]),
            np.concatenate([b.status for b in batches]),
            np.concatenate([b.csat for b in batches]),
            np.concatenate([b.reason for b in batches]),
        )


def _batch(
    cust: I64,
    ts: I64,
    kind: int,
    *,
    ref: Ints | None = None,
    amount: F64 | None = None,
    severity: Ints | None = None,
    status: int = 0,
    csat: Ints | None = None,
    reason: Ints | None = None,
) -> _Batch:
    k = cust.size
    zeros8 = np.zeros(k, dtype=np.int8)
    return _Batch(
        cust.astype(np.int64),
        ts.astype(np.int64),
        np.full(k, kind, dtype=np.int8),
        np.zeros(k, dtype=np.int64) if ref is None else ref.astype(np.int64),
        np.zeros(k) if amount is None else amount,
        zeros8 if severity is None else severity.astype(np.int8),
        np.full(k, status, dtype=np.int8),
        zeros8 if csat is None else csat.astype(np.int8),
        zeros8 if reason is None else reason.astype(np.int8),
    )


@dataclass(frozen=True, slots=True)
class _Billing:
    """
    `b2b`: when each account is invoiced. The first invoice falls on the anchor day (an account's
    join day, or a day before the start), the next ones on the anchor's day of the month (at most
    the 28th, which every month has) every `months` months (1 or 3).
    """

    start_day: np.datetime64
    anchor: I64
    months: I64
    day_of_month: I64
    month: I64
    """The anchor's month, counted from January 1970."""

    @staticmethod
    def of(anchor: I64, months: I64, start_day: np.datetime64) -> _Billing:
        day_of_month, month = _calendar(start_day + anchor.astype("timedelta64[D]"))
        return _Billing(start_day, anchor, months, np.minimum(day_of_month, 28), month)

    def due(self, d: int) -> Bools:
        """
        Who is invoiced on day `d`, if still a customer.
        """
        day_of_month, month = _calendar(self.start_day + np.array([d], dtype="timedelta64[D]"))
        apart = int(month[0]) - self.month
        periodic = (self.day_of_month == int(day_of_month[0])) & (apart % self.months == 0)
        due: Bools = (self.anchor == d) | ((self.anchor < d) & (apart > 0) & periodic)
        return due


def _calendar(dates: NDArray[np.datetime64]) -> tuple[I64, I64]:
    """
    The day of the month (1 to 31) and the month (counted from January 1970) of each date.
    """
    month = dates.astype("datetime64[M]")
    day_of_month: I64 = (dates - month.astype("datetime64[D]")).astype(np.int64) + 1
    months: I64 = month.astype(np.int64)
    return day_of_month, months


def _sigmoid(x: F64) -> F64:
    result: F64 = 1.0 / (1.0 + np.exp(-x))
    return result


class _Run:
    """
    The mutable state of one pass over the simulated days.
    """

    def __init__(self, config: SimConfig, *, emit: bool) -> None:
        self.config = config
        self.emit = emit
        world_seed, wire_seed = np.random.SeedSequence(config.seed).spawn(2)
        self.rng = np.random.default_rng(world_seed)
        self.wire = np.random.default_rng(wire_seed)
        self.pop: Population = draw_population(
            self.rng, config.customers, config.days, config.regime
        )
        n = config.customers
        self.health: F64 = self.pop.target(0) + self.rng.normal(0.0, 0.18, n)
        self.penalty: F64 = np.zeros(n)
        self.shock: F64 = np.zeros(n)
        self.active: Bools = np.zeros(n, dtype=np.bool_)
        self.churned: Bools = np.zeros(n, dtype=np.bool_)
        self.seen: Bools = np.zeros(n, dtype=np.bool_)
        self.last_day: I64 = -self.rng.integers(0, 11, n).astype(np.int64)
        self.last_ts: I64 = np.full(n, -1, dtype=np.int64)
        self.orders = 0
        self.tickets = 0
        self.due: dict[int, list[_Batch]] = {}
        self.penalty_changes: dict[int, list[tuple[I64, F64]]] = {}
        start_ms = (config.start_at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
        self.encoder = Encoder(seed=config.seed, start_ms=start_ms, customers=n)
        self.weekday = config.start_at.astimezone(UTC).weekday()
        self.disorder_ms = config.disorder // timedelta(milliseconds=1)
        self.by_kind = np.zeros(len(KINDS), dtype=np.int64)
        self.records = 0
        self.duplicates = 0
        self.malformed = 0
        self.hour_cum = _OFFICE_HOUR_CUM if config.regime == "b2b" else _HOUR_CUM
        self.last_order_day: I64 = np.full(n, -int(NEVER), dtype=np.int64)
        self.billing: _Billing | None = None
        if self.pop.bill_anchor is not None and self.pop.bill_months is not None:
            start_day = np.datetime64(config.start_at.astimezone(UTC).date(), "D")
            self.billing = _Billing.of(self.pop.bill_anchor, self.pop.bill_months, start_day)

    def times(self, k: int) -> I64:
        """
        `k` times of day (ms), busier in the day than at night.
        """
        hour = np.searchsorted(self.hour_cum, self.rng.random(k), side="right")
        result: I64 = np.minimum(hour, 23) * HOUR_MS + self.rng.integers(0, HOUR_MS, k)
        return result

    def schedule(self, batch: _Batch) -> None:
        day = batch.ts // DAY_MS
        for target in np.unique(day).tolist():
            if target < self.config.days:
                self.due.setdefault(target, []).append(batch.take(day == target))

    def hurt(self, cust: I64, rate: F64, start_day: I64, end_day: I64) -> None:
        """
        Lose `rate` health a day from `start_day` until `end_day` (exclusive).
        """
        keep = (rate > 0) & (end_day > start_day) & (start_day < self.config.days)
        for sign, days in ((1.0, start_day), (-1.0, end_day)):
            for target in np.unique(days[keep]).tolist():
                pick = keep & (days == target)
                self.penalty_changes.setdefault(target, []).append((cust[pick], sign * rate[pick]))

    def open_tickets(self, cust: I64, ts: I64, severity: I8, failing: Bools) -> _Batch:
        rng = self.rng
        k = cust.size
        ids = self.tickets + np.arange(k, dtype=np.int64)
        self.tickets += k
        resolve = _RESOLVE_DAYS[severity] * rng.lognormal(0.0, 0.6, k)
        neglected = rng.random(k) < np.where(failing, 0.7, _NEGLECT_P[severity])
        resolve = np.where(neglected, rng.uniform(8.0, 25.0, k), resolve)
        resolve_ms = np.maximum((resolve * DAY_MS).astype(np.int64), 2 * HOUR_MS)
        solved_ts = ts + resolve_ms
        pending_ts = (
            ts + HOUR_MS + ((resolve_ms - 2 * HOUR_MS) * rng.uniform(0.1, 0.7, k)).astype(np.int64)
        )
        has_pending = rng.random(k) < 0.45
        closed_ts = solved_ts + rng.integers(DAY_MS, 6 * DAY_MS, k)
        has_closed = rng.random(k) < 0.55
        score = 4.4 - 0.12 * resolve - 0.5 * (severity == 3) - 2.5 * failing
        csat = np.clip(np.rint(score + rng.normal(0.0, 0.8, k)), 1, 5).astype(np.int8)
        u = rng.random(k)
        rated_solved = u < np.where(failing, 0.8, 0.35)
        rated_closed = ~rated_solved & has_closed & (u < 0.55)
        no_csat = np.zeros(k, dtype=np.int8)
        self.schedule(
            _batch(cust, pending_ts, TICKET, ref=ids, severity=severity, status=1).take(has_pending)
        )
        self.schedule(
            _batch(
                cust,
                solved_ts,
                TICKET,
                ref=ids,
                severity=severity,
                status=2,
                csat=np.where(rated_solved, csat, no_csat),
            )
        )
        self.schedule(
            _batch(
                cust,
                closed_ts,
                TICKET,
                ref=ids,
                severity=severity,
                status=3,
                csat=np.where(rated_closed, csat, no_csat),
            ).take(has_closed)
        )
        self.hurt(
            cust,
            _PENALTY[severity],
            ts // DAY_MS + _PENALTY_AFTER[severity],
            solved_ts // DAY_MS,
        )
        return _batch(cust, ts, TICKET, ref=ids, severity=severity, status=0)

    def day(self, d: int) -> list[bytes]:
        pop, rng = self.pop, self.rng
        n = pop.size
        everyone = np.arange(n, dtype=np.int64)
        midnight = d * DAY_MS

        for cust, delta in self.penalty_changes.pop(d, []):
            np.add.at(self.penalty, cust, delta)
        noise = rng.standard_normal(n)
        self.health += THETA * (pop.target(d) - self.health) + SIGMA * noise
        self.health += self.shock - self.penalty
        self.shock[:] = 0.0
        health = self.health

        # Who leaves today: they emit nothing from today on, except a cancel.
        hazard = pop.base_hazard * np.exp(np.minimum(-HAZARD_SLOPE * health, 30.0))
        leaving = (
            self.active & self.seen & ((rng.random(n) < -np.expm1(-hazard)) | (pop.sudden_day <= d))
        )
        gone = np.flatnonzero(leaving)
        cancels = gone[rng.random(gone.size) < pop.cancel_p[gone]]
        reasons = rng.integers(0, len(CANCEL_REASONS), cancels.size)
        batches = [_batch(cancels, midnight + self.times(cancels.size), CANCEL, reason=reasons)]
        self.active[gone] = False
        self.churned[gone] = True

        joining = pop.join_day == d
        self.active |= joining
        act = self.active

        weekend = (self.weekday + d) % 7 >= 5
        login_rate = pop.login_rate * 2.0 * _sigmoid(4.0 * health)
        purchase_rate = pop.purchase_rate * 2.0 * _sigmoid(4.0 * health)
        purchase_rate *= np.where(d < pop.boost_until, 3.0, 1.0)
        if pop.regime == "shop":
            # Nobody orders again the next day: the next order becomes likely over two weeks
            # (except in a buying spree), so gaps are weeks to months rather than days.
            ramp = np.clip((d - self.last_order_day) / _REORDER_DAYS, 0.0, 1.0)
            purchase_rate *= np.where(d < pop.boost_until, 1.0, ramp)
        if weekend:
            login_rate *= pop.weekend_login
            purchase_rate *= pop.weekend_purchase
        unhappy = np.maximum(0.0, -0.3 - health)
        failing_window = (pop.failure_day >= 0) & (d > pop.failure_day) & (d < pop.failure_day + 14)
        ticket_rate = pop.ticket_rate * (1.0 + 1.2 * unhappy)
        if pop.regime == "shop":
            ticket_rate = ticket_rate * (d - self.last_order_day <= _ORDER_TICKET_DAYS)
        ticket_rate = ticket_rate + 0.12 * failing_window
        logins = rng.poisson(np.where(act, login_rate, 0.0))
        purchases = rng.poisson(np.where(act, purchase_rate, 0.0))
        tickets = rng.poisson(np.where(act, ticket_rate, 0.0))
        if self.billing is not None:
            purchases += act & self.billing.due(d)
        failing_today = act & (pop.failure_day == d)
        # A customer who is still a customer is never silent for 30 days (see the module doc),
        # except in a shop, which only makes sure that everyone shows up once.
        quiet = (logins + purchases + tickets == 0) & ~failing_today
        first_day = joining & (pop.join_day > 0)
        due = first_day | (d - self.last_day >= pop.gap_limit)
        if pop.appear_by is not None:
            due |= ~self.seen & (d >= pop.appear_by)
        forced = act & quiet & due
        logs_in = pop.login_rate > 0
        logins += forced & logs_in
        purchases += forced & ~logs_in

        cust = np.repeat(everyone, logins)
        k = cust.size
        channel = np.where(rng.random(k) < 0.8, pop.channel[cust], rng.integers(0, 3, k))
        batches.append(_batch(cust, midnight + self.times(k), LOGIN, ref=channel))

        cust = np.repeat(everyone, purchases)
        k = cust.size
        ts = midnight + self.times(k)
        if self.billing is None:
            amount = np.maximum(
                np.round(pop.mean_amount[cust] * rng.lognormal(0.0, 0.4, k), 2), 1.0
            )
        else:
            # An invoice: the months it covers at the account's price, for the users it still
            # has (fewer as health falls, a few more when it thrives), plus usage.
            users = 0.5 + _sigmoid(4.0 * health[cust])
            value = pop.mean_amount[cust] * self.billing.months[cust] * users
            amount = np.maximum(np.round(value * rng.lognormal(0.0, 0.05, k), 2), 1.0)
        if pop.regime == "shop":
            self.last_order_day[cust] = d
        orders = self.orders + np.arange(k, dtype=np.int64)
        self.orders += k
        batches.append(_batch(cust, ts, PURCHASE, ref=orders, amount=amount))
        return_p = np.minimum(pop.return_p[cust] * (1.0 + unhappy[cust]), 0.9)
        returned = rng.random(k) < return_p
        delay = rng.integers(2 * DAY_MS, 14 * DAY_MS, k)
        whole = rng.random(k) < 0.65
        part = np.maximum(np.floor(amount * rng.uniform(0.2, 0.9, k) * 100.0) / 100.0, 0.01)
        reason = rng.integers(0, len(RETURN_REASONS), k)
        self.schedule(
            _batch(
                cust,
                ts + delay,
                RETURN,
                ref=orders,
                amount=np.where(whole, amount, part),
                reason=reason,
            ).take(returned)
        )

        cust = np.concatenate([np.repeat(everyone, tickets), np.flatnonzero(failing_today)])
        k = cust.size
        failing = np.arange(k) >= k - int(failing_today.sum())
        sad = (health[cust] < -0.5).astype(np.int64)
        cum = np.cumsum(_SEVERITY_P, axis=1)[sad]
        severity = (rng.random(k)[:, None] > cum).sum(axis=1).clip(0, 3).astype(np.int8)
        severity = np.where(failing, np.where(rng.random(k) < 0.6, 3, 2), severity).astype(np.int8)
        batches.append(self.open_tickets(cust, midnight + self.times(k), severity, failing))

        due = self.due.pop(d, [])
        if due:
            follow_ups = _Batch.concat(due)
            follow_ups = follow_ups.take(act[follow_ups.cust])
            shock = np.where(follow_ups.kind == RETURN, _RETURN_SHOCK, _CSAT_SHOCK[follow_ups.csat])
            np.add.at(self.shock, follow_ups.cust, shock)
            batches.append(follow_ups)

        today = _Batch.concat(batches)
        np.maximum.at(self.last_ts, today.cust, today.ts)
        self.seen[today.cust] = True
        self.last_day[today.cust] = d
        self.by_kind += np.bincount(today.kind, minlength=len(KINDS))
        if not self.emit:
            return []
        return self.encode(today)

    def encode(self, today: _Batch) -> list[bytes]:
        config, wire = self.config, self.wire
        k = today.cust.size
        emit_at = today.ts
        if self.disorder_ms > 0:
            late = wire.random(k) < 0.25
            emit_at = today.ts + np.where(late, wire.integers(0, self.disorder_ms + 1, k), 0)
        order = np.lexsort((today.ref, today.kind, today.cust, today.ts, emit_at))
        twice = (wire.random(k) < config.duplicate_rate)[order].tolist()
        broken = (wire.random(k) < config.malformed_rate)[order].tolist()
        how = np.searchsorted(_MALFORMED_CUM, wire.random(k), side="right")
        how = np.minimum(how, len(MALFORMED_KINDS) - 1)[order].tolist()
        variant = wire.integers(0, 1 << 16, k)[order].tolist()
        encode = self.encoder.encode
        out: list[bytes] = []
        rows = zip(
            today.kind[order].tolist(),
            today.cust[order].tolist(),
            today.ts[order].tolist(),
            today.ref[order].tolist(),
            today.amount[order].tolist(),
            today.severity[order].tolist(),
            today.status[order].tolist(),
            today.csat[order].tolist(),
            today.reason[order].tolist(),
            strict=True,
        )
        for i, row in enumerate(rows):
            raw = encode(*row)
            out.append(raw)
            if twice[i]:
                out.append(raw)
                self.duplicates += 1
            if broken[i]:
                out.append(self.encoder.malformed(raw, how[i], variant[i]))
                self.malformed += 1
        self.records += len(out)
        return out

    def truths(self) -> list[Truth]:
        pop = self.pop
        start_at = self.config.start_at.astimezone(UTC)
        result = []
        for index, (segment, story, churned, last_ts) in enumerate(
            zip(
                pop.segment.tolist(),
                pop.story.tolist(),
                self.churned.tolist(),
                self.last_ts.tolist(),
                strict=True,
            )
        ):
            archetype = DRIFT if churned and story == LOYAL else STORIES[story]
            result.append(
                Truth(
                    customer_id=self.encoder.customer_id(index),
                    segment=SEGMENTS[segment],
                    churned=churned,
                    churn_at=start_at + timedelta(milliseconds=last_ts) if churned else None,
                    archetype=archetype,
                )
            )
        return result


class Simulation:
    """
    One simulated population: its records (streamed) and its ground truth.

    `records()` and `batches()` start a fresh pass each time they are iterated, so they give the
    same bytes every time. `truths()` returns the truth of the last pass that ran to the end; if
    none has, it runs one without encoding records (the truth does not depend on the wire).
    """

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self._truths: list[Truth] | None = None
        self._summary: SimSummary | None = None

    def batches(self) -> Iterator[list[bytes]]:
        """
        The records, one list per simulated day, in emission order.
        """
        yield from self._run(emit=True)

    def records(self) -> Iterator[bytes]:
        """
        The records one by one: valid events as `event_to_json` writes them, malformed ones as
        raw bytes; none contains a newline.
        """
        for batch in self._run(emit=True):
            yield from batch

    def truths(self) -> list[Truth]:
        """
        One `Truth` per customer, ordered by customer id.
        """
        if self._truths is None:
            for _ in self._run(emit=False):
                pass
        truths = self._truths
        if truths is None:  # set by the pass that just ended; None is a bug of ours
            msg = "simulation: the pass ended without its ground truth"
            raise RuntimeError(msg)
        return truths

    def summary(self) -> SimSummary:
        """
        The counts of the last pass over `records()`.

        Raises:
            ChurnwatchError: if no pass over the records has run to the end yet.
        """
        if self._summary is None:
            msg = "summary: expected a completed pass over records(), got none"
            raise ChurnwatchError(msg)
        return self._summary

    def _run(self, *, emit: bool) -> Iterator[list[bytes]]:
        run = _Run(self.config, emit=emit)
        for d in range(self.config.days):
            yield run.day(d)
        truths = run.truths()
        self._truths = truths
        if emit:
            valid = int(run.by_kind.sum())
            self._summary = SimSummary(
                customers=self.config.customers,
                days=self.config.days,
                records=run.records,
                events=valid,
                duplicates=run.duplicates,
                malformed=run.malformed,
                churned=sum(truth.churned for truth in truths),
                events_by_type={
                    kind: int(count) for kind, count in zip(KINDS, run.by_kind, strict=True)
                },
                archetypes=dict(sorted(Counter(truth.archetype for truth in truths).items())),
            )


LABELS_HEADER: Final = ("customer_id", "segment", "churned", "churn_at", "archetype")


def write_truths(truths: list[Truth], path: Path) -> None:
    """
    Write labels.csv: one row per customer, `churned` as 0/1, `churn_at` ISO 8601 UTC or empty.
    """
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(LABELS_HEADER)
        for truth in truths:
            churn_at = "" if truth.churn_at is None else format_ts(truth.churn_at)
            row = (truth.customer_id, truth.segment, int(truth.churned), churn_at, truth.archetype)
            writer.writerow(row)


def read_truths(path: Path) -> dict[str, Truth]:
    """
    Read a labels.csv written by `write_truths`.

    Raises:
        ChurnwatchError: naming the line and the field, when the file is not such a file.
    """
    result: dict[str, Truth] = {}
    with path.open(encoding="utf-8", newline="") as file:
        reader = csv.reader(file)
        header = next(reader, None)
        if header is None or tuple(header) != LABELS_HEADER:
            msg = f"{path}: expected the header {','.join(LABELS_HEADER)}, got {header}"
            raise ChurnwatchError(msg)
        for line, row in enumerate(reader, start=2):
            if len(row) != len(LABELS_HEADER):
                msg = f"{path}:{line}: expected {len(LABELS_HEADER)} fields, got {len(row)}"
                raise ChurnwatchError(msg)
            customer_id, segment, churned, churn_at, archetype = row
            if churned not in ("0", "1"):
                raise ChurnwatchError(f"{path}:{line}: churned must be 0 or 1, got {churned!r}")
            at = _read_at(churn_at, where=f"{path}:{line}") if churn_at else None
            result[customer_id] = Truth(customer_id, segment, churned == "1", at, archetype)
    return result


def _read_at(text: str, *, where: str) -> datetime:
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        msg = f"{where}: churn_at must be ISO 8601 or empty, got {text!r}"
        raise ChurnwatchError(msg) from None
    if at.tzinfo is None:
        raise ChurnwatchError(f"{where}: churn_at must have a time zone, got {text!r}")
    return at.astimezone(UTC)


def write_simulation(
    config: SimConfig, out_dir: Path, *, progress: Callable[[int], None] | None = None
) -> SimSummary:
    """
    Simulate and write `out_dir/events.jsonl` (one record a line) and `out_dir/labels.csv`.

    Args:
        config: what to simulate.
        out_dir: created if missing; the two files are overwritten.
        progress: called after each simulated day with the number of records written so far.

    Returns:
        The counts of the run.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    simulation = Simulation(config)
    written = 0
    with (out_dir / "events.jsonl").open("wb") as file:
        for batch in simulation.batches():
            if batch:
                file.write(b"\n".join(batch))
                file.write(b"\n")
                written += len(batch)
            if progress is not None:
                progress(written)
    write_truths(simulation.truths(), out_dir / "labels.csv")
    return simulation.summary()
