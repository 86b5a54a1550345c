"""
The simulated customers: who they are, how they behave, and the story each one lives through.

Everything here is drawn once, up front, as numpy arrays with one entry per customer, so the
day-by-day loop in `simulator.py` stays vectorized. Memory is a few dozen numbers per customer.

A *regime* says what kind of business the customers belong to:

- `subscription` (the default): a product most customers log in to every few days, with an
  occasional purchase; 15% are purchase-only (e-commerce style, never a login). 18% join during
  the period.
- `shop`: a purchase-only shop. No logins. About 70% of customers are occasional buyers (one
  purchase a year on average, so most buy once or twice a year, many only once) and the rest
  repeat buyers (a purchase every few weeks to few months). Returns are common (one order in
  eight), tickets few and about a recent order. 40% are new (their first purchase is their join
  day); every other customer buys at least once within the first year of the simulation (within
  `min(days, 365)` days), so every customer appears in the events.
- `b2b`: few, heavy accounts. An account has many users (median 12), so it logs in several
  times a day on weekdays (and hardly at weekends); it is invoiced monthly or quarterly (a
  large `purchase` on a fixed day of the month, worth its users times a per-user price; a
  fading account pays for fewer users), opens a ticket every two weeks or so, and rarely
  returns anything (a credit note). 8% are new; an account's first invoice is on its join day.

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

Churn stories are rarer in bigger segments (x1.15 starter, x0.9 growth, x0.6 enterprise). The
regimes tell them differently:

- `shop`: more sudden leavers (another shop was cheaper) and buyer's remorse among new
  customers; fades take three to eight months (a customer who buys twice a year cannot fade in
  six weeks). Nobody cancels a shop: churners simply stop buying.
- `b2b`: churn is rarer (a lower hazard, few sudden leavers, no buyer's remorse) and slower:
  fades take four to ten months, and two in five service failures are rescued. Some accounts
  cancel explicitly when they leave (35% to 60%, by story).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
from numpy.typing import NDArray

Regime = Literal["subscription", "shop", "b2b"]
REGIMES: Final[tuple[Regime, ...]] = ("subscription", "shop", "b2b")
"""The kinds of business the simulator knows (see the module docstring)."""

SEGMENTS: Final[tuple[str, ...]] = ("starter", "growth", "enterprise")
"""Index = segment code. Derived from the customer's spend level (expected EUR per 30 days)."""

GROWTH_FROM_EUR: Final = 50.0
ENTERPRISE_FROM_EUR: Final = 150.0
# The same tiers for the other regimes: a shopper spends little a month, an account a lot.
_SHOP_GROWTH_FROM_EUR: Final = 10.0
_SHOP_ENTERPRISE_FROM_EUR: Final = 40.0
_B2B_GROWTH_FROM_EUR: Final = 500.0
_B2B_ENTERPRISE_FROM_EUR: Final = 2500.0

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
SHOP_NEW_SHARE: Final = 0.40
"""A shop keeps finding new customers, and most of them buy once."""
SHOP_REPEAT_SHARE: Final = 0.30
"""Shop customers who buy every few weeks or months; the others buy about once a year."""
B2B_NEW_SHARE: Final = 0.08
"""Accounts are won slowly."""
B2B_QUARTERLY_SHARE: Final = 0.35
"""Accounts invoiced every three months; the others monthly."""

# Probability of each story (loyal takes what is left), for customers present at the start and
# for those who join during the period. Churn stories are scaled per segment below.
_STORY_P_EXISTING: Final = (0.0, 0.08, 0.10, 0.06, 0.01, 0.035)
_STORY_P_NEW: Final = (0.0, 0.06, 0.07, 0.05, 0.18, 0.05)
_CHURN_STORY_SCALE: Final = (1.15, 0.9, 0.6)  # starter, growth, enterprise
_CANCEL_P: Final = (0.15, 0.15, 0.10, 0.50, 0.40, 0.35)  # explicit cancel at churn, per story

CHANNELS: Final[tuple[str, ...]] = ("web", "ios", "android")
_CHANNEL_P: Final = (0.5, 0.3, 0.2)
_B2B_CHANNEL_P: Final = (0.85, 0.1, 0.05)  # people at work use the web app

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
    regime: Regime = "subscription"
    appear_by: F64 | None = None
    """A customer who has not shown up yet shows up on this day (`shop`); None: no such day."""
    bill_months: I64 | None = None
    """Months between invoices, 1 or 3 (`b2b`, whose purchases are invoices); None: no invoices."""
    bill_anchor: I64 | None = None
    """The day of an invoice (the join day, or one in the past): invoices fall on its day of the
    month (at most the 28th) every `bill_months` months from it."""

    def target(self, day: int) -> F64:
        """
        The level each customer's health is pulled toward on `day` (its story's script).

        Health is relative to the customer's own normal: 0 is normal, -1 is well below.
        """
        down = np.clip((day - self.dip_start) / self.dip_ramp, 0.0, 1.0)
        back = np.clip((day - self.recover_at) / self.recover_len, 0.0, 1.0)
        result: F64 = -self.dip_depth * down * (1.0 - back)
        return result


