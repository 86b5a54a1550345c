"""
One customer's feature state: updated one event at a time, read as a vector of named floats.

Everything here runs in event time. Times inside the state are floats, days since the Unix
epoch (`to_days`), in fields named `*_day`; `None` means "never happened".

Decayed sums. Each decayed sum holds `sum(w * exp(-(ref_day - ts) / tau))` over the events it
counts, referenced to `ref_day`, the largest `ts` of any non-cancel event seen. An event later
than `ref_day` first moves the reference forward (every sum is multiplied by
`exp(-(new - old) / tau)`); an event earlier than it adds its weight already decayed to
`ref_day`. So events applied in any order give the same state, up to float rounding. Divided by
`tau` (in days), a decayed count is a rate in events per day: a steady `r` events a day makes
the sum tend to `r * tau`.

Tickets. The state keeps one small record per ticket (`TicketState`): when it opened (its
earliest event by `ts`) and its latest status by `ts`, so a status that arrives late does not
overwrite a newer one. Ties on `ts` go to the later status in the lifecycle
(open < pending < solved < closed), then to the higher severity. A ticket that has been solved
or closed for longer than `FeatureConfig.ticket_retention` (60 days) before `ref_day` is
dropped, and at most `FeatureConfig.max_tickets` records are kept (the longest-closed go first,
then the open ones whose status is oldest), so the state stays bounded. The price: an event of a
dropped ticket that arrives later still (more than 60 days late in event time) starts a new
record, and counts again as an opening in `ticket_load`.

Cancellations only move `days_since_event`: they are labels, not behaviour.
Amounts are summed as they come; currencies are not converted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Final, get_args

import orjson

from churnwatch.core.errors import ConfigError
from churnwatch.core.events import (
    EPOCH,
    CancelEvent,
    Event,
    LoginEvent,
    PurchaseEvent,
    ReturnEvent,
    Severity,
    TicketEvent,
    TicketStatus,
)
from churnwatch.core.slots import fast_init

_DAY: Final = timedelta(days=1)
_SEVERITIES: Final[tuple[Severity, ...]] = get_args(Severity)
_STATUSES: Final[tuple[TicketStatus, ...]] = get_args(TicketStatus)
_SEVERITY_RANK: Final[dict[str, int]] = {name: rank for rank, name in enumerate(_SEVERITIES)}
_STATUS_RANK: Final[dict[str, int]] = {name: rank for rank, name in enumerate(_STATUSES)}
_OPEN_STATUSES: Final = frozenset({"open", "pending"})
_URGENT_SEVERITIES: Final = frozenset({"high", "urgent"})
_TREND_MAX: Final = 3.0
_GAP_RATIO_MAX: Final = 10.0
_TINY_RATE: Final = 1e-12
"""A long rate below this (events per day) counts as zero: the trend is then neutral (1.0)."""

PREFIX: Final = "f."
FORMAT_VERSION: Final = "1"


def _default_ticket_weights() -> Mapping[str, float]:
    return MappingProxyType({"low": 0.5, "normal": 1.0, "high": 2.0, "urgent": 4.0})


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    """
    Time constants and weights of the features.
    """

    short: timedelta = timedelta(days=7)
    """Time constant of the short decayed rates (logins, ticket load)."""
    long: timedelta = timedelta(days=30)
    """Time constant of the long decayed rates (logins, low CSAT)."""
    purchase_short: timedelta = timedelta(days=30)
    """Time constant of the short purchase rate."""
    purchase_long: timedelta = timedelta(days=90)
    """Time constant of the long purchase rate, spend and returns."""
    never_days: float = 365.0
    """Value of `days_since_*` when the thing never happened, and their cap."""
    ticket_weights: Mapping[str, float] = field(default_factory=_default_ticket_weights)
    """Weight of one ticket opening in `ticket_load`, by severity."""
    ticket_retention: timedelta = timedelta(days=60)
    """A ticket solved or closed for longer than this (event time) is forgotten."""
    max_tickets: int = 64
    """At most this many tickets are remembered per customer."""
    # The time constants in days, computed once: dividing timedeltas on every event costs
    # more than the exponentials.
    short_days: float = field(init=False, repr=False, compare=False)
    long_days: float = field(init=False, repr=False, compare=False)
    purchase_short_days: float = field(init=False, repr=False, compare=False)
    purchase_long_days: float = field(init=False, repr=False, compare=False)
    retention_days: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("short", "long", "purchase_short", "purchase_long", "ticket_retention"):
            value = getattr(self, name)
            if not isinstance(value, timedelta) or value <= timedelta(0):
                msg = f"feature config: {name} must be a positive timedelta, got {value!r}"
                raise ConfigError(msg)
        if not (math.isfinite(self.never_days) and self.never_days > 0):
            msg = f"feature config: never_days must be a positive number, got {self.never_days!r}"
            raise ConfigError(msg)
        if self.max_tickets < 1:
            msg = f"feature config: max_tickets must be at least 1, got {self.max_tickets!r}"
            raise ConfigError(msg)
        missing = [name for name in _SEVERITIES if name not in self.ticket_weights]
        if missing:
            msg = f"feature config: ticket_weights needs every severity, missing {missing}"
            raise ConfigError(msg)
        for name, weight in self.ticket_weights.items():
            if not (math.isfinite(weight) and weight >= 0):
                msg = f"feature config: ticket_weights[{name!r}] must be >= 0, got {weight!r}"
                raise ConfigError(msg)
        # Freeze a copy, so that a caller's dict changed later cannot change the config.
        object.__setattr__(self, "ticket_weights", MappingProxyType(dict(self.ticket_weights)))
        object.__setattr__(self, "short_days", self.short / _DAY)
        object.__setattr__(self, "long_days", self.long / _DAY)
        object.__setattr__(self, "purchase_short_days", self.purchase_short / _DAY)
        object.__setattr__(self, "purchase_long_days", self.purchase_long / _DAY)
        object.__setattr__(self, "retention_days", self.ticket_retention / _DAY)


DEFAULT: Final = FeatureConfig()


@dataclass(frozen=True, slots=True)
class TicketState:
    """
    What the features remember of one support ticket.
    """

    ticket_id: str
    opened_day: float
    """Time of the ticket's earliest event."""
    opened_severity: Severity
    """Severity carried by that earliest event; weights the opening in `ticket_load`."""
    status_day: float
    """Time of the event that set `status`: the latest by `ts`."""
    status: TicketStatus
    severity: Severity
    """Severity carried by the latest event."""

    @property
    def is_open(self) -> bool:
        return self.status in _OPEN_STATUSES


