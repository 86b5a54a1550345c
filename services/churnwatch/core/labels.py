"""
Delayed labels: feature snapshots that become training examples when their outcome is known.

A snapshot taken at time `s` asks "will this customer be silent for the whole label horizon
after `s`?". It resolves negative at the customer's next activity within the horizon, and
positive when the horizon passes in silence or an explicit cancellation arrives. A snapshot holds
only features computed up to `s`, so an example never sees its own future.

The horizon of a snapshot is the label horizon H in force when it was taken (`Snapshot.horizon`:
learned from the stream, so it can differ between snapshots; None for the caller's H). With a
`gap_multiple` k > 0 (the rules file's `labels` section) a snapshot asks instead "will the
silence this customer is in last max(H, k x its usual gap between purchases) in all?", the gap
and the silence so far read from the snapshot's own features: for a shopper who buys every few
weeks, "silent for H" measures how often it buys, not whether it left.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal

from churnwatch.core.slots import fast_init

SnapshotKind = Literal["event", "sample", "silence"]
_DAY: Final = timedelta(days=1)


@fast_init
@dataclass(frozen=True, slots=True)
class Snapshot:
    """
    The features of one customer at `taken_at`, waiting for their label.

    `kind` says why it was taken: `event` is the candidate at the latest event (kept as an
    example only if the customer then goes silent), `sample` a periodic one (always kept),
    `silence` one taken by the inactivity sweep while the customer was quiet (always kept).
    """

    taken_at: datetime
    kind: SnapshotKind
    x: Mapping[str, float]
    horizon: timedelta | None = None
    """The label horizon H in force when it was taken; None: the caller's H."""


@fast_init
@dataclass(frozen=True, slots=True)
class Example:
    """A resolved training example: features at `taken_at` and whether the customer churned."""

    customer_id: str
    taken_at: datetime
    resolved_at: datetime
    x: Mapping[str, float]
    churned: bool

    @property
    def example_id(self) -> str:
        """One snapshot, one id: a redelivered example can be recognised."""
        return f"{self.customer_id}|{self.taken_at.isoformat()}"


GAP_FEATURE: Final = "avg_purchase_gap_days"
"""The feature a snapshot's own horizon is read from (0 until the second purchase)."""
SILENCE_FEATURE: Final = "days_since_event"
"""How long the silence a snapshot was taken in had lasted."""


def horizon_of(snap: Snapshot, horizon: timedelta, gap_multiple: float) -> timedelta:
    """
    How long after it was taken `snap` waits for activity before it resolves positive.

    `horizon` H when `gap_multiple` k is 0. With k > 0, the silence the snapshot is in must
    last max(H, k x the usual purchase gap) in all, counted from the last activity: the
    horizon is that less the days of silence the snapshot already saw (`days_since_event`).
    It is not positive when the silence is that long already (`is_lost`).
    """
    if snap.horizon is not None:
        horizon = snap.horizon
    if gap_multiple <= 0.0:
        return horizon
    x = snap.x
    days = max(horizon / _DAY, gap_multiple * x.get(GAP_FEATURE, 0.0))
    return timedelta(days=days - x.get(SILENCE_FEATURE, 0.0))


def is_lost(x: Mapping[str, float], horizon: timedelta, gap_multiple: float) -> bool:
    """
    Whether features `x` show a silence of max(H, k x the usual purchase gap) already: the
    customer is lost by the label's own definition, and a snapshot of it would teach nothing.
    Never with `gap_multiple` 0.
    """
    if gap_multiple <= 0.0:
        return False
    days = max(horizon / _DAY, gap_multiple * x.get(GAP_FEATURE, 0.0))
    return x.get(SILENCE_FEATURE, 0.0) >= days


def resolve_on_activity(
    customer_id: str,
    pending: tuple[Snapshot, ...],
    *,
    at: datetime,
    horizon: timedelta,
    gap_multiple: float = 0.0,
) -> tuple[tuple[Snapshot, ...], list[Example]]:
    """
    Resolve the snapshots taken before an activity at `at`.

    Args:
        customer_id: whose snapshots these are.
        pending: the customer's unresolved snapshots.
        at: the time of the new activity.
        horizon: the label horizon H.
        gap_multiple: with k > 0, a snapshot's horizon is max(H, k x its usual purchase gap).

    Returns:
        The snapshots still pending (those taken at or after `at`) and the examples resolved:
        negative when `at` falls within the snapshot's horizon, positive otherwise. An `event`
        candidate that resolves negative is dropped, not learned: the periodic samples carry
        the negatives, so every churn contributes one positive and every week of activity one
        negative.

        A negative's `resolved_at` is the end of its snapshot's window (`taken_at` + its
        horizon), not `at`: the learner learns every snapshot when its window closes, whatever
        its outcome. Learned at `at`, the negatives of the last horizon's snapshots would be
        learned while their positives are still unknown, and the model would learn that the
        customers of the last horizon come back (on CDNOW with a 90-day horizon over the first
        six months the ranking came out inverted, ROC AUC 0.39; see benchmarks/real_data.py).
    """
    keep: list[Snapshot] = []
    examples: list[Example] = []
    for snap in pending:
        if snap.taken_at >= at:
            keep.append(snap)
            continue
        window = horizon_of(snap, horizon, gap_multiple)
        churned = at - snap.taken_at > window
        if churned or snap.kind != "event":
            # A negative is known at `at`, and released when its window closes.
            released = at if churned else snap.taken_at + window
            examples.append(Example(customer_id, snap.taken_at, released, snap.x, churned))
    return tuple(keep), examples


def resolve_on_silence(
    customer_id: str,
    pending: tuple[Snapshot, ...],
    *,
    watermark: datetime,
    horizon: timedelta,
    gap_multiple: float = 0.0,
) -> tuple[tuple[Snapshot, ...], list[Example]]:
    """
    Resolve as positive every snapshot whose horizon has passed in silence by `watermark`.

    Args:
        customer_id: whose snapshots these are.
        pending: the customer's unresolved snapshots (no activity after any of them yet).
        watermark: event time up to which the silence is known to be complete.
        horizon: the label horizon H.
        gap_multiple: with k > 0, a snapshot's horizon is max(H, k x its usual purchase gap).

    Returns:
        The snapshots still pending and the positive examples resolved, in `taken_at` order.
    """
    keep: list[Snapshot] = []
    examples: list[Example] = []
    for snap in pending:
        resolved_at = snap.taken_at + horizon_of(snap, horizon, gap_multiple)
        if resolved_at <= watermark:
            examples.append(Example(customer_id, snap.taken_at, resolved_at, snap.x, True))
        else:
            keep.append(snap)
    return tuple(keep), examples


def resolve_on_cancel(
    customer_id: str, pending: tuple[Snapshot, ...], *, at: datetime
) -> list[Example]:
    """
    An explicit cancellation at `at` makes every snapshot taken before it positive.
    """
    return [
        Example(customer_id, snap.taken_at, at, snap.x, True)
        for snap in pending
        if snap.taken_at <= at
    ]


def next_expiry_at(
    pending: tuple[Snapshot, ...], *, horizon: timedelta, gap_multiple: float = 0.0
) -> datetime | None:
    """
    When the earliest pending snapshot would resolve positive if the silence goes on.
    """
    if not pending:
        return None
    return min(snap.taken_at + horizon_of(snap, horizon, gap_multiple) for snap in pending)
