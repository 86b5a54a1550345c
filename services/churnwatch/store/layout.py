"""
What the Redis store keeps and how it is written: the records a batch writes (`BatchWrite` and
its parts), the key layout (`Keys`), and the codecs of the outbox, the score history and the
customer hash. `churnwatch.store.redis_store` talks to Redis with them.

Key schema (the streaming protocol; every key carries a hash tag):

- `{prefix}:c:{<customer_id>}` HASH: `churnwatch.core.state.to_dict(state)` plus `o:<partition>`,
  the offset in churn.events of the last event applied to the customer.
- `{prefix}:p:{<partition>}:meta` HASH (high_water, watermark as ISO, last_offset, and
  `src:<topic>:<partition>` the last ingest offset handled per source),
  `...:due` ZSET (customer -> next due time, epoch seconds), `...:risk` ZSET (customer ->
  churn probability), `...:outbox` HASH (entry id -> JSON of a record still to produce).
- `{prefix}:c:{<customer_id>}:hist` ZSET (the customer's scorings, event time ->
  `<epoch ms>|<churn_probability>|<engagement_score>`; the newest `history_kept`), `...:alerts` ZSET
  (event time -> the alert's JSON as published; the newest `alerts_kept`).
- `{prefix}:p:{<partition>}:change` ZSET (customer -> risk change since the anchor), and per
  segment `...:risk:<segment>`, `...:change:<segment>`: the at-risk list's orders.
- `{prefix}:{alerts}:index` HASH (alert_id -> customer_id); `{prefix}:{fb}:verdicts` HASH
  (alert_id -> JSON of the CSM's verdict), `{prefix}:{fb}:counts` HASH (`rule|verdict` -> n).
- `{prefix}:{model}:ckpt:<epoch>` STRING, `{prefix}:{model}:latest` STRING (newest epoch),
  `{prefix}:{model}:versions` ZSET (epoch -> epoch): `{model}` is a literal hash tag, so the
  checkpoints live in one slot.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from churnwatch.core.events import format_ts
from churnwatch.core.state import CustomerState, from_dict

OFFSET_FIELD: Final = "o:"
"""Prefix of the applied-offset fields of a customer hash (`o:<partition>`)."""
ORDERS: Final = ("risk", "change")
"""The orders of the at-risk list: by churn probability, or by its change."""


@dataclass(frozen=True, slots=True)
class PartitionMeta:
    """What a scoring worker keeps per partition of churn.events between batches."""

    high_water: datetime | None = None
    """The largest event time applied on the partition."""
    watermark: datetime | None = None
    """high_water less the allowed lateness: the sweep has handled everything due until it."""
    last_offset: int | None = None
    """The offset of the last record of churn.events handled on the partition."""
    sources: Mapping[str, int] = field(default_factory=dict)
    """Per ingest topic partition (`topic:partition`), the offset of the last ingest record
    whose forward was handled on the partition (records without a source header: none)."""


SOURCE_FIELD: Final = "src:"
"""Prefix of a partition meta's per-source offsets (`src:<topic>:<partition>`)."""
"""The prefix of a partition meta field holding `PartitionMeta.sources`."""


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A record written to Redis before it is produced (an alert or a training record)."""

    entry_id: str
    """alert_id or example_id: unique per record, so downstream dedups re-produced ones."""
    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class BatchWrite:
    """Everything one batch of one partition writes, in one call of `RedisStore.write_batch`."""

    partition: int
    meta: PartitionMeta
    states: Sequence[tuple[CustomerState, int | None]] = ()
    """Each state with the offset of the last event applied to it in this batch (None: the
    batch only swept it, its applied offset stays)."""
    outbox: Sequence[OutboxEntry] = ()
    due: Mapping[str, datetime | None] = field(default_factory=dict)
    """Customer -> next due time of the sweep; None removes the customer from the due set."""
    history: Sequence[HistoryPoint] = ()
    """The scorings of this batch, for the customers' score histories."""
    alerts: Sequence[StoredAlert] = ()
    """The alerts of this batch, for the customers' alert histories (also in the outbox)."""
    segments: Sequence[str] = ()
    """Every segment of the rules: a customer is kept in its own segment's sets only."""


@dataclass(frozen=True, slots=True)
class HistoryPoint:
    """One scoring of one customer, as the score history shows it."""

    customer_id: str
    at: datetime
    churn_probability: float
    engagement_score: float

    def encode(self) -> bytes:
        """
        `<epoch ms>|<churn_probability>|<engagement_score>`: short, so that a customer's
        history (at most 128 members of at most 64 bytes) stays in Redis's compact listpack
        encoding, about 40 bytes a point.
        """
        ms = round(epoch_seconds(self.at, f"history of {self.customer_id!r}") * 1000)
        return f"{ms}|{self.churn_probability!r}|{self.engagement_score!r}".encode()


def decode_history(raw: bytes) -> dict[str, Any]:
    """A stored history point as the API shows it: at (ISO), churn_probability, score."""
    ms, p, score = raw.decode().split("|")
    at = datetime.fromtimestamp(int(ms) / 1000, tz=UTC)
    return {
        "at": format_ts(at),
        "churn_probability": float(p),
        "engagement_score": float(score),
    }


