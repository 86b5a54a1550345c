"""
The order in which the model learns, the same in the replay and in the streaming learner.

Examples arrive from many partitions in an order no one controls. The model learns them in
epochs of event time: once every partition's watermark has passed the boundary `B_k` of epoch
k, every example resolved before `B_k` is learned in the order (resolved_at, customer_id,
taken_at) and checkpoint k is taken. Scoring at time t uses checkpoint `epoch(t) - 1`, one
epoch of slack for partitions that lag. Whatever the interleaving of partitions, the same
events give the same checkpoints, and so the same scores.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from churnwatch.core.events import EPOCH
from churnwatch.core.labels import Example


def epoch_of(at: datetime, length: timedelta) -> int:
    """The number of the model epoch that `at` falls in."""
    return int((at - EPOCH) // length)


def boundary(epoch: int, length: timedelta) -> datetime:
    """The start of epoch `epoch`."""
    return EPOCH + epoch * length


def scoring_epoch(at: datetime, length: timedelta) -> int:
    """The checkpoint to score an event at `at` with: the one of the previous epoch."""
    return epoch_of(at, length) - 1


@dataclass(slots=True)
class Curriculum:
    """
    Buffers examples and releases them, epoch by epoch, in a deterministic order.

    Args:
        length: the length of a model epoch.
        partitions: how many partitions report watermarks; an epoch closes when all have
            passed its boundary.
    """

    length: timedelta
    partitions: int
    _heap: list[tuple[datetime, str, datetime, str, Example]] = field(default_factory=list)
    """(resolved_at, customer_id, taken_at, example_id, example): the learning order, then
    the id (computed once); no two entries share the first three."""
    _ids: set[str] = field(default_factory=set)
    _learned: dict[str, datetime] = field(default_factory=dict)
    _watermarks: dict[int, datetime] = field(default_factory=dict)
    _next: int | None = None
    duplicates: int = 0
    late: int = 0
    _next_at: tuple[int, datetime] | None = None
    """`_next` and its boundary, computed once per epoch (advance runs at every record)."""

    def add(self, example: Example) -> bool:
        """
        Buffer one example; False (and counted) for a redelivered one.
        """
        key = example.example_id
        if key in self._ids or key in self._learned:
            self.duplicates += 1
            return False
        if self._next is not None and example.resolved_at < boundary(self._next - 1, self.length):
            # Its epoch is closed already: learn it with the next one rather than lose it.
            self.late += 1
        self._ids.add(key)
        heapq.heappush(
            self._heap, (example.resolved_at, example.customer_id, example.taken_at, key, example)
        )
        return True

    def low_watermark(self) -> datetime | None:
        """The smallest watermark over all partitions, once every partition has reported."""
        if len(self._watermarks) < self.partitions:
            return None
        return min(self._watermarks.values())

    def advance(self, partition: int, watermark: datetime) -> list[tuple[int, list[Example]]]:
        """
        Record a partition's watermark and release the epochs it closes.

        Returns:
            For each closed epoch k, in order: k and the examples resolved before its boundary
            (possibly none), in learning order. Checkpoint k is the model after learning them.
        """
        current = self._watermarks.get(partition)
        if current is None or watermark > current:
            self._watermarks[partition] = watermark
        low = self.low_watermark()
        if low is None:
            return []
        if self._next is None:
            # Start at the earliest thing known, not at the first low watermark, so that
            # epochs are the same whatever partition reported first.
            start = min(low, self._heap[0][0]) if self._heap else low
            self._next = epoch_of(start, self.length) + 1
        released: list[tuple[int, list[Example]]] = []
        if self._next_at is None or self._next_at[0] != self._next:
            self._next_at = (self._next, boundary(self._next, self.length))
        while self._next_at[1] <= low:
            released.append((self._next, self._pop_before(self._next_at[1])))
            self._next += 1
            self._next_at = (self._next, boundary(self._next, self.length))
        if released:
            # Remember what was learned for two epochs, to recognise late redeliveries.
            forget = boundary(self._next - 3, self.length)
            self._learned = {k: at for k, at in self._learned.items() if at >= forget}
        return released

    def _pop_before(self, bound: datetime) -> list[Example]:
        out: list[Example] = []
        while self._heap and self._heap[0][0] < bound:
            _, _, _, key, example = heapq.heappop(self._heap)
            self._ids.discard(key)
            self._learned[key] = example.resolved_at
            out.append(example)
        return out

    def drain(self) -> list[Example]:
        """Everything still buffered, in learning order (the end of a replay)."""
        out = [item[4] for item in sorted(self._heap, key=lambda item: item[:3])]
        self._heap.clear()
        self._ids.clear()
        return out

    def closed_through(self) -> int | None:
        """
        The last epoch whose checkpoint is final (every example resolved before its boundary
        has been learned), or None while some partition has not reported yet.
        """
        return None if self._next is None else self._next - 1

    def pending(self) -> int:
        return len(self._heap)


def in_order(examples: Iterable[Example]) -> list[Example]:
    """Examples in learning order."""
    return sorted(examples, key=lambda e: (e.resolved_at, e.customer_id, e.taken_at))
