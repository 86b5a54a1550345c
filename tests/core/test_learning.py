"""
The learning order: epochs close on the lowest watermark, examples come out in a fixed order.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from churnwatch.core.labels import Example
from churnwatch.core.learning import Curriculum, epoch_of, in_order, scoring_epoch

DAY = timedelta(days=1)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def example(customer: str, taken_day: float, resolved_day: float, churned: bool = False) -> Example:
    return Example(
        customer, T0 + taken_day * DAY, T0 + resolved_day * DAY, {"f": taken_day}, churned
    )


def test_an_epoch_closes_only_when_every_partition_passed_it() -> None:
    """
    With two partitions, nothing is released until the slower one passes the boundary.
    """
    c = Curriculum(DAY, 2)
    c.add(example("a", 0, 0.5))
    assert [] == c.advance(0, T0 + 3 * DAY)
    released = c.advance(1, T0 + 1.5 * DAY)
    k0 = epoch_of(T0, DAY)
    assert [(k0 + 1, [example("a", 0, 0.5)])] == released


def test_examples_come_out_in_learning_order() -> None:
    """
    Within an epoch, examples are learned by resolved time, then customer, then snapshot time.
    """
    c = Curriculum(DAY, 1)
    items = [
        example("b", 0, 0.2),
        example("a", 0.1, 0.2),
        example("a", 0, 0.2),
        example("c", 0, 0.1),
    ]
    for item in items:
        c.add(item)
    c.advance(0, T0)
    [(_, out)] = c.advance(0, T0 + DAY)
    assert ["c", "a", "a", "b"] == [e.customer_id for e in out]
    assert out == in_order(items)


def test_redelivered_examples_are_counted_and_dropped() -> None:
    """
    The same example twice, before or after its epoch closed, is learned once.
    """
    c = Curriculum(DAY, 1)
    c.advance(0, T0)
    assert c.add(example("a", 0, 0.5))
    assert not c.add(example("a", 0, 0.5))
    c.advance(0, T0 + DAY)
    assert not c.add(example("a", 0, 0.5))
    assert 2 == c.duplicates


@given(seed=st.integers(0, 10_000), n=st.integers(1, 40))
def test_interleaving_does_not_change_what_is_learned(seed: int, n: int) -> None:
    """
    Two partitions delivering the same examples in different interleavings release the same
    epochs with the same examples in the same order.
    """
    rng = random.Random(seed)
    examples = [
        example(f"c{rng.randrange(5)}", i * 0.1, i * 0.1 + rng.random() * 3) for i in range(n)
    ]
    by_part = {0: examples[::2], 1: examples[1::2]}

    def run(order_seed: int) -> list[tuple[int, list[Example]]]:
        r = random.Random(order_seed)
        c = Curriculum(DAY, 2)
        queues = {p: sorted(items, key=lambda e: e.resolved_at) for p, items in by_part.items()}
        out: list[tuple[int, list[Example]]] = []
        while any(queues.values()):
            p = r.choice([q for q in queues if queues[q]])
            e = queues[p].pop(0)
            c.add(e)
            out += c.advance(p, e.resolved_at)
        for p in by_part:
            out += c.advance(p, T0 + 10 * DAY)
        return [(k, items) for k, items in out if items]

    assert run(1) == run(2)


def test_scoring_uses_the_previous_epoch() -> None:
    """
    An event at noon on day d is scored with the checkpoint of day d-1.
    """
    noon = T0 + 5.5 * DAY
    assert epoch_of(noon, DAY) - 1 == scoring_epoch(noon, DAY)