@dataclass(frozen=True, slots=True)
class StoredAlert:
    """An alert as the customer's alert history keeps it: its published JSON, by event time."""

    customer_id: str
    alert_id: str
    at: datetime
    value: bytes


@dataclass(frozen=True, slots=True)
class Keys:
    """The key schema of the streaming protocol under one prefix."""

    prefix: str

    def customer(self, customer_id: str) -> str:
        return f"{self.prefix}:c:{{{customer_id}}}"

    def partition(self, partition: int, kind: str) -> str:
        return f"{self.prefix}:p:{{{partition}}}:{kind}"

    def meta(self, partition: int) -> str:
        return self.partition(partition, "meta")

    def due(self, partition: int) -> str:
        return self.partition(partition, "due")

    def risk(self, partition: int) -> str:
        return self.partition(partition, "risk")

    def outbox(self, partition: int) -> str:
        return self.partition(partition, "outbox")

    def change(self, partition: int) -> str:
        return self.partition(partition, "change")

    def order(self, partition: int, sort: str, segment: str | None) -> str:
        """The at-risk order `sort` ("risk" or "change"), of one segment or of all."""
        return self.partition(partition, sort if segment is None else f"{sort}:{segment}")

    def load_log(self) -> str:
        """The history `churnwatch load` replayed into this prefix (a list of its records)."""
        return f"{self.prefix}:load:log"

    def open_alerts(self, partition: int) -> str:
        """Customers of the partition with an alert that has no verdict yet (zset: the event
        time of their newest alert, in seconds)."""
        return self.partition(partition, "open")

    def history(self, customer_id: str) -> str:
        return f"{self.customer(customer_id)}:hist"

    def alerts(self, customer_id: str) -> str:
        return f"{self.customer(customer_id)}:alerts"

    def alert_index(self) -> str:
        return f"{self.prefix}:{{alerts}}:index"

    def verdicts(self) -> str:
        return f"{self.prefix}:{{fb}}:verdicts"

    def verdict_counts(self) -> str:
        return f"{self.prefix}:{{fb}}:counts"

    def checkpoint(self, epoch: int) -> str:
        return f"{self.prefix}:{{model}}:ckpt:{epoch}"

    def latest(self) -> str:
        return f"{self.prefix}:{{model}}:latest"

    def versions(self) -> str:
        return f"{self.prefix}:{{model}}:versions"


def epoch_seconds(at: datetime, what: str) -> float:
    if at.tzinfo is None or at.utcoffset() is None:
        msg = f"{what}: expected a timezone-aware datetime, got naive {at.isoformat()}"
        raise ValueError(msg)
    return at.timestamp()


def iso_or_empty(at: datetime | None, what: str) -> str:
    if at is None:
        return ""
    epoch_seconds(at, what)
    return at.isoformat()


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def encode_outbox(entry: OutboxEntry, seq: tuple[int, int]) -> bytes:
    """The outbox hash value of an entry; `seq` orders entries for re-production."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return orjson.dumps(
        {
            "topic": entry.topic,
            "key_b64": None if entry.key is None else b64(entry.key),
            "value_b64": b64(entry.value),
            "headers": [[name, b64(value)] for name, value in entry.headers],
            "seq": list(seq),
        }
    )


def decode_outbox(entry_id: str, raw: bytes) -> tuple[tuple[int, int], OutboxEntry]:
    """The inverse of `encode_outbox`: (seq, entry)."""
    data = orjson.loads(raw)
    key = data["key_b64"]
    entry = OutboxEntry(
        entry_id=entry_id,
        topic=data["topic"],
        key=None if key is None else base64.b64decode(key),
        value=base64.b64decode(data["value_b64"]),
        headers=tuple((name, base64.b64decode(value)) for name, value in data["headers"]),
    )
    seq = data["seq"]
    return (int(seq[0]), int(seq[1])), entry


@dataclass(frozen=True, slots=True)
class CorruptState:
    """A customer's stored state that cannot be read: what `load_states` reports, with its bytes."""

    customer_id: str
    key: str
    message: str
    raw: bytes
    """The hash as read (a JSON list of field names and values)."""


def decode_state(key: str, reply: bytes) -> tuple[CustomerState, dict[int, int]] | None:
    """
    A `_READ_STATE` reply as (state, applied offsets by partition); None: no such key.

    Raises:
        ValueError: the hash is not a customer state; the message says why.
    """
    flat = orjson.loads(reply)
    if not flat:
        return None
    fields: dict[str, str] = {}
    offsets: dict[int, int] = {}
    for name, value in zip(flat[::2], flat[1::2], strict=True):
        if name.startswith(OFFSET_FIELD):
            try:
                offsets[int(name[len(OFFSET_FIELD) :])] = int(value)
            except ValueError:
                msg = f"applied offset {name!r}: expected an integer, got {value!r}"
                raise ValueError(msg) from None
        else:
            fields[name] = value
    return from_dict(fields), offsets
