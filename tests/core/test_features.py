"""
Tests of the per-customer feature state: hand-computed tables, order independence, a batch
oracle, and the Redis form.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from churnwatch.core.errors import ConfigError
from churnwatch.core.events import (
    CancelEvent,
    Event,
    LoginEvent,
    PurchaseEvent,
    ReturnEvent,
    TicketEvent,
    to_days,
)
from churnwatch.core.features import (
    DEFAULT,
    FEATURE_NAMES,
    FeatureConfig,
    Features,
    empty_features,
    from_dict,
    to_dict,
    update_one,
    vector,
)
from strategies import START_AT, event_streams

T0 = datetime(2024, 3, 1, tzinfo=UTC)
# Generated histories stay shorter than the 60-day ticket retention, so that no ticket is
# forgotten and the batch oracle below needs no pruning of its own. Short ones crowd events
# onto the same instants, where ties must be broken the same way whatever the order.
SPAN = timedelta(days=50)
ALL_KINDS = ("login", "purchase", "return", "ticket", "cancel")
streams_with_cancels = event_streams(start_at=START_AT, span=SPAN, kinds=ALL_KINDS) | event_streams(
    start_at=START_AT, span=timedelta(days=2), kinds=ALL_KINDS
)

_counter = iter(range(1_000_000))


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


def _common(at_day: float) -> dict[str, Any]:
    return {"event_id": f"E-{next(_counter)}", "customer_id": "C-1", "ts": day(at_day)}


def login(at_day: float) -> LoginEvent:
    return LoginEvent(type="login", **_common(at_day))


def purchase(at_day: float, amount: float = 10.0, order_id: str = "O-1") -> PurchaseEvent:
    return PurchaseEvent(
        type="purchase", amount=amount, currency="EUR", order_id=order_id, **_common(at_day)
    )


def give_back(at_day: float, amount: float = 10.0, order_id: str = "O-1") -> ReturnEvent:
    return ReturnEvent(
        type="return", amount=amount, order_id=order_id, reason="damaged", **_common(at_day)
    )


def ticket(
    at_day: float,
    ticket_id: str,
    status: str = "open",
    severity: str = "normal",
    csat: int | None = None,
) -> TicketEvent:
    return TicketEvent(
        type="ticket",
        ticket_id=ticket_id,
        status=status,
        severity=severity,
        csat=csat,
        **_common(at_day),
    )


def cancel(at_day: float) -> CancelEvent:
    return CancelEvent(type="cancel", **_common(at_day))


def build(events: Iterable[Event], config: FeatureConfig = DEFAULT) -> Features:
    features = empty_features()
    for event in events:
        features = update_one(features, event, config=config)
    return features


def mismatches(expected: dict[str, float], actual: dict[str, float]) -> dict[str, Any]:
    """
    The features that differ beyond rounding, as {name: (expected, actual)}.
    """
    if list(expected) != list(actual):
        return {"<names>": (list(expected), list(actual))}
    return {
        name: (expected[name], actual[name])
        for name in expected
        if not math.isclose(expected[name], actual[name], rel_tol=1e-9, abs_tol=1e-9)
    }


# -- the batch oracle: every feature recomputed from the raw events ------------------------

SEVERITY_ORDER = ("low", "normal", "high", "urgent")
STATUS_ORDER = ("open", "pending", "solved", "closed")


def batch_vector(
    events: list[Event], at: datetime, config: FeatureConfig = DEFAULT
) -> dict[str, float]:
    """
    The feature vector computed directly from a list of events, with no incremental state.
    """
    now = max([to_days(at), *(to_days(e.ts) for e in events)])
    never = config.never_days
    short, long = config.short / timedelta(days=1), config.long / timedelta(days=1)
    p_short = config.purchase_short / timedelta(days=1)
    p_long = config.purchase_long / timedelta(days=1)

    def times(kind: str) -> list[float]:
        return [to_days(e.ts) for e in events if e.type == kind]

    def since(ts: list[float]) -> float:
        return min(now - max(ts), never) if ts else never

    def rate(ts: list[float], tau: float, weights: list[float] | None = None) -> float:
        weights = weights or [1.0] * len(ts)
        return sum(w * math.exp(-(now - t) / tau) for t, w in zip(ts, weights, strict=True)) / tau

    def trend(short_rate: float, long_rate: float) -> float:
        return 1.0 if long_rate < 1e-12 else min(short_rate / long_rate, 3.0)

    logins, purchases = times("login"), times("purchase")
    returns, ticket_times = times("return"), times("ticket")
    behaviour = [to_days(e.ts) for e in events if e.type != "cancel"]
    buys = [e for e in events if isinstance(e, PurchaseEvent)]
    gives = [e for e in events if isinstance(e, ReturnEvent)]
    tickets = [e for e in events if isinstance(e, TicketEvent)]

    load = 0.0
    open_ages: list[float] = []
    open_urgent = 0
    for ticket_id in {e.ticket_id for e in tickets}:
        history = [e for e in tickets if e.ticket_id == ticket_id]
        opening = min(history, key=lambda e: (e.ts, -SEVERITY_ORDER.index(e.severity)))
        latest = max(
            history,
            key=lambda e: (
                e.ts,
                STATUS_ORDER.index(e.status),
                SEVERITY_ORDER.index(e.severity),
            ),
        )
        load += config.ticket_weights[opening.severity] * math.exp(
            -(now - to_days(opening.ts)) / short
        )
        if latest.status in ("open", "pending"):
            open_ages.append(now - to_days(opening.ts))
            open_urgent += latest.severity in ("high", "urgent")
    ratings = [e.csat for e in tickets if e.csat is not None]
    low_ratings = [to_days(e.ts) for e in tickets if e.csat is not None and e.csat <= 2]

    ltv = max(sum(e.amount for e in buys) - sum(e.amount for e in gives), 0.0)
    avg_gap = (max(purchases) - min(purchases)) / (len(purchases) - 1) if len(buys) >= 2 else 0.0
    gap_ratio = 0.0
    if len(buys) >= 2:
        if avg_gap > 0:
            gap_ratio = min(since(purchases) / avg_gap, 10.0)
        elif since(purchases) > 0:
            gap_ratio = 10.0
    all_times = [to_days(e.ts) for e in events]
    distinct = sorted(set(behaviour))
    last_gap = distinct[-1] - distinct[-2] if len(distinct) >= 2 else 0.0
    event_gap_ratio = 0.0
    if len(behaviour) >= 2 and distinct[-1] > distinct[0]:
        mean_gap = (distinct[-1] - distinct[0]) / (len(behaviour) - 1)
        event_gap_ratio = min((now - distinct[-1]) / mean_gap, 10.0)
    login_short, login_long = rate(logins, short), rate(logins, long)
    buy_short, buy_long = rate(purchases, p_short), rate(purchases, p_long)
    return {
        "days_since_event": since(all_times),
        "days_since_login": since(logins),
        "days_since_purchase": since(purchases),
        "days_since_ticket": since(ticket_times),
        "days_since_return": since(returns),
        "login_rate_short": login_short,
        "login_rate_long": login_long,
        "login_trend": trend(login_short, login_long),
        "purchase_rate_short": buy_short,
        "purchase_rate_long": buy_long,
        # neutral until the history covers the long purchase window
        "purchase_trend": (
            trend(buy_short, buy_long)
            if behaviour and now - min(behaviour) >= config.purchase_long_days
            else 1.0
        ),
        "spend_rate_long": rate(purchases, p_long, [e.amount for e in buys]),
        "ticket_load": load / short,
        "return_rate": rate(returns, p_long),
        "return_ratio": len(gives) / max(len(buys), 1),
        "open_tickets": float(len(open_ages)),
        "open_urgent_tickets": float(open_urgent),
        "oldest_open_ticket_days": max(open_ages, default=0.0),
        "csat_avg": sum(ratings) / len(ratings) if ratings else 0.0,
        "csat_low": rate(low_ratings, long) * long,
        "has_csat": 1.0 if ratings else 0.0,
        "tenure_days": now - min(behaviour) if behaviour else 0.0,
        "event_count": float(len(behaviour)),
        "purchase_count": float(len(buys)),
        "ltv": ltv,
        "log_ltv": math.log1p(ltv),
        "avg_purchase_gap_days": avg_gap,
        "purchase_gap_ratio": gap_ratio,
        "repeat_buyer": 1.0 if len(buys) >= 2 else 0.0,
        "last_gap_days": last_gap,
        "gap_ratio": event_gap_ratio,
    }


# -- tables ---------------------------------------------------------------------------------


def test_an_empty_state_reads_as_never():
    """
    A customer with no events has every recency at `never_days` and every rate and count at 0.
    """
    expected = dict.fromkeys(FEATURE_NAMES, 0.0) | {
        "days_since_event": 365.0,
        "days_since_login": 365.0,
        "days_since_purchase": 365.0,
        "days_since_ticket": 365.0,
        "days_since_return": 365.0,
        "login_trend": 1.0,
        "purchase_trend": 1.0,
    }

    actual = vector(empty_features(), at=T0)

    assert expected == actual


def test_vector_names_are_feature_names_in_order():
    """
    The vector has exactly the names of FEATURE_NAMES, in that order.
    """
    features = build([login(0), purchase(1), ticket(2, "T-1"), give_back(3)])

    assert list(FEATURE_NAMES) == list(vector(features, at=day(4)))


def test_three_logins():
    """
    Three logins give the recency and the decayed rates computed by hand.
    """
    features = build([login(0), login(1), login(3)])
    ages = (10, 9, 7)
    short = sum(math.exp(-a / 7) for a in ages) / 7
    long = sum(math.exp(-a / 30) for a in ages) / 30
    expected = {
        "days_since_event": 7.0,
        "days_since_login": 7.0,
        "days_since_purchase": 365.0,
        "login_rate_short": short,
        "login_rate_long": long,
        "login_trend": short / long,
        "tenure_days": 10.0,
        "event_count": 3.0,
        "purchase_trend": 1.0,
    }

    got = vector(features, at=day(10))
    actual = {name: got[name] for name in expected}

    assert mismatches(expected, actual) == {}


def test_login_trend_is_clipped_at_three():
    """
    A login just now reads as a short rate far above the long one, clipped to 3.
    """
    features = build([login(0)])

    actual = vector(features, at=day(0))["login_trend"]

    assert actual == 3.0


def test_login_trend_falls_when_logins_stop():
    """
    Thirty days after a steady daily habit stops, the short rate is far below the long one.
    """
    features = build([login(n) for n in range(60)])
    short = sum(math.exp(-(89 - n) / 7) for n in range(60)) / 7
    long = sum(math.exp(-(89 - n) / 30) for n in range(60)) / 30

    actual = vector(features, at=day(89))["login_trend"]

    assert math.isclose(short / long, actual, rel_tol=1e-12)
    assert actual < 0.2


def test_purchases_and_returns():
    """
    Two purchases and a return give the hand-computed money, ratio and gap features; the
    purchase trend is neutral while the history is shorter than the long purchase window.
    """
    features = build(
        [purchase(0, 100.0, "O-1"), purchase(10, 50.0, "O-2"), give_back(12, 30.0, "O-2")]
    )
    p_short = (math.exp(-25 / 30) + math.exp(-15 / 30)) / 30
    p_long = (math.exp(-25 / 90) + math.exp(-15 / 90)) / 90
    expected = {
        "days_since_purchase": 15.0,
        "days_since_return": 13.0,
        "days_since_event": 13.0,
        "purchase_rate_short": p_short,
        "purchase_rate_long": p_long,
        "purchase_trend": 1.0,
        "spend_rate_long": (100 * math.exp(-25 / 90) + 50 * math.exp(-15 / 90)) / 90,
        "return_rate": math.exp(-13 / 90) / 90,
        "return_ratio": 0.5,
        "purchase_count": 2.0,
        "ltv": 120.0,
        "log_ltv": math.log1p(120.0),
        "avg_purchase_gap_days": 10.0,
        "purchase_gap_ratio": 1.5,
        "repeat_buyer": 1.0,
        "tenure_days": 25.0,
    }

    got = vector(features, at=day(25))
    actual = {name: got[name] for name in expected}

    assert mismatches(expected, actual) == {}


def test_the_purchase_trend_compares_the_windows_once_the_history_covers_the_long_one():
    """
    From 90 days of history on, the purchase trend is the short rate over the long one: a
    customer who bought steadily and then stopped for two months shows it falling.
    """
    features = build([purchase(d, 10.0, f"O-{d}") for d in range(0, 91, 10)])
    at = 150
    bought = range(0, 91, 10)
    p_short = sum(math.exp(-(at - d) / 30) for d in bought) / 30
    p_long = sum(math.exp(-(at - d) / 90) for d in bought) / 90

    actual = vector(features, at=day(at))["purchase_trend"]

    assert math.isclose(p_short / p_long, actual, rel_tol=1e-12)
    assert actual < 0.6
    newcomer = build([purchase(d, 10.0, f"O-{d}") for d in range(0, 51, 10)])
    assert 1.0 == vector(newcomer, at=day(60))["purchase_trend"]  # 60 days of history


@pytest.mark.parametrize(
    ("purchase_days", "at_day", "expected_ratio"),
    [
        ((0,), 100, 0.0),  # one purchase: no gap to compare with
        ((0, 10, 20), 25, 0.5),
        ((0, 10), 500, 10.0),  # clipped
        ((5, 5), 5, 0.0),  # two purchases at one instant, nothing since
        ((5, 5), 6, 10.0),  # ... and a day since
    ],
)
def test_purchase_gap_ratio(purchase_days, at_day, expected_ratio):
    """
    The gap ratio compares the time since the last purchase with the average gap, in [0, 10].
    """
    features = build([purchase(d) for d in purchase_days])

    actual = vector(features, at=day(at_day))["purchase_gap_ratio"]

    assert expected_ratio == actual


def test_returns_beyond_purchases_floor_ltv_at_zero():
    """
    Returning more than was bought leaves a lifetime value of 0, not a negative one.
    """
    features = build([purchase(0, 20.0), give_back(1, 50.0), give_back(2, 5.0)])
    got = vector(features, at=day(3))

    actual = (got["ltv"], got["log_ltv"], got["return_ratio"])

    assert actual == (0.0, 0.0, 2.0)


def test_tickets():
    """
    Ticket status, severity, age, load and satisfaction match the hand-computed values.
    """
    features = build(
        [
            ticket(0, "A", "open", "high"),
            ticket(1, "B", "open", "low"),
            ticket(2, "A", "pending", "high"),
            ticket(3, "B", "solved", "low", csat=2),
            ticket(4, "C", "open", "urgent"),
            ticket(4.5, "D", "closed", "normal", csat=5),
        ]
    )
    weights = 2.0 * math.exp(-5 / 7) + 0.5 * math.exp(-4 / 7) + 4.0 * math.exp(-1 / 7)
    weights += 1.0 * math.exp(-0.5 / 7)
    expected = {
        "days_since_ticket": 0.5,
        "open_tickets": 2.0,
        "open_urgent_tickets": 2.0,
        "oldest_open_ticket_days": 5.0,
        "ticket_load": weights / 7,
        "csat_avg": 3.5,
        "csat_low": math.exp(-2 / 30),
        "has_csat": 1.0,
        "event_count": 6.0,
    }

    got = vector(features, at=day(5))
    actual = {name: got[name] for name in expected}

    assert mismatches(expected, actual) == {}


def test_the_latest_ticket_status_by_ts_wins_whatever_the_arrival_order():
    """
    A ticket closed on day 3 stays closed when its day-1 "open" event arrives afterwards.
    """
    features = build([ticket(3, "A", "closed", "high"), ticket(1, "A", "open", "urgent")])
    got = vector(features, at=day(4))

    actual = (got["open_tickets"], got["ticket_load"])

    assert (0.0, 4.0 * math.exp(-3 / 7) / 7) == pytest.approx(actual, rel=1e-12)


def test_a_ticket_status_tie_goes_to_the_later_status():
    """
    Two statuses of one ticket at the same instant resolve to the later one in the lifecycle.
    """
    in_order = build([ticket(1, "A", "open"), ticket(1, "A", "solved")])
    reversed_order = build([ticket(1, "A", "solved"), ticket(1, "A", "open")])

    actual = (
        vector(in_order, at=day(2))["open_tickets"],
        vector(reversed_order, at=day(2))["open_tickets"],
    )

    assert actual == (0.0, 0.0)


def test_closed_tickets_are_forgotten_after_the_retention():
    """
    A ticket closed 60 days before the latest event is kept; one closed longer ago is dropped.
    """
    kept = build([ticket(0, "A", "open"), ticket(1, "A", "closed"), login(61)])
    dropped = build([ticket(0, "A", "open"), ticket(1, "A", "closed"), login(61.5)])

    actual = ([t.ticket_id for t in kept.tickets], [t.ticket_id for t in dropped.tickets])

    assert actual == (["A"], [])


def test_open_tickets_are_never_forgotten_by_age():
    """
    A ticket still open a year later is still counted, with its full age.
    """
    features = build([ticket(0, "A", "pending"), login(400)])
    got = vector(features, at=day(401))

    actual = (got["open_tickets"], got["oldest_open_ticket_days"])

    assert actual == (1.0, 401.0)


def test_the_number_of_tickets_is_capped():
    """
    Past max_tickets, the longest-closed tickets are dropped first, then the oldest open ones.
    """
    config = FeatureConfig(max_tickets=3)
    features = build(
        [
            ticket(0, "old-open", "open"),
            ticket(1, "closed-1", "closed"),
            ticket(2, "closed-2", "closed"),
            ticket(3, "new-open", "open"),
            ticket(4, "newest-open", "open"),
        ],
        config=config,
    )

    actual = sorted(t.ticket_id for t in features.tickets)

    assert actual == ["new-open", "newest-open", "old-open"]


def test_recency_is_capped_at_never_days():
    """
    A login 400 days ago reads as 365 days, never as more than "never".
    """
    features = build([login(0)])

    actual = vector(features, at=day(400))["days_since_login"]

    assert actual == 365.0


def test_a_cancel_only_moves_days_since_event():
    """
    A cancellation after some activity changes days_since_event and no other feature.
    """
    history = [login(0), purchase(1), ticket(2, "A", "open", "urgent", csat=1), give_back(3)]
    without = build(history)
    with_cancel = update_one(without, cancel(5))
    at = day(6)
    expected = vector(without, at=at) | {"days_since_event": 1.0}

    actual = vector(with_cancel, at=at)

    assert mismatches(expected, actual) == {}


def test_a_cancel_alone_counts_as_no_behaviour():
    """
    A customer whose only event is a cancellation has no tenure and no event count.
    """
    got = vector(build([cancel(0)]), at=day(2))

    actual = (got["days_since_event"], got["tenure_days"], got["event_count"])

    assert actual == (2.0, 0.0, 0.0)


def test_vector_never_reads_the_future():
    """
    Asked for a time before the latest event, vector answers as of the latest event.
    """
    features = build([login(0), purchase(3), login(10)])

    actual = vector(features, at=day(2))

    assert vector(features, at=day(10)) == actual


def test_update_one_does_not_change_its_input():
    """
    Applying an event returns a new state and leaves the old one as it was.
    """
    before = build([login(0), ticket(1, "A", "open"), purchase(2)])
    snapshot = to_dict(before)
    vector_before = vector(before, at=day(3))

    update_one(before, ticket(2.5, "A", "closed", csat=1))
    update_one(before, login(5))
    update_one(before, ticket(0.5, "B"))

    assert (snapshot, vector_before) == (to_dict(before), vector(before, at=day(3)))


def test_the_state_stays_small():
    """
    A thousand events over three years leave a stored state of bounded size.
    """
    events: list[Event] = []
    for n in range(250):
        events += [login(n * 4), purchase(n * 4 + 1), give_back(n * 4 + 2)]
        events += [ticket(n * 4 + 3, f"T-{n}", "open"), ticket(n * 4 + 3.5, f"T-{n}", "closed")]
    features = build(events)

    actual = sum(len(key) + len(value) for key, value in to_dict(features).items())

    assert actual < 4000


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"short": timedelta(0)}, "short"),
        ({"purchase_long": timedelta(days=-1)}, "purchase_long"),
        ({"never_days": math.inf}, "never_days"),
        ({"max_tickets": 0}, "max_tickets"),
        ({"ticket_weights": {"low": 1.0}}, "ticket_weights"),
        ({"ticket_weights": dict.fromkeys(SEVERITY_ORDER, -1.0)}, "ticket_weights"),
    ],
)
def test_a_bad_config_is_refused(changes, needle):
    """
    An invalid FeatureConfig raises ConfigError naming the field.
    """
    with pytest.raises(ConfigError, match=needle):
        FeatureConfig(**changes)


def test_config_weights_cannot_be_changed_afterwards():
    """
    Changing the dict a config was built from does not change the config.
    """
    weights = {"low": 1.0, "normal": 1.0, "high": 1.0, "urgent": 1.0}
    config = FeatureConfig(ticket_weights=weights)
    weights["urgent"] = 100.0

    assert config.ticket_weights["urgent"] == 1.0


# -- properties -----------------------------------------------------------------------------


@given(events=streams_with_cancels, data=st.data())
def test_any_arrival_order_gives_the_same_vector(events, data):
    """
    Events applied in any order give the same vector at the latest event as applied in ts order.
    """
    shuffled = data.draw(st.permutations(events))
    at = max((e.ts for e in events), default=START_AT)

    expected = vector(build(sorted(events, key=lambda e: e.ts)), at=at)
    actual = vector(build(shuffled), at=at)

    assert mismatches(expected, actual) == {}


@given(events=streams_with_cancels, later=st.integers(min_value=0, max_value=200))
def test_incremental_features_match_a_batch_recomputation(events, later):
    """
    After every prefix of a stream, in arrival order, the vector equals the batch recomputation.
    """
    features = empty_features()
    for count, event in enumerate(events, start=1):
        features = update_one(features, event)
        prefix = events[:count]
        at = max(e.ts for e in prefix) + timedelta(days=later)

        assert mismatches(batch_vector(prefix, at), vector(features, at=at)) == {}


@given(events=streams_with_cancels, later=st.floats(min_value=-100, max_value=2000))
def test_vector_values_are_finite(events, later):
    """
    Every feature is a finite float, at any time asked.
    """
    features = build(events)

    actual = vector(features, at=START_AT + timedelta(days=later))

    assert [name for name, value in actual.items() if not math.isfinite(value)] == []


@given(events=streams_with_cancels)
def test_to_dict_from_dict_round_trips(events):
    """
    A state written with to_dict and read back with from_dict is equal to the original.
    """
    features = build(events)
    data = to_dict(features)

    assert features == from_dict(data)
    assert all(key.startswith("f.") and isinstance(value, str) for key, value in data.items())


@given(value=st.floats(allow_nan=False, allow_infinity=False))
def test_floats_round_trip_exactly(value):
    """
    Any finite float in the state survives to_dict and from_dict bit for bit.
    """
    features = replace(empty_features(), spend_long=value, ref_day=value)

    actual = from_dict(to_dict(features))

    assert (value.hex(), value.hex()) == (actual.spend_long.hex(), actual.ref_day.hex())


# -- the Redis form -------------------------------------------------------------------------


def test_from_dict_of_nothing_is_a_new_customer():
    """
    A hash with no feature keys (a new customer, or only score fields) reads as empty features.
    """
    assert empty_features() == from_dict({"score": "42"})


def test_from_dict_ignores_keys_of_others():
    """
    Keys without the feature prefix, such as the score, are ignored.
    """
    features = build([login(0), ticket(1, "A")])

    actual = from_dict(to_dict(features) | {"score": "17.5", "alert.state": "open"})

    assert features == actual


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("f.login_short", "abc"),
        ("f.login_short", "nan"),
        ("f.login_long", "inf"),
        ("f.ref_day", "1,5"),
        ("f.event_count", "-1"),
        ("f.purchase_count", "2.0"),
        ("f.tickets", "not json"),
        ("f.tickets", '{"A": 1}'),
        ("f.tickets", '[["A", 1.0, "huge", 1.0, "open", "low"]]'),
        ("f.tickets", '[["A", 1.0, "low", 1.0, "reopened", "low"]]'),
        ("f.v", "2"),
    ],
)
def test_from_dict_names_the_bad_key(key, value):
    """
    A stored value that to_dict would not write raises ValueError naming its key.
    """
    data = to_dict(build([login(0), ticket(1, "A")])) | {key: value}

    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        from_dict(data)


def test_from_dict_names_a_missing_key():
    """
    A hash missing one of the feature keys raises ValueError naming it.
    """
    data = to_dict(build([login(0)]))
    del data["f.login_long"]

    with pytest.raises(ValueError, match=r"f\.login_long"):
        from_dict(data)