@dataclass(frozen=True, slots=True)
class _Habits:
    """
    Who the customers of a regime are and how they behave, before their stories are drawn.
    """

    is_new: Bools
    join_day: I64
    segment: I8
    login_rate: F64
    purchase_rate: F64
    mean_amount: F64
    ticket_rate: F64
    return_p: F64
    channel: I8
    weekend_login: F64
    weekend_purchase: F64
    gap_limit: I64
    appear_by: F64 | None = None
    bill_months: I64 | None = None
    bill_anchor: I64 | None = None


@dataclass(frozen=True, slots=True)
class _Script:
    """
    How a regime's stories play out: how likely each is, how fast, how it ends.
    """

    p_existing: tuple[float, ...]
    p_new: tuple[float, ...]
    cancel_p: tuple[float, ...]
    hazard: float
    """Daily churn hazard at normal health, before the per-customer and per-segment factors."""
    fade_from: float
    """The earliest start of a slow fade (days; negative: already fading at the start)."""
    fade_margin: float
    """The latest start of a slow fade, in days before the end."""
    fade_ramp: tuple[float, float]
    recover_p: float
    """The share of service failures that recover."""


_SCRIPTS: Final[dict[Regime, _Script]] = {
    "subscription": _Script(
        p_existing=_STORY_P_EXISTING,
        p_new=_STORY_P_NEW,
        cancel_p=_CANCEL_P,
        hazard=6e-5,
        fade_from=-60.0,
        fade_margin=30.0,
        fade_ramp=(60.0, 150.0),
        recover_p=0.3,
    ),
    "shop": _Script(
        p_existing=(0.0, 0.05, 0.10, 0.04, 0.01, 0.06),
        p_new=(0.0, 0.03, 0.06, 0.04, 0.15, 0.08),
        cancel_p=(0.0,) * 6,
        hazard=1e-4,
        fade_from=-90.0,
        fade_margin=30.0,
        fade_ramp=(90.0, 240.0),
        recover_p=0.3,
    ),
    "b2b": _Script(
        p_existing=(0.0, 0.06, 0.06, 0.04, 0.0, 0.01),
        p_new=(0.0, 0.05, 0.05, 0.06, 0.0, 0.01),
        cancel_p=(0.35, 0.35, 0.35, 0.60, 0.50, 0.50),
        hazard=1.5e-5,
        fade_from=-90.0,
        fade_margin=60.0,
        fade_ramp=(120.0, 300.0),
        recover_p=0.4,
    ),
}


def _pick(rng: np.random.Generator, probs: F64) -> I8:
    """
    One category per row of `probs` (rows sum to 1).
    """
    cum = np.cumsum(probs, axis=1)
    u = rng.random(int(probs.shape[0]))
    picked: I8 = np.minimum((u[:, None] > cum).sum(axis=1), probs.shape[1] - 1).astype(np.int8)
    return picked


def _segment(monthly_value: F64, growth_from: float, enterprise_from: float) -> I8:
    segment: I8 = np.where(
        monthly_value >= enterprise_from, 2, np.where(monthly_value >= growth_from, 1, 0)
    ).astype(np.int8)
    return segment


def draw_population(
    rng: np.random.Generator, customers: int, days: int, regime: Regime = "subscription"
) -> Population:
    """
    Draw `customers` customers for a simulation of `days` days.

    Args:
        rng: the behaviour generator; draws happen in a fixed order, so a seed fixes everything.
        customers: how many customers.
        days: the length of the simulation (stories are scheduled inside it).
        regime: the kind of business (see the module docstring).

    Returns:
        The population, as arrays.
    """
    if regime == "shop":
        habits = _shop_habits(rng, customers, days)
    elif regime == "b2b":
        habits = _b2b_habits(rng, customers, days)
    else:
        habits = _subscription_habits(rng, customers, days)
    return _with_stories(rng, habits, days, regime)


