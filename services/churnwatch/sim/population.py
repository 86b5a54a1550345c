"""
The simulated customers: who they are, how they behave, and the story each one lives through.

Everything here is drawn once, up front, as numpy arrays with one entry per customer, so the
day-by-day loop in `simulator.py` stays vectorized. Memory is a few dozen numbers per customer.

A customer's *story* scripts the level its latent health is pulled toward (0 = its normal):

- `loyal`: health wanders around normal; bad experiences (unresolved urgent tickets, returns,
  low satisfaction) knock it down for a while. A loyal customer can still churn when health
  falls far enough; the ground truth then calls it `drift`.
- `bad_month`: health dips for three to six weeks (activity thins out, like a churner's), then
  recovers. Most survive it; a few churn in the dip.
- `slow_fade`: health declines over two to five months (some were already fading at the start);
  logins and purchases thin out; the churn hazard rises until the customer leaves.
- `service_failure`: an urgent or high ticket that is left unresolved or rated badly, follow-up
  tickets, then health falls within one to two weeks; about one in ten recovers.
- `buyer_remorse`: mostly new customers who buy a lot early, send most of it back, and leave.
- `sudden`: leaves on a given day with no change in behaviour beforehand (a budget cut, a
  competitor's offer): the part no model can see coming.

Churn stories are rarer in bigger segments (x1.15 starter, x0.9 growth, x0.6 enterprise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

SEGMENTS: Final[tuple[str, ...]] = ("starter", "growth", "enterprise")
"""Index = segment code. Derived from the customer's spend level (expected EUR per 30 days)."""

GROWTH_FROM_EUR: Final = 50.0
ENTERPRISE_FROM_EUR: Final = 150.0

STORIES: Final[tuple[str, ...]] = (
    "loyal",
    "bad_month",
    "slow_fade",
    "service_failure",
    "buyer_remorse",
    "sudden",
)
LOYAL, BAD_MONTH, SLOW_FADE, SERVICE_FAILURE, BUYER_REMORSE, SUDDEN = range(6)
DRIFT: Final = "drift"
"""The archetype of a loyal customer who churned anyway (health drifted down)."""

NEW_SHARE: Final = 0.18
"""Customers who join during the simulation, with no history before their first event."""
PURCHASE_ONLY_SHARE: Final = 0.15
"""E-commerce style customers: purchases (and tickets, returns) but never a login."""

# Probability of each story (loyal takes what is left), for customers present at the start and
# for those who join during the period. Churn stories are scaled per segment below.
_STORY_P_EXISTING: Final = (0.0, 0.08, 0.10, 0.06, 0.01, 0.035)
_STORY_P_NEW: Final = (0.0, 0.06, 0.07, 0.05, 0.18, 0.05)
_CHURN_STORY_SCALE: Final = (1.15, 0.9, 0.6)  # starter, growth, enterprise
_CANCEL_P: Final = (0.15, 0.15, 0.10, 0.50, 0.40, 0.35)  # explicit cancel at churn, per story

CHANNELS: Final[tuple[str, ...]] = ("web", "ios", "android")
_CHANNEL_P: Final = (0.5, 0.3, 0.2)

NEVER: Final = 1e9
"""A day that never comes."""

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
I8 = NDArray[np.int8]
Bools = NDArray[np.bool_]
Ints = NDArray[np.integer[Any]]


@dataclass(frozen=True, slots=True)
class Population:
    """
    One entry per customer in every array; rates are per day at full health.
    """

    size: int
    segment: I8
    story: I8
    join_day: I64
    login_rate: F64
    purchase_rate: F64
    mean_amount: F64
    ticket_rate: F64
    return_p: F64
    channel: I8
    weekend_login: F64
    weekend_purchase: F64
    gap_limit: I64
    """A customer who is still a customer shows up at least this often (days); see simulator."""
    base_hazard: F64
    """Daily churn hazard at normal health (health 0)."""
    dip_start: F64
    dip_ramp: F64
    dip_depth: F64
    recover_at: F64
    recover_len: F64
    sudden_day: F64
    failure_day: I64
    boost_until: F64
    cancel_p: F64

    def target(self, day: int) -> F64:
        """
        The level each customer's health is pulled toward on `day` (its story's script).

        Health is relative to the customer's own normal: 0 is normal, -1 is well below.
        """
        down = np.clip((day - self.dip_start) / self.dip_ramp, 0.0, 1.0)
        back = np.clip((day - self.recover_at) / self.recover_len, 0.0, 1.0)
        result: F64 = -self.dip_depth * down * (1.0 - back)
        return result


def _pick(rng: np.random.Generator, probs: F64) -> I8:
    """
    One category per row of `probs` (rows sum to 1).
    """
    cum = np.cumsum(probs, axis=1)
    u = rng.random(int(probs.shape[0]))
    picked: I8 = np.minimum((u[:, None] > cum).sum(axis=1), probs.shape[1] - 1).astype(np.int8)
    return picked