@fast_init
@dataclass(frozen=True, slots=True)
class Features:
    """
    One customer's feature state: plain data, small, stored as one Redis hash (`to_dict`).

    The decayed sums are as of `ref_day`; `vector` decays them to the time it is asked for.
    """

    ref_day: float | None = None
    """Largest `ts` of any event except cancellations; the reference of the decayed sums."""
    last_event_day: float | None = None
    """Largest `ts` of any event, cancellations included."""
    first_day: float | None = None
    """Smallest `ts` of any event except cancellations; the start of the tenure."""
    last_login_day: float | None = None
    last_purchase_day: float | None = None
    first_purchase_day: float | None = None
    last_ticket_day: float | None = None
    last_return_day: float | None = None
    login_short: float = 0.0
    login_long: float = 0.0
    purchase_short: float = 0.0
    purchase_long: float = 0.0
    spend_long: float = 0.0
    ticket_load: float = 0.0
    """Severity-weighted decayed count of ticket openings, time constant `short`."""
    return_long: float = 0.0
    csat_low: float = 0.0
    """Decayed count of CSAT ratings <= 2, time constant `long`."""
    event_count: int = 0
    purchase_count: int = 0
    return_count: int = 0
    purchase_amount: float = 0.0
    return_amount: float = 0.0
    csat_sum: int = 0
    csat_count: int = 0
    tickets: tuple[TicketState, ...] = ()
    """Known tickets, sorted by `ticket_id`."""
    prev_day: float | None = None
    """The second-largest distinct `ts` of any event except cancellations: with `ref_day`, the
    latest gap between two activities (`last_gap_days`), whatever order the events came in."""


