"""
The records the streaming workers write to Kafka besides the events themselves: dead letters,
training examples and watermark records (the streaming protocol). Pure encode/decode.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

import orjson

from churnwatch.core.labels import Example

Stage = Literal["ingest", "scoring", "learner"]


def dead_letter(
    *,
    reason: str,
    message: str,
    topic: str,
    partition: int,
    offset: int,
    original: bytes,
    stage: Stage,
    max_original_bytes: int,
    customer_id: str | None = None,
) -> bytes:
    """
    The value of a dead-letter record: why, where from, and the original bytes (base64).

    Originals longer than `max_original_bytes` are cut to that length; `original_size` and
    `original_truncated` say so.
    """
    kept = original[:max_original_bytes]
    extra = {} if customer_id is None else {"customer_id": customer_id}
    return orjson.dumps(
        {
            **extra,
            "reason": reason,
            "message": message,
            "source": {"topic": topic, "partition": partition, "offset": offset},
            "original_b64": base64.b64encode(kept).decode(),
            "original_size": len(original),
            "original_truncated": len(kept) < len(original),
            "stage": stage,
        }
    )


def example_to_json(example: Example) -> bytes:
    """A training example as published on churn.training."""
    # orjson writes non-finite floats as null; example_from_dict turns them back into NaN.
    return orjson.dumps(
        {
            "kind": "example",
            "example_id": example.example_id,
            "customer_id": example.customer_id,
            "taken_at": example.taken_at.isoformat(),
            "resolved_at": example.resolved_at.isoformat(),
            "x": dict(example.x),
            "churned": example.churned,
        }
    )


def watermark_to_json(partition: int, watermark: datetime) -> bytes:
    """A watermark record: the partition has been swept, and its examples sent, up to here."""
    return orjson.dumps(
        {"kind": "watermark", "partition": partition, "watermark": watermark.isoformat()}
    )


@dataclass(frozen=True, slots=True)
class Watermark:
    partition: int
    watermark: datetime


class TrainingRecordError(ValueError):
    """A churn.training record that is neither an example nor a watermark."""


def _aware(text: Any, what: str) -> datetime:
    if not isinstance(text, str):
        msg = f"{what}: expected an ISO 8601 string, got {type(text).__name__}"
        raise TrainingRecordError(msg)
    at = datetime.fromisoformat(text)
    if at.tzinfo is None:
        msg = f"{what}: expected a time with a zone, got {text!r}"
        raise TrainingRecordError(msg)
    return at


def _features(x: Any) -> Mapping[str, float]:
    if not isinstance(x, dict):
        msg = f"x: expected an object of features, got {type(x).__name__}"
        raise TrainingRecordError(msg)
    return {str(k): math.nan if v is None else float(v) for k, v in x.items()}


def parse_training(raw: bytes) -> Example | Watermark:
    """
    Decode a churn.training record.

    Raises:
        TrainingRecordError: naming what is wrong.
    """
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        msg = f"training record: expected JSON, got {raw[:40]!r}: {exc}"
        raise TrainingRecordError(msg) from exc
    if not isinstance(data, dict):
        msg = f"training record: expected an object, got {type(data).__name__}"
        raise TrainingRecordError(msg)
    kind = data.get("kind")
    try:
        if kind == "watermark":
            return Watermark(int(data["partition"]), _aware(data["watermark"], "watermark"))
        if kind == "example":
            return Example(
                customer_id=str(data["customer_id"]),
                taken_at=_aware(data["taken_at"], "taken_at"),
                resolved_at=_aware(data["resolved_at"], "resolved_at"),
                x=_features(data["x"]),
                churned=bool(data["churned"]),
            )
    except TrainingRecordError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        msg = f"training record of kind {kind!r}: {exc!r}"
        raise TrainingRecordError(msg) from exc
    msg = f"training record: kind must be 'example' or 'watermark', got {kind!r}"
    raise TrainingRecordError(msg)


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed Kafka record, as the agents hand it to the workers."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp: float | None = None
    """The record's Kafka timestamp in seconds, when it has one."""
    token: object = None
    """What the agent needs to acknowledge the record (the faust event)."""
    source: tuple[str, int, int] | None = None
    """For a record of churn.events: the ingest record it was forwarded from (topic,
    partition, offset), from its `SOURCE_HEADER`; None when it has none."""


SOURCE_HEADER = "churnwatch-source"
"""The header of a record of churn.events that names the ingest record it was forwarded from
(`topic:partition:offset`): a scorer recognises a record forwarded again (after an ingest crash
or an offset reset) by it, however far behind the watermark its event is."""


def source_header(topic: str, partition: int, offset: int) -> tuple[str, bytes]:
    return SOURCE_HEADER, f"{topic}:{partition}:{offset}".encode()


def parse_source(value: bytes) -> tuple[str, int, int] | None:
    """The (topic, partition, offset) of a `SOURCE_HEADER` value; None when it is not one."""
    try:
        topic, partition, offset = value.decode().rsplit(":", 2)
        return topic, int(partition), int(offset)
    except ValueError:  # UnicodeDecodeError is a ValueError
        return None


class Sink(Protocol):
    """Where records are produced: `send` queues one and returns its delivery to await."""

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        *,
        partition: int | None,
        headers: Sequence[tuple[str, bytes]] = (),
        timestamp: float | None = None,
    ) -> Awaitable[object]: ...


Ack = Callable[[Sequence[Record]], Awaitable[None]]
"""Acknowledges records: their offsets may then be committed."""