def draw_population(rng: np.random.Generator, customers: int, days: int) -> Population:
    """
    Draw `customers` customers for a simulation of `days` days.

    Args:
        rng: the behaviour generator; draws happen in a fixed order, so a seed fixes everything.
        customers: how many customers.
        days: the length of the simulation (stories are scheduled inside it).

    Returns:
        The population, as arrays.
    """
    n = customers
    span = float(days)

    new_share = NEW_SHARE if days >= 2 else 0.0
    is_new = rng.random(n) < new_share
    join_day = np.where(is_new, rng.integers(1, max(days, 2), n), 0).astype(np.int64)

    purchase_only = rng.random(n) < PURCHASE_ONLY_SHARE
    login_rate = rng.lognormal(np.log(0.17), 0.6, n)
    purchase_rate = rng.lognormal(np.log(0.022), 0.6, n) * np.where(purchase_only, 2.8, 1.0)
    mean_amount = rng.lognormal(np.log(45.0), 0.9, n)
    monthly_value = 30.0 * purchase_rate * mean_amount
    segment = np.where(
        monthly_value >= ENTERPRISE_FROM_EUR, 2, np.where(monthly_value >= GROWTH_FROM_EUR, 1, 0)
    ).astype(np.int8)

    login_rate *= np.array([0.9, 1.0, 1.4])[segment]
    login_rate = np.where(purchase_only, 0.0, login_rate)
    ticket_rate = rng.lognormal(np.log(0.006), 0.5, n) * np.array([0.9, 1.1, 1.8])[segment]
    return_p = 0.02 + 0.10 * rng.beta(1.0, 3.0, n)
    channel = _pick(rng, np.broadcast_to(np.array(_CHANNEL_P), (n, 3)))
    weekend_login = np.array([1.05, 0.7, 0.45])[segment]
    weekend_purchase = np.array([1.1, 1.0, 0.8])[segment]
    gap_limit = rng.integers(18, 28, n).astype(np.int64)

    base_p = np.where(is_new[:, None], np.array(_STORY_P_NEW), np.array(_STORY_P_EXISTING))
    scale = np.array(_CHURN_STORY_SCALE)[segment]
    probs = base_p * np.where(np.arange(6) >= SLOW_FADE, scale[:, None], 1.0)
    probs[:, LOYAL] = 1.0 - probs[:, 1:].sum(axis=1)
    story = _pick(rng, probs)

    base_hazard = 6e-5 * rng.lognormal(0.0, 0.5, n) * np.array([1.3, 1.0, 0.6])[segment]
    # Every story's parameters are drawn for everyone (fixed draw order), then selected.
    base_day = join_day.astype(np.float64)
    u: F64 = rng.random((8, n))

    def between(row: int, low: float, high: float) -> F64:
        result: F64 = low + (high - low) * u[row]
        return result

    dip_start = np.full(n, NEVER)
    dip_ramp = np.ones(n)
    dip_depth = np.zeros(n)
    recover_at = np.full(n, NEVER)
    recover_len = np.ones(n)
    sudden_day = np.full(n, NEVER)
    failure_day = np.full(n, -1, dtype=np.int64)
    boost_until = np.full(n, -1.0)

    m = story == BAD_MONTH
    start = np.maximum(base_day, between(0, -10.0, span - 20.0))
    dip_start[m] = start[m]
    dip_ramp[m] = between(1, 4.0, 10.0)[m]
    dip_depth[m] = between(2, 0.3, 0.7)[m]
    recover_at[m] = (start + between(3, 18.0, 40.0))[m]
    recover_len[m] = between(4, 4.0, 10.0)[m]

    m = story == SLOW_FADE
    start = np.maximum(base_day, between(0, -60.0, span - 30.0))
    dip_start[m] = start[m]
    dip_ramp[m] = between(1, 60.0, 150.0)[m]
    dip_depth[m] = between(2, 1.5, 2.5)[m]

    m = story == SERVICE_FAILURE
    fail = np.where(is_new, base_day + between(0, 3.0, 60.0), between(0, 0.0, span - 7.0))
    failure_day[m] = fail[m].astype(np.int64)
    dip_start[m] = fail[m] + 1.0
    dip_ramp[m] = between(1, 4.0, 14.0)[m]
    dip_depth[m] = between(2, 1.5, 2.5)[m]
    recovers = m & (u[5] < 0.3)
    recover_at[recovers] = (fail + between(3, 15.0, 30.0))[recovers]
    recover_len[recovers] = between(4, 5.0, 10.0)[recovers]

    m = story == BUYER_REMORSE
    boost_until[m] = (base_day + between(0, 10.0, 25.0))[m]
    dip_start[m] = (base_day + between(1, 5.0, 20.0))[m]
    dip_ramp[m] = between(2, 3.0, 10.0)[m]
    dip_depth[m] = between(3, 1.5, 2.5)[m]
    return_p = np.where(m, 0.7, return_p)
    purchase_rate = np.where(m, np.maximum(purchase_rate, 0.02), purchase_rate)

    m = story == SUDDEN
    sudden = np.where(is_new, base_day + between(0, 7.0, 90.0), between(6, 7.0, max(span, 8.0)))
    sudden_day[m] = sudden[m]

    return Population(
        size=n,
        segment=segment,
        story=story,
        join_day=join_day,
        login_rate=login_rate,
        purchase_rate=purchase_rate,
        mean_amount=mean_amount,
        ticket_rate=ticket_rate,
        return_p=return_p,
        channel=channel,
        weekend_login=weekend_login,
        weekend_purchase=weekend_purchase,
        gap_limit=gap_limit,
        base_hazard=base_hazard,
        dip_start=dip_start,
        dip_ramp=dip_ramp,
        dip_depth=dip_depth,
        recover_at=recover_at,
        recover_len=recover_len,
        sudden_day=sudden_day,
        failure_day=failure_day,
        boost_until=boost_until,
        cancel_p=np.array(_CANCEL_P)[story],
    )
