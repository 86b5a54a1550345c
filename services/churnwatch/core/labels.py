"""
Delayed labels: feature snapshots that become training examples when their outcome is known.

A snapshot taken at time `s` asks "will this customer be silent for the whole label horizon
after `s`?". It resolves negative at the customer's next activity within the horizon, and
positive when the horizon passes in silence or an explicit cancellation arrives. A snapshot holds
only features computed up to `s`, so an example never sees its own future.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

SnapshotKind = Literal["event", "sample", "silence"]


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


def resolve_on_activity(
    customer_id: str,
    pending: tuple[Snapshot, ...],
    *,
    at: datetime,
    horizon: timedelta,
) -> tuple[tuple[Snapshot, ...], list[Example]]:
    """
    Resolve the snapshots taken before an activity at `at`.

    Args:
        customer_id: whose snapshots these are.
        pending: the customer's unresolved snapshots.
        at: the time of the new activity.
        horizon: the label horizon H.

    Returns:
        The snapshots still pending (those taken at or after `at`) and the examples resolved:
        negative when `at` falls within H of the snapshot, positive otherwise. An `event`
        candidate that resolves negative is dropped, not learned: the periodic samples carry
        the negatives, so every churn contributes one positive and every week of activity one
        negative.
    """
    keep: list[Snapshot] = []
    examples: list[Example] = []
    for snap in pending:
        if snap.taken_at >= at:
            keep.append(snap)
            continue
        churned = at - snap.taken_at > horizon
        if churned or snap.kind != "event":
            examples.append(Example(customer_id, snap.taken_at, at, snap.x, churned))
    return tuple(keep), examples


def resolve_on_silence(
    customer_id: str,
    pending: tuple[Snapshot, ...],
    *,
    watermark: datetime,
    horizon: timedelta,
) -> tuple[tuple[Snapshot, ...], list[Example]]:
    """
    Resolve as positive every snapshot whose horizon has passed in silence by `watermark`.

    Args:
        customer_id: whose snapshots these are.
        pending: the customer's unresolved snapshots (no activity after any of them yet).
        watermark: event time up to which the silence is known to be complete.
        horizon: the label horizon H.

    Returns:
        The snapshots still pending and the positive examples resolved, in `taken_at` order.
    """
    keep: list[Snapshot] = []
    examples: list[Example] = []
    for snap in pending:
        resolved_at = snap.taken_at + horizon
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


def next_expiry_at(pending: tuple[Snapshot, ...], *, horizon: timedelta) -> datetime | None:
    """
    When the earliest pending snapshot would resolve positive if the silence goes on.
    """
    if not pending:
        return None
    return min(snap.taken_at for snap in pending) + horizon
