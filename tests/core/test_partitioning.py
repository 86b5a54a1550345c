"""
Customers map to partitions exactly as Kafka's default partitioner maps keyed records.
"""

from __future__ import annotations

import pytest

from churnwatch.core.partitioning import murmur2, partition_of

# Values computed by Kafka's Java client (Utils.murmur2), as used in its partitioner tests.
KNOWN = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
]


@pytest.mark.parametrize(("key", "expected"), KNOWN)
def test_murmur2_matches_kafka(key: bytes, expected: int) -> None:
    """
    Our murmur2 gives the same value as Kafka's Java client for its own test vectors.
    """
    assert expected == murmur2(key)


def test_partition_of_is_stable_and_in_range() -> None:
    """
    A customer always lands on the same partition, within range; one partition means 0.
    """
    ids = [f"c{i:06d}" for i in range(1000)]
    parts = [partition_of(c, 6) for c in ids]
    assert parts == [partition_of(c, 6) for c in ids]
    assert set(range(6)) == set(parts)
    assert {0} == {partition_of(c, 1) for c in ids}