def _subscription_habits(rng: np.random.Generator, n: int, days: int) -> _Habits:
    new_share = NEW_SHARE if days >= 2 else 0.0
    is_new = rng.random(n) < new_share
    join_day = np.where(is_new, rng.integers(1, max(days, 2), n), 0).astype(np.int64)

    purchase_only = rng.random(n) < PURCHASE_ONLY_SHARE
    login_rate = rng.lognormal(np.log(0.17), 0.6, n)
    purchase_rate = rng.lognormal(np.log(0.022), 0.6, n) * np.where(purchase_only, 2.8, 1.0)
    mean_amount = rng.lognormal(np.log(45.0), 0.9, n)
    segment = _segment(30.0 * purchase_rate * mean_amount, GROWTH_FROM_EUR, ENTERPRISE_FROM_EUR)

    login_rate *= np.array([0.9, 1.0, 1.4])[segment]
    login_rate = np.where(purchase_only, 0.0, login_rate)
    ticket_rate = rng.lognormal(np.log(0.006), 0.5, n) * np.array([0.9, 1.1, 1.8])[segment]
    return_p = 0.02 + 0.10 * rng.beta(1.0, 3.0, n)
    channel = _pick(rng, np.broadcast_to(np.array(_CHANNEL_P), (n, 3)))
    return _Habits(
        is_new=is_new,
        join_day=join_day,
        segment=segment,
        login_rate=login_rate,
        purchase_rate=purchase_rate,
        mean_amount=mean_amount,
        ticket_rate=ticket_rate,
        return_p=return_p,
        channel=channel,
        weekend_login=np.array([1.05, 0.7, 0.45])[segment],
        weekend_purchase=np.array([1.1, 1.0, 0.8])[segment],
        gap_limit=rng.integers(18, 28, n).astype(np.int64),
    )


def _shop_habits(rng: np.random.Generator, n: int, days: int) -> _Habits:
    new_share = SHOP_NEW_SHARE if days >= 2 else 0.0
    is_new = rng.random(n) < new_share
    join_day = np.where(is_new, rng.integers(1, max(days, 2), n), 0).astype(np.int64)

    # The mean gap between purchases (days): a few weeks to a few months for repeat buyers,
    # about a year for the others (so in a year most buy once or twice, and many only once).
    repeat = rng.random(n) < SHOP_REPEAT_SHARE
    often, yearly = rng.lognormal(np.log(45.0), 0.6, n), rng.lognormal(np.log(365.0), 0.4, n)
    gap = np.where(repeat, often, yearly)
    purchase_rate = 1.0 / gap
    mean_amount = rng.lognormal(np.log(55.0), 0.8, n)
    segment = _segment(
        30.0 * purchase_rate * mean_amount, _SHOP_GROWTH_FROM_EUR, _SHOP_ENTERPRISE_FROM_EUR
    )
    # Per day while an order is recent (see the simulator): about one order in fifteen brings
    # a ticket ("where is my parcel?").
    ticket_rate = rng.lognormal(np.log(0.005), 0.5, n) * np.array([0.9, 1.1, 1.4])[segment]
    return_p = 0.04 + 0.24 * rng.beta(1.0, 3.0, n)
    appear_by = np.where(is_new, NEVER, np.floor(rng.uniform(0.0, float(min(days, 365)), n)))
    return _Habits(
        is_new=is_new,
        join_day=join_day,
        segment=segment,
        login_rate=np.zeros(n),
        purchase_rate=purchase_rate,
        mean_amount=mean_amount,
        ticket_rate=ticket_rate,
        return_p=return_p,
        channel=np.zeros(n, dtype=np.int8),
        weekend_login=np.ones(n),
        weekend_purchase=np.array([1.25, 1.2, 1.1])[segment],
        # A shopper owes the shop nothing: months of silence are normal (see the simulator).
        gap_limit=np.full(n, int(NEVER), dtype=np.int64),
        appear_by=appear_by,
    )


