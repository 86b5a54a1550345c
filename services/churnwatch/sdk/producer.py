"""
The producer SDK: validate an event, route it to its ingest topic, key it by customer.

```python
with EventProducer(KafkaSettings()) as producer:
    producer.send({"event_id": "e1", "type": "login", "customer_id": "c42", "ts": "..."})
```

An event that fails the contract raises `BadEventError` and is not sent, so producers learn of
their mistakes at the source; the ingest workers still validate everything, since any Kafka
client may publish. Records are keyed by the UTF-8 `customer_id`, so Kafka's default
partitioner puts them on `churnwatch.core.partitioning.partition_of(customer_id, P)`.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import kafka.errors
from kafka import KafkaProducer

from churnwatch.core.errors import BadEventError, ChurnwatchError
from churnwatch.core.events import (
    DEFAULT_MAX_EVENT_BYTES,
    Event,
    event_from_dict,
    event_to_json,
    parse_event,
)
from churnwatch.metrics import Metrics
from churnwatch.sdk.broker import BrokerUnavailableError, grants_producer_id
from churnwatch.sdk.settings import KafkaSettings

log = logging.getLogger(__name__)

Progress = Callable[[int], None]
"""Called with the number of records read so far (sent, rejected or skipped)."""

PROGRESS_EVERY: Final = 1_000
MAX_EXAMPLES: Final = 10
_READ_BYTES: Final = 1 << 20


class PublishError(ChurnwatchError):
    """The producer could not hand a record to the broker (not the event's fault)."""


def _producer_kwargs(settings: KafkaSettings) -> dict[str, Any]:
    return {
        **settings.kafka_kwargs(),
        "acks": "all",
        "linger_ms": settings.linger_ms,
        "batch_size": settings.batch_size,
        "max_block_ms": settings.max_block_ms,
        "delivery_timeout_ms": settings.delivery_timeout_ms,
        # Auto-created topics get the broker's default partition count, which breaks the
        # co-partitioning every churnwatch topic relies on: `churnwatch topics create` first.
        "allow_auto_create_topics": False,
    }


def raw_producer(settings: KafkaSettings) -> Any:
    """
    A plain kafka-python KafkaProducer (acks=all, no validation), for tests and tools that must
    publish bytes the SDK would refuse, such as malformed records for the dead-letter path.
    The caller closes it.
    """
    try:
        return KafkaProducer(**_producer_kwargs(settings))
    except kafka.errors.KafkaError as exc:
        msg = f"no Kafka broker answered at {settings.bootstrap}: {exc!r}"
        raise BrokerUnavailableError(msg) from exc


class EventProducer:
    """
    Validates events and publishes them to their ingest topic, keyed by `customer_id`.

    Connects in `start()` (or on entering the `with` block), not in `__init__`. Delivery is
    acks=all with retries; the producer is idempotent when the broker grants producer ids
    (`settings.idempotence="auto"`), and otherwise keeps one request in flight per broker so
    retries cannot reorder a partition.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.topics = settings.topics()
        self.max_event_bytes = max_event_bytes
        self.metrics = metrics
        self.idempotent = False
        self._producer: Any = None

    def start(self) -> None:
        """
        Connects to the broker. Calling it again does nothing.

        Raises:
            BrokerUnavailableError: no broker answered.
        """
        if self._producer is not None:
            return
        self.idempotent = self._choose_idempotence()
        kwargs = _producer_kwargs(self.settings)
        kwargs["enable_idempotence"] = self.idempotent
        if not self.idempotent:
            # Without sequence numbers a retried batch could overtake the next one.
            kwargs["max_in_flight_requests_per_connection"] = 1
        try:
            self._producer = KafkaProducer(**kwargs)
        except kafka.errors.KafkaError as exc:
            msg = f"no Kafka broker answered at {self.settings.bootstrap}: {exc!r}"
            raise BrokerUnavailableError(msg) from exc
        log.info(
            "producer.started", extra={**self.settings.describe(), "idempotent": self.idempotent}
        )

    def _choose_idempotence(self) -> bool:
        mode = self.settings.idempotence
        if mode != "auto":
            return mode == "on"
        granted, why = grants_producer_id(self.settings)
        if not granted:
            log.warning(
                "producer.idempotence_unavailable",
                extra={
                    "bootstrap": self.settings.bootstrap,
                    "why": why,
                    "fallback": "acks=all, retries, one request in flight per broker",
                },
            )
        return granted

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def prepare(self, event: Event | dict[str, Any] | bytes) -> tuple[Event, bytes]:
        """
        Validates an event and returns it with the bytes to publish: the original bytes when
        bytes were given, else the event's canonical JSON.

        Raises:
            BadEventError: the event breaks the contract (with its reason code).
        """
        try:
            if isinstance(event, bytes | bytearray | memoryview):
                raw = bytes(event)
                return parse_event(raw, max_bytes=self.max_event_bytes), raw
            parsed = event_from_dict(event) if isinstance(event, dict) else event
            value = event_to_json(parsed)
            if len(value) > self.max_event_bytes:
                msg = (
                    f"payload is {len(value)} bytes, more than the limit of {self.max_event_bytes}"
                )
                raise BadEventError(msg, reason="oversize")
            return parsed, value
        except BadEventError as exc:
            if self.metrics is not None:
                self.metrics.rejected.labels(exc.reason).inc()
            raise

    def send(self, event: Event | dict[str, Any] | bytes) -> Any:
        """
        Validates `event` and sends it to its ingest topic, keyed by its customer_id.

        Returns:
            kafka-python's FutureRecordMetadata: `.get(timeout)` gives the topic, partition and
            offset, or raises the delivery error.

        Raises:
            BadEventError: the event breaks the contract; nothing was sent.
            BrokerUnavailableError: the topic's metadata did not arrive within max_block_ms
                (the broker is down, or the topic does not exist).
            PublishError: kafka-python refused the record.
        """
        producer = self._require_started()
        parsed, value = self.prepare(event)
        topic = self.topics.for_event(parsed.type)
        try:
            future = producer.send(topic, key=parsed.customer_id.encode(), value=value)
        except kafka.errors.KafkaTimeoutError as exc:
            msg = (
                f"topic {topic!r} did not become available within {self.settings.max_block_ms} ms "
                f"at {self.settings.bootstrap}: is the broker up, and were the topics created "
                "(`churnwatch topics create`)?"
            )
            raise BrokerUnavailableError(msg) from exc
        except kafka.errors.KafkaError as exc:
            msg = f"sending event {parsed.event_id!r} to {topic!r} failed: {exc!r}"
            raise PublishError(msg) from exc
        if self.metrics is not None:
            future.add_callback(_count, self.metrics.published.labels(topic))
        return future

    def flush(self, timeout: float | None = None) -> None:
        """
        Blocks until every record sent so far is delivered or has failed.
        """
        if self._producer is not None:
            try:
                self._producer.flush(timeout=timeout)
            except kafka.errors.KafkaTimeoutError as exc:
                msg = f"records still undelivered after {timeout} s: {exc}"
                raise BrokerUnavailableError(msg) from exc

    def close(self, timeout: float | None = None) -> None:
        """
        Flushes, then disconnects. Calling it again does nothing.
        """
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.flush(timeout=timeout)
            finally:
                producer.close(timeout=timeout)
            log.info("producer.closed", extra={"bootstrap": self.settings.bootstrap})

    def _require_started(self) -> Any:
        if self._producer is None:
            msg = "EventProducer.send() needs a started producer: call start() or use `with`"
            raise ChurnwatchError(msg)
        return self._producer


def _count(child: Any, _metadata: object) -> None:
    # kafka-python passes add_callback's extra arguments first, then the result.
    child.inc()


@dataclass(frozen=True, slots=True)
class Rejection:
    """
    One record that was not published, and why.
    """

    line: int
    """1-based position in the file (or in the records given)."""
    reason: str
    """A reason code (churnwatch.core.errors.ReasonCode) or, for delivery, the error name."""
    message: str


@dataclass(frozen=True, slots=True)
class PublishSummary:
    """
    What a publish run did: sent + rejected + failed records, plus the first examples.
    """

    sent: int
    rejected: Counter[str]
    """Records refused by validation, by reason code; they were not sent."""
    first_rejections: tuple[Rejection, ...]
    failed: Counter[str] = field(default_factory=Counter)
    """Records sent but not delivered (the broker or the network failed), by error name."""
    first_failures: tuple[Rejection, ...] = ()
    stopped: str | None = None
    """Why the run stopped before the end of the input, if it did (the broker went away)."""

    @property
    def total_rejected(self) -> int:
        return sum(self.rejected.values())

    @property
    def total_failed(self) -> int:
        return sum(self.failed.values())


class _Deliveries:
    """
    Delivery results, counted from kafka-python's I/O thread (and from the caller's thread when
    a future is already done), hence the lock.
    """

    def __init__(self, max_examples: int) -> None:
        self._lock = threading.Lock()
        self.sent = 0
        self.failed: Counter[str] = Counter()
        self.first_failures: list[Rejection] = []
        self._max_examples = max_examples

    def ok(self, _metadata: object) -> None:
        with self._lock:
            self.sent += 1

    def error(self, line: int, exc: BaseException) -> None:
        name = type(exc).__name__
        with self._lock:
            self.failed[name] += 1
            if len(self.first_failures) < self._max_examples:
                self.first_failures.append(Rejection(line, name, str(exc) or name))


def publish_records(
    records: Iterable[bytes],
    producer: EventProducer,
    progress: Progress | None = None,
    *,
    max_examples: int = MAX_EXAMPLES,
) -> PublishSummary:
    """
    Validates and sends every record; a bad record is counted and skipped, never fatal.

    Empty (or whitespace-only) records are skipped without counting. The producer must be
    started; this flushes it before returning, so `sent` counts acknowledged records.

    Args:
        records: JSON event payloads, e.g. the lines of a JSONL file without their newline.
        producer: a started EventProducer.
        progress: called with the number of records read so far, every PROGRESS_EVERY records
            and at the end.
        max_examples: how many rejections (and delivery failures) to keep as examples.

    Returns:
        The counts; `stopped` says why the run ended early, if the broker became unavailable.
    """
    deliveries = _Deliveries(max_examples)
    rejected: Counter[str] = Counter()
    first_rejections: list[Rejection] = []
    stopped: str | None = None
    done = 0
    for line, raw in enumerate(records, 1):
        done = line
        if progress is not None and line % PROGRESS_EVERY == 0:
            progress(line)
        if not raw.strip():
            continue
        try:
            future = producer.send(raw)
        except BadEventError as exc:
            rejected[exc.reason] += 1
            if len(first_rejections) < max_examples:
                first_rejections.append(Rejection(line, exc.reason, exc.message))
            continue
        except (BrokerUnavailableError, PublishError) as exc:
            stopped = f"record {line}: {exc}"
            log.error("publish.stopped", extra={"line": line, "error": str(exc)})
            break
        future.add_callback(deliveries.ok)
        future.add_errback(deliveries.error, line)
    try:
        producer.flush()
    except BrokerUnavailableError as exc:
        stopped = stopped or str(exc)
    if progress is not None:
        progress(done)
    with deliveries._lock:
        return PublishSummary(
            sent=deliveries.sent,
            rejected=rejected,
            first_rejections=tuple(first_rejections),
            failed=Counter(deliveries.failed),
            first_failures=tuple(deliveries.first_failures),
            stopped=stopped,
        )


def read_lines(path: Path) -> Iterator[bytes]:
    """
    The lines of a file as bytes, without their line ending (`\\n` or `\\r\\n`).

    Reads a megabyte at a time: every read releases the GIL, and getting it back from
    kafka-python's busy I/O thread can take a whole switch interval, so line-sized reads made
    publishing twice as slow.
    """
    rest = b""
    with path.open("rb") as handle:
        while chunk := handle.read(_READ_BYTES):
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for line in lines:
                yield line.removesuffix(b"\r")
    if rest:
        yield rest.removesuffix(b"\r")


def count_lines(path: Path) -> int:
    """
    The number of lines in a file (a last line without a newline counts), for a progress bar.
    """
    lines = 0
    last = b"\n"
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (last != b"\n")


def publish_file(
    path: Path,
    producer: EventProducer,
    progress: Progress | None = None,
    *,
    max_examples: int = MAX_EXAMPLES,
) -> PublishSummary:
    """
    Publishes a JSONL file of events, one per line; see `publish_records`. Rejections carry
    the file's line numbers (empty lines count as lines, and are skipped).
    """
    return publish_records(read_lines(path), producer, progress, max_examples=max_examples)