_EMPTY: Final = Features()

FEATURE_NAMES: Final[tuple[str, ...]] = (
    "days_since_event",
    "days_since_login",
    "days_since_purchase",
    "days_since_ticket",
    "days_since_return",
    "login_rate_short",
    "login_rate_long",
    "login_trend",
    "purchase_rate_short",
    "purchase_rate_long",
    "purchase_trend",
    "spend_rate_long",
    "ticket_load",
    "return_rate",
    "return_ratio",
    "open_tickets",
    "open_urgent_tickets",
    "oldest_open_ticket_days",
    "csat_avg",
    "csat_low",
    "has_csat",
    "tenure_days",
    "event_count",
    "purchase_count",
    "ltv",
    "log_ltv",
    "avg_purchase_gap_days",
    "purchase_gap_ratio",
    "repeat_buyer",
    "last_gap_days",
    "gap_ratio",
)
"""The keys of `vector`, in the order it returns them."""


def empty_features() -> Features:
    """
    The state of a customer with no events.
    """
    return _EMPTY


def update_one(features: Features, event: Event, *, config: FeatureConfig = DEFAULT) -> Features:
    """
    Fold one event into a customer's features; the input is not changed.

    Args:
        features: the customer's state so far.
        event: the next event, in any order relative to those already applied.
        config: time constants and weights; use the same one for every event of a customer.

    Returns:
        The new state. Redelivered events are not detected here: callers skip duplicates.
    """
    ts = (event.ts - EPOCH) / _DAY  # to_days(event.ts)
    last_event = features.last_event_day
    if last_event is None or ts > last_event:
        last_event = ts
    if isinstance(event, CancelEvent):
        if last_event == features.last_event_day:
            return features
        return replace(features, last_event_day=last_event)

    f = features
    short = config.short_days
    long = config.long_days
    p_short = config.purchase_short_days
    p_long = config.purchase_long_days
    login_short, login_long = f.login_short, f.login_long
    purchase_short, purchase_long, spend_long = f.purchase_short, f.purchase_long, f.spend_long
    ticket_load, return_long, csat_low = f.ticket_load, f.return_long, f.csat_low

    ref = f.ref_day
    prev = f.prev_day
    if ref is None:
        ref = ts
    elif ts > ref:
        prev = ref
        # Move the reference forward: everything seen so far ages by (ts - ref).
        step = ts - ref
        e_short = math.exp(-step / short)
        e_long = math.exp(-step / long)
        e_p_long = math.exp(-step / p_long)
        login_short *= e_short
        ticket_load *= e_short
        login_long *= e_long
        csat_low *= e_long
        purchase_short *= math.exp(-step / p_short)
        purchase_long *= e_p_long
        spend_long *= e_p_long
        return_long *= e_p_long
        ref = ts
    elif ts < ref and (prev is None or ts > prev):
        prev = ts  # a late event between the two latest activities
    age = ref - ts  # >= 0: how far this event lies behind the reference

    first = f.first_day
    if first is None or ts < first:
        first = ts
    last_login, last_ticket, last_return = f.last_login_day, f.last_ticket_day, f.last_return_day
    last_purchase, first_purchase = f.last_purchase_day, f.first_purchase_day
    purchase_count, purchase_amount = f.purchase_count, f.purchase_amount
    return_count, return_amount = f.return_count, f.return_amount
    csat_sum, csat_count = f.csat_sum, f.csat_count
    tickets = f.tickets

    if isinstance(event, LoginEvent):
        if last_login is None or ts > last_login:
            last_login = ts
        if age == 0.0:  # _decay inlined for the commonest event: 1.0 at age 0
            login_short += 1.0
            login_long += 1.0
        else:
            login_short += math.exp(-age / short)
            login_long += math.exp(-age / long)
    elif isinstance(event, PurchaseEvent):
        if last_purchase is None or ts > last_purchase:
            last_purchase = ts
        if first_purchase is None or ts < first_purchase:
            first_purchase = ts
        weight = _decay(age, p_long)
        purchase_short += _decay(age, p_short)
        purchase_long += weight
        spend_long += event.amount * weight
        purchase_count += 1
        purchase_amount += event.amount
    elif isinstance(event, ReturnEvent):
        if last_return is None or ts > last_return:
            last_return = ts
        return_long += _decay(age, p_long)
        return_count += 1
        return_amount += event.amount
    else:  # a TicketEvent: the Event union leaves nothing else
        if last_ticket is None or ts > last_ticket:
            last_ticket = ts
        tickets, load_change = _update_tickets(tickets, event, ts, ref, short, config)
        tickets = _prune(tickets, ref, config)
        # Taking an opening back out can leave a rounding residue just below zero.
        ticket_load = max(ticket_load + load_change, 0.0)
        csat = event.csat
        if csat is not None:
            csat_sum += csat
            csat_count += 1
            if csat <= 2:
                csat_low += _decay(age, long)

    if tickets and ref != f.ref_day and not isinstance(event, TicketEvent):
        tickets = _prune(tickets, ref, config)

    # One constructor call, positional in the fields' order: dataclasses.replace, or keywords,
    # would cost more than the update itself.
    return Features(
        ref,  # ref_day
        last_event,  # last_event_day
        first,  # first_day
        last_login,  # last_login_day
        last_purchase,  # last_purchase_day
        first_purchase,  # first_purchase_day
        last_ticket,  # last_ticket_day
        last_return,  # last_return_day
        login_short,
        login_long,
        purchase_short,
        purchase_long,
        spend_long,
        ticket_load,
        return_long,
        csat_low,
        f.event_count + 1,  # event_count
        purchase_count,
        return_count,
        purchase_amount,
        return_amount,
        csat_sum,
        csat_count,
        tickets,
        prev,  # prev_day
    )