def _b2b_habits(rng: np.random.Generator, n: int, days: int) -> _Habits:
    new_share = B2B_NEW_SHARE if days >= 2 else 0.0
    is_new = rng.random(n) < new_share
    join_day = np.where(is_new, rng.integers(1, max(days, 2), n), 0).astype(np.int64)

    users = np.maximum(np.rint(rng.lognormal(np.log(12.0), 0.9, n)), 1.0)
    # EUR per 30 days: the users times a per-user price (the invoice is that times its months).
    mean_amount = users * rng.lognormal(np.log(45.0), 0.4, n)
    segment = _segment(mean_amount, _B2B_GROWTH_FROM_EUR, _B2B_ENTERPRISE_FROM_EUR)
    login_rate = users * rng.lognormal(np.log(0.45), 0.4, n)
    ticket_rate = (0.01 + 0.004 * users) * rng.lognormal(0.0, 0.5, n)
    return_p = 0.01 + 0.03 * rng.beta(1.0, 3.0, n)
    channel = _pick(rng, np.broadcast_to(np.array(_B2B_CHANNEL_P), (n, 3)))
    gap_limit = rng.integers(18, 28, n).astype(np.int64)
    bill_months = np.where(rng.random(n) < B2B_QUARTERLY_SHARE, 3, 1).astype(np.int64)
    past = np.floor(rng.random(n) * 30.0 * bill_months)
    bill_anchor = np.where(is_new, join_day, -past).astype(np.int64)
    return _Habits(
        is_new=is_new,
        join_day=join_day,
        segment=segment,
        login_rate=login_rate,
        # Every purchase is an invoice (see the simulator).
        purchase_rate=np.zeros(n),
        mean_amount=mean_amount,
        ticket_rate=ticket_rate,
        return_p=return_p,
        channel=channel,
        weekend_login=np.full(n, 0.12),
        weekend_purchase=np.ones(n),
        gap_limit=gap_limit,
        bill_months=bill_months,
        bill_anchor=bill_anchor,
    )


def _with_stories(
    rng: np.random.Generator, habits: _Habits, days: int, regime: Regime
) -> Population:
    """
    Draw each customer's story and schedule it inside the `days` of the simulation.
    """
    script = _SCRIPTS[regime]
    n = habits.is_new.size
    span = float(days)
    is_new, join_day, segment = habits.is_new, habits.join_day, habits.segment

    base_p = np.where(is_new[:, None], np.array(script.p_new), np.array(script.p_existing))
    scale = np.array(_CHURN_STORY_SCALE)[segment]
    probs = base_p * np.where(np.arange(6) >= SLOW_FADE, scale[:, None], 1.0)
    probs[:, LOYAL] = 1.0 - probs[:, 1:].sum(axis=1)
    story = _pick(rng, probs)

    base_hazard = script.hazard * rng.lognormal(0.0, 0.5, n) * np.array([1.3, 1.0, 0.6])[segment]
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
    start = np.maximum(base_day, between(0, script.fade_from, span - script.fade_margin))
    dip_start[m] = start[m]
    dip_ramp[m] = between(1, *script.fade_ramp)[m]
    dip_depth[m] = between(2, 1.5, 2.5)[m]

    m = story == SERVICE_FAILURE
    fail = np.where(is_new, base_day + between(0, 3.0, 60.0), between(0, 0.0, span - 7.0))
    failure_day[m] = fail[m].astype(np.int64)
    dip_start[m] = fail[m] + 1.0
    dip_ramp[m] = between(1, 4.0, 14.0)[m]
    dip_depth[m] = between(2, 1.5, 2.5)[m]
    recovers = m & (u[5] < script.recover_p)
    recover_at[recovers] = (fail + between(3, 15.0, 30.0))[recovers]
    recover_len[recovers] = between(4, 5.0, 10.0)[recovers]

    m = story == BUYER_REMORSE
    boost_until[m] = (base_day + between(0, 10.0, 25.0))[m]
    dip_start[m] = (base_day + between(1, 5.0, 20.0))[m]
    dip_ramp[m] = between(2, 3.0, 10.0)[m]
    dip_depth[m] = between(3, 1.5, 2.5)[m]
    return_p = np.where(m, 0.7, habits.return_p)
    purchase_rate = np.where(m, np.maximum(habits.purchase_rate, 0.02), habits.purchase_rate)

    m = story == SUDDEN
    sudden = np.where(is_new, base_day + between(0, 7.0, 90.0), between(6, 7.0, max(span, 8.0)))
    sudden_day[m] = sudden[m]

    return Population(
        size=n,
        segment=segment,
        story=story,
        join_day=join_day,
        login_rate=habits.login_rate,
        purchase_rate=purchase_rate,
        mean_amount=habits.mean_amount,
        ticket_rate=habits.ticket_rate,
        return_p=return_p,
        channel=habits.channel,
        weekend_login=habits.weekend_login,
        weekend_purchase=habits.weekend_purchase,
        gap_limit=habits.gap_limit,
        base_hazard=base_hazard,
        dip_start=dip_start,
        dip_ramp=dip_ramp,
        dip_depth=dip_depth,
        recover_at=recover_at,
        recover_len=recover_len,
        sudden_day=sudden_day,
        failure_day=failure_day,
        boost_until=boost_until,
        cancel_p=np.array(script.cancel_p)[story],
        regime=regime,
        appear_by=habits.appear_by,
        bill_months=habits.bill_months,
        bill_anchor=habits.bill_anchor,
    )
