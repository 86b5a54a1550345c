"""
churnwatch.store: the Redis store of the streaming workers (states, partition meta, due and
risk sets, the outbox, model checkpoints).
"""

from churnwatch.store.layout import (
    BatchWrite,
    CorruptState,
    HistoryPoint,
    Keys,
    OutboxEntry,
    PartitionMeta,
    StoredAlert,
)
from churnwatch.store.redis_store import RedisStore
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