def _decay(age: float, tau: float) -> float:
    return 1.0 if age == 0.0 else math.exp(-age / tau)


def _status_key(ticket: TicketState) -> tuple[float, int, int]:
    return (ticket.status_day, _STATUS_RANK[ticket.status], _SEVERITY_RANK[ticket.severity])


def _update_tickets(
    tickets: tuple[TicketState, ...],
    event: TicketEvent,
    ts: float,
    ref: float,
    short: float,
    config: FeatureConfig,
) -> tuple[tuple[TicketState, ...], float]:
    """
    The ticket records after `event`, and the change it makes to the (undecayed) ticket load.
    """
    weights = config.ticket_weights
    index = next((i for i, t in enumerate(tickets) if t.ticket_id == event.ticket_id), -1)
    if index < 0:
        ticket = TicketState(event.ticket_id, ts, event.severity, ts, event.status, event.severity)
        load = weights[event.severity] * _decay(ref - ts, short)
        added = sorted((*tickets, ticket), key=_ticket_id)
        return tuple(added), load

    known = tickets[index]
    load = 0.0
    opened_day = known.opened_day
    opened_severity = known.opened_severity
    sev_rank = _SEVERITY_RANK[event.severity]
    if (ts, -sev_rank) < (opened_day, -_SEVERITY_RANK[opened_severity]):
        # An earlier event of this ticket arrived late: the opening moves back to it.
        load -= weights[opened_severity] * _decay(ref - opened_day, short)
        load += weights[event.severity] * _decay(ref - ts, short)
        opened_day = ts
        opened_severity = event.severity
    status_day, status, severity = known.status_day, known.status, known.severity
    if (ts, _STATUS_RANK[event.status], sev_rank) > _status_key(known):
        status_day, status, severity = ts, event.status, event.severity
    ticket = TicketState(known.ticket_id, opened_day, opened_severity, status_day, status, severity)
    if ticket == known:
        return tickets, load
    return (*tickets[:index], ticket, *tickets[index + 1 :]), load


