"""
churnwatch.store: the Redis store of the streaming workers (states, partition meta, due and
risk sets, the outbox, model checkpoints).
"""

from churnwatch.store.redis_store import (
    BatchWrite,
    CorruptState,
    HistoryPoint,
    Keys,
    OutboxEntry,
    PartitionMeta,
    RedisStore,
    StoredAlert,
)
from churnwatch.store.settings import StoreSettings

__all__ = [
    "BatchWrite",
    "CorruptState",
    "HistoryPoint",
    "Keys",
    "OutboxEntry",
    "PartitionMeta",
    "RedisStore",
    "StoreSettings",
    "StoredAlert",
]
