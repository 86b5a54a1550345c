"""
Delayed labels: snapshots resolve negative on activity within H, positive after H of silence.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from churnwatch.core.labels import (
    Snapshot,
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