def _ticket_id(ticket: TicketState) -> str:
    return ticket.ticket_id


def _prune(
    tickets: tuple[TicketState, ...], ref: float, config: FeatureConfig
) -> tuple[TicketState, ...]:
    """
    Forget tickets closed longer than the retention before `ref`, then keep at most
    `max_tickets` (dropping the longest-closed first, then the open ones with the oldest status).
    """
    horizon = ref - config.retention_days
    kept = tuple(t for t in tickets if t.is_open or t.status_day >= horizon)
    extra = len(kept) - config.max_tickets
    if extra > 0:
        by_priority = sorted(kept, key=lambda t: (t.is_open, t.status_day, t.ticket_id))
        dropped = {t.ticket_id for t in by_priority[:extra]}
        kept = tuple(t for t in kept if t.ticket_id not in dropped)
    return kept


def vector(
    features: Features, *, at: datetime, config: FeatureConfig = DEFAULT
) -> dict[str, float]:
    """
    The named features of a customer as of `at`, every value a finite float.

    Args:
        features: the customer's state.
        at: the time to read the features at. The features never read the future: an `at`
            earlier than the latest event applied is taken as that event's time.
        config: the same config the state was built with.

    Returns:
        A dict with exactly the keys of `FEATURE_NAMES`, in that order.
    """
    now = (at - EPOCH) / _DAY  # to_days(at)
    last_event = features.last_event_day
    if last_event is not None and now < last_event:
        now = last_event
    never = config.never_days
    short = config.short_days
    long = config.long_days
    p_short = config.purchase_short_days
    p_long = config.purchase_long_days

    ref = features.ref_day
    if ref is None:
        e_short = e_long = e_p_short = e_p_long = 1.0  # every sum is zero anyway
    elif now == ref:
        e_short = e_long = e_p_short = e_p_long = 1.0  # math.exp(-0.0 / tau) is exactly 1.0
    else:
        elapsed = now - ref
        e_short = math.exp(-elapsed / short)
        e_long = math.exp(-elapsed / long)
        e_p_short = math.exp(-elapsed / p_short)
        e_p_long = math.exp(-elapsed / p_long)

    login_rate_short = features.login_short * e_short / short
    login_rate_long = features.login_long * e_long / long
    purchase_rate_short = features.purchase_short * e_p_short / p_short
    purchase_rate_long = features.purchase_long * e_p_long / p_long

    open_tickets = 0
    open_urgent = 0
    oldest_open = now
    for ticket in features.tickets:
        if ticket.status in _OPEN_STATUSES:
            open_tickets += 1
            if ticket.severity in _URGENT_SEVERITIES:
                open_urgent += 1
            if ticket.opened_day < oldest_open:
                oldest_open = ticket.opened_day

    # Each recency is capped at `never`, so that "long ago" never reads as more recent than
    # "never".
    days_since: list[float] = []
    for then in (
        last_event,
        features.last_login_day,
        features.last_purchase_day,
        features.last_ticket_day,
        features.last_return_day,
    ):
        if then is None:
            days_since.append(never)
        else:
            since = now - then
            days_since.append(never if never < since else since)
    purchase_count = features.purchase_count
    days_since_purchase = days_since[2]
    avg_gap = 0.0
    gap_ratio = 0.0
    first_purchase = features.first_purchase_day
    last_purchase = features.last_purchase_day
    if purchase_count >= 2 and first_purchase is not None and last_purchase is not None:
        avg_gap = (last_purchase - first_purchase) / (purchase_count - 1)
        if avg_gap > 0.0:
            gap_ratio = min(days_since_purchase / avg_gap, _GAP_RATIO_MAX)
        elif days_since_purchase > 0.0:
            gap_ratio = _GAP_RATIO_MAX  # all purchases at one instant, and none since
    ltv = max(features.purchase_amount - features.return_amount, 0.0)
    csat_count = features.csat_count
    first = features.first_day
    if login_rate_long < _TINY_RATE:
        login_trend = 1.0
    else:
        login_trend = login_rate_short / login_rate_long
        if login_trend > _TREND_MAX:
            login_trend = _TREND_MAX
    # The customer's rhythm over all its activity: the mean gap between activities so far,
    # against the silence now (purchases alone have their own ratio above).
    last_gap = 0.0
    prev = features.prev_day
    if prev is not None and ref is not None:
        last_gap = ref - prev
    event_gap_ratio = 0.0
    if first is not None and ref is not None and features.event_count >= 2 and ref > first:
        mean_gap = (ref - first) / (features.event_count - 1)
        event_gap_ratio = min((now - ref) / mean_gap, _GAP_RATIO_MAX)
    if purchase_rate_long < _TINY_RATE or first is None or now - first < p_long:
        # Neutral until the history covers the long window: before, the long rate is not yet
        # estimable and every newcomer's first purchases read as a burst, so the model learns
        # "rising purchases" as "new, likely to leave" and a one-time buyer's score then falls
        # as its silence grows (measured on CDNOW, benchmarks/results/real_data.md).
        purchase_trend = 1.0
    else:
        purchase_trend = purchase_rate_short / purchase_rate_long
        if purchase_trend > _TREND_MAX:
            purchase_trend = _TREND_MAX

    return {
        "days_since_event": days_since[0],
        "days_since_login": days_since[1],
        "days_since_purchase": days_since_purchase,
        "days_since_ticket": days_since[3],
        "days_since_return": days_since[4],
        "login_rate_short": login_rate_short,
        "login_rate_long": login_rate_long,
        "login_trend": login_trend,
        "purchase_rate_short": purchase_rate_short,
        "purchase_rate_long": purchase_rate_long,
        "purchase_trend": purchase_trend,
        "spend_rate_long": features.spend_long * e_p_long / p_long,
        "ticket_load": features.ticket_load * e_short / short,
        "return_rate": features.return_long * e_p_long / p_long,
        "return_ratio": features.return_count / max(purchase_count, 1),
        "open_tickets": float(open_tickets),
        "open_urgent_tickets": float(open_urgent),
        "oldest_open_ticket_days": now - oldest_open,
        "csat_avg": features.csat_sum / csat_count if csat_count else 0.0,
        "csat_low": features.csat_low * e_long,
        "has_csat": 1.0 if csat_count else 0.0,
        "tenure_days": 0.0 if first is None else now - first,
        "event_count": float(features.event_count),
        "purchase_count": float(purchase_count),
        "ltv": ltv,
        "log_ltv": math.log1p(ltv),
        "avg_purchase_gap_days": avg_gap,
        "purchase_gap_ratio": gap_ratio,
        "repeat_buyer": 1.0 if purchase_count >= 2 else 0.0,
        "last_gap_days": last_gap,
        "gap_ratio": event_gap_ratio,
    }


