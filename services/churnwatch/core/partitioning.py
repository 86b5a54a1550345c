"""
Which partition a customer's records land on: Kafka's default partitioner for keyed records.

The replay uses it to keep one watermark per partition, exactly as the streaming workers do.
"""

from __future__ import annotations

from typing import Final

DEFAULT_PARTITIONS: Final = 6
"""Partitions of every topic unless `CHURNWATCH_KAFKA_PARTITIONS` says otherwise: the one default
of the workers, the topics, the API and the replay (whose result depends on the count)."""

_M: Final = 0x5BD1E995
_SEED: Final = 0x9747B28C
_MASK: Final = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """
    The 32-bit murmur2 hash exactly as Kafka's Java client computes it (signed result).
    """
    length = len(data)
    h = (_SEED ^ length) & _MASK
    blocks = length // 4
    for i in range(blocks):
        k = int.from_bytes(data[4 * i : 4 * i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = (h * _M) & _MASK
        h ^= k
    tail = data[4 * blocks :]
    rest = len(tail)
    if rest >= 3:
        h ^= tail[2] << 16
    if rest >= 2:
        h ^= tail[1] << 8
    if rest >= 1:
        h ^= tail[0]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_of(customer_id: str, partitions: int) -> int:
    """
    The partition of a customer's records among `partitions`, as Kafka's default partitioner
    places a record keyed by the UTF-8 bytes of `customer_id`.
    """
    if partitions <= 1:
        return 0
    return (murmur2(customer_id.encode()) & 0x7FFFFFFF) % partitions
