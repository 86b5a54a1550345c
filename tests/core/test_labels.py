"""
Delayed labels: snapshots resolve negative on activity within H, positive after H of silence.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from churnwatch.core.labels import (
    Snapshot,
    horizon_of,
    is_lost,
    next_expiry_at,
    resolve_on_activity,
    resolve_on_cancel,
    resolve_on_silence,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
H = timedelta(days=30)
X = {"f": 1.0}


def snap(day: float, kind: str = "sample") -> Snapshot:
    return Snapshot(T0 + timedelta(days=day), kind, X)  # type: ignore[arg-type]


def test_activity_within_horizon_resolves_samples_negative() -> None:
    """
    A sample taken before an activity within H becomes a negative example.
    """
    pending, examples = resolve_on_activity("c", (snap(0),), at=T0 + timedelta(days=3), horizon=H)
    assert () == pending
    assert [(T0, False)] == [(e.taken_at, e.churned) for e in examples]


def test_a_negative_is_released_when_its_window_closes() -> None:
    """
    A negative is known at the activity, but its `resolved_at` (when the learner may learn it)
    is the end of its window, where a positive of the same snapshot would resolve: the learner
    never holds a window's negatives without its positives. A positive found by an activity
    after its window resolves at that activity.
    """
    early = T0 + timedelta(days=3)
    _, (negative,) = resolve_on_activity("c", (snap(0),), at=early, horizon=H)
    assert (False, T0 + H) == (negative.churned, negative.resolved_at)
    own = Snapshot(T0, "sample", X, timedelta(days=90))
    _, (negative,) = resolve_on_activity("c", (own,), at=early, horizon=H)
    assert T0 + timedelta(days=90) == negative.resolved_at
    late = T0 + timedelta(days=40)
    _, (positive,) = resolve_on_activity("c", (snap(0),), at=late, horizon=H)
    assert (True, late) == (positive.churned, positive.resolved_at)


def test_event_candidates_resolving_negative_are_dropped() -> None:
    """
    The candidate at the latest event is not learned when the customer comes back in time.
    """
    pending, examples = resolve_on_activity(
        "c", (snap(0, "event"),), at=T0 + timedelta(days=3), horizon=H
    )
    assert ((), []) == (pending, examples)


def test_activity_after_the_horizon_resolves_positive() -> None:
    """
    An activity later than H after a snapshot makes it positive (the customer had churned).
    """
    _, examples = resolve_on_activity(
        "c", (snap(0, "event"),), at=T0 + timedelta(days=31), horizon=H
    )
    assert [True] == [e.churned for e in examples]


def test_snapshots_after_the_activity_stay_pending() -> None:
    """
    A late event older than a snapshot does not resolve it: the snapshot's future is not known yet.
    """
    later = snap(5)
    pending, examples = resolve_on_activity("c", (later,), at=T0 + timedelta(days=2), horizon=H)
    assert ((later,), []) == (pending, examples)


def test_silence_resolves_positive_once_the_horizon_has_passed() -> None:
    """
    A snapshot becomes positive when the watermark reaches its time plus H, not before.
    """
    s = snap(0)
    assert ((s,), []) == resolve_on_silence(
        "c", (s,), watermark=T0 + H - timedelta(seconds=1), horizon=H
    )
    pending, examples = resolve_on_silence("c", (s,), watermark=T0 + H, horizon=H)
    assert () == pending
    assert [(T0, T0 + H, True)] == [(e.taken_at, e.resolved_at, e.churned) for e in examples]


def test_cancellation_makes_every_earlier_snapshot_positive() -> None:
    """
    An explicit cancellation labels every snapshot taken up to it as churned.
    """
    examples = resolve_on_cancel(
        "c", (snap(0, "event"), snap(2), snap(9)), at=T0 + timedelta(days=5)
    )
    assert [True, True] == [e.churned for e in examples]


def test_next_expiry_is_the_earliest_snapshot_plus_horizon() -> None:
    """
    The sweep knows when the earliest pending snapshot would turn positive.
    """
    assert next_expiry_at((), horizon=H) is None
    assert T0 + timedelta(days=2) + H == next_expiry_at((snap(9), snap(2)), horizon=H)


def shopper(day: float, gap: float, silent: float = 0.0) -> Snapshot:
    x = {"avg_purchase_gap_days": gap, "days_since_event": silent}
    return Snapshot(T0 + timedelta(days=day), "silence" if silent else "sample", x)


def test_gap_multiple_zero_keeps_the_horizon() -> None:
    """
    Without a gap multiple every snapshot waits H, whatever its features.
    """
    assert H == horizon_of(shopper(0, gap=40, silent=10), H, 0.0)
    assert not is_lost({"avg_purchase_gap_days": 1.0, "days_since_event": 300.0}, H, 0.0)


def test_gap_multiple_counts_the_whole_silence() -> None:
    """
    With k = 3 the silence must last max(H, 3 x the usual gap) in all: a snapshot taken 10
    days into a silence of a customer who buys every 20 days waits 50 more days; one of a
    customer who buys every 5 days waits H less the 10 days already silent.
    """
    assert timedelta(days=50) == horizon_of(shopper(0, gap=20, silent=10), H, 3.0)
    assert timedelta(days=20) == horizon_of(shopper(0, gap=5, silent=10), H, 3.0)
    assert is_lost({"avg_purchase_gap_days": 20.0, "days_since_event": 60.0}, H, 3.0)
    assert not is_lost({"avg_purchase_gap_days": 20.0, "days_since_event": 59.0}, H, 3.0)


def test_gap_multiple_resolves_on_the_snapshots_own_horizon() -> None:
    """
    A shopper back after 40 days is a negative with k = 3 and a gap of 20 (it waits 60 days),
    a positive without; silence resolves it positive only when its 60 days are over.
    """
    pending = (shopper(0, gap=20),)
    back = T0 + timedelta(days=40)
    _, with_gap = resolve_on_activity("c", pending, at=back, horizon=H, gap_multiple=3.0)
    _, without = resolve_on_activity("c", pending, at=back, horizon=H)
    assert ([False], [True]) == ([e.churned for e in with_gap], [e.churned for e in without])
    kept, early = resolve_on_silence("c", pending, watermark=back, horizon=H, gap_multiple=3.0)
    _, late = resolve_on_silence(
        "c", pending, watermark=T0 + timedelta(days=60), horizon=H, gap_multiple=3.0
    )
    assert (pending, []) == (kept, early)
    assert [(T0 + timedelta(days=60), True)] == [(e.resolved_at, e.churned) for e in late]
    assert T0 + timedelta(days=60) == next_expiry_at(pending, horizon=H, gap_multiple=3.0)