# Serialisation: one flat hash of strings. Floats are written with repr(), which Python reads
# back to the same bits; None is the empty string; every key is always written, so an HSET of
# the whole dict leaves no stale field behind.

_OPTIONAL_FLOATS: Final = tuple(f.name for f in fields(Features) if f.type == "float | None")
_FLOATS: Final = tuple(f.name for f in fields(Features) if f.type == "float")
_INTS: Final = tuple(f.name for f in fields(Features) if f.type == "int")
_ADDED: Final = frozenset({"prev_day"})
"""Fields added after format 1 was first written; their absence reads as None."""
_VERSION_KEY: Final = PREFIX + "v"
_TICKETS_KEY: Final = PREFIX + "tickets"


def to_dict(features: Features) -> dict[str, str]:
    """
    The state as a flat dict of strings (one Redis hash); every key starts with `f.`.
    """
    data = {_VERSION_KEY: FORMAT_VERSION}
    for name in _OPTIONAL_FLOATS:
        value = getattr(features, name)
        data[PREFIX + name] = "" if value is None else repr(value)
    for name in _FLOATS:
        data[PREFIX + name] = repr(getattr(features, name))
    for name in _INTS:
        data[PREFIX + name] = str(getattr(features, name))
    rows = [
        [t.ticket_id, t.opened_day, t.opened_severity, t.status_day, t.status, t.severity]
        for t in features.tickets
    ]
    data[_TICKETS_KEY] = orjson.dumps(rows).decode()
    return data


def from_dict(data: Mapping[str, str]) -> Features:
    """
    Rebuild the state written by `to_dict`; keys without the `f.` prefix are ignored.

    Args:
        data: a Redis hash as strings. With no `f.` key at all, the customer is new.

    Returns:
        The state; `from_dict(to_dict(f)) == f`.

    Raises:
        ValueError: a key is missing or holds a value that is not what `to_dict` writes;
            the message names the key.
    """
    if not any(key.startswith(PREFIX) for key in data):
        return _EMPTY
    version = _get(data, _VERSION_KEY)
    if version != FORMAT_VERSION:
        msg = f"{_VERSION_KEY}: expected feature format {FORMAT_VERSION!r}, got {version!r}"
        raise ValueError(msg)
    values: dict[str, object] = {}
    for name in _OPTIONAL_FLOATS:
        # A state written before a field existed lacks it: "never happened" (`_ADDED`).
        text = data.get(PREFIX + name, "") if name in _ADDED else _get(data, PREFIX + name)
        values[name] = None if text == "" else _parse_float(PREFIX + name, text)
    for name in _FLOATS:
        values[name] = _parse_float(PREFIX + name, _get(data, PREFIX + name))
    for name in _INTS:
        values[name] = _parse_count(PREFIX + name, _get(data, PREFIX + name))
    values["tickets"] = _parse_tickets(_get(data, _TICKETS_KEY))
    return Features(**values)  # type: ignore[arg-type]


def _get(data: Mapping[str, str], key: str) -> str:
    try:
        return data[key]
    except KeyError:
        msg = f"{key}: missing from the stored features"
        raise ValueError(msg) from None


def _parse_float(key: str, text: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value):
        msg = f"{key}: expected a finite float, got {text!r}"
        raise ValueError(msg)
    return value


def _parse_count(key: str, text: str) -> int:
    if not (isinstance(text, str) and text.isascii() and text.isdigit()):
        msg = f"{key}: expected a non-negative integer, got {text!r}"
        raise ValueError(msg)
    return int(text)


def _parse_tickets(text: str) -> tuple[TicketState, ...]:
    try:
        rows = orjson.loads(text)
    except (TypeError, orjson.JSONDecodeError):
        rows = None
    if not isinstance(rows, list):
        msg = f"{_TICKETS_KEY}: expected a JSON list of tickets, got {text!r}"
        raise ValueError(msg)
    tickets = []
    for row in rows:
        if not (
            isinstance(row, list)
            and len(row) == 6
            and isinstance(row[0], str)
            and _is_finite_number(row[1])
            and row[2] in _SEVERITY_RANK
            and _is_finite_number(row[3])
            and row[4] in _STATUS_RANK
            and row[5] in _SEVERITY_RANK
        ):
            msg = (
                f"{_TICKETS_KEY}: expected [ticket_id, opened_day, opened_severity, "
                f"status_day, status, severity], got {row!r}"
            )
            raise ValueError(msg)
        tickets.append(TicketState(row[0], float(row[1]), row[2], float(row[3]), row[4], row[5]))
    return tuple(tickets)


def _is_finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
