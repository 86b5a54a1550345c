"""
The ingest worker: validates the records of the ingest topics and forwards the valid ones,
byte for byte and with the same key, to churn.events; invalid ones go to the dead-letter topic.

A customer's events arrive on several ingest topics (one per type), and faust delivers the
topics' records in no particular order relative to each other. Forwarding them as they come
would reorder a customer's events by up to the whole backlog of one topic (and the scorer
would reject them as too late). So the ingest worker merges, like Kafka Streams' timestamp
synchronisation: per partition number, it buffers each ingest topic's valid records and
forwards the one with the smallest event time while every topic of that partition either has
a record buffered or has provably nothing more to deliver before it: a fetch of the topic's
partition made after that record was received found nothing past what was delivered (the fetch
response's high watermark, not one reported elsewhere or read earlier: a topic whose last fetch
predates the record may have had records appended since, and forwarding past them would reorder
a stream published in bulk by hours). The consumer fetches small chunks per partition
(`consumer_max_fetch_bytes`), so a backlog arrives interleaved across the topics and the merge
buffers little.

A topic waited for that delivers nothing for `ingest_idle_seconds` (a slow fetch, a paused
partition, a worker short of CPU in a backlog) is stalled (logged): the others' events are
forwarded up to the stalled topic's last event time plus the allowed lateness, and no further,
so that its next events still fit the scorer's watermark. After `ingest_stall_seconds` without
a delivery it is given up on (logged as an error) and the others go on without a bound: a
stalled topic delays, never stops, the others.

Records are acknowledged (their offsets may be committed) only after their forward or dead
letter is delivered. After a crash the uncommitted records are forwarded again; the scorer
skips them by `event_id` (or, past the lateness, dead-letters them `too_late`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from churnwatch.core.errors import BadEventError
from churnwatch.core.events import Event, parse_event
from churnwatch.core.partitioning import partition_of
from churnwatch.metrics import Metrics
from churnwatch.sdk.settings import TopicNames
from churnwatch.stream.records import Ack, Record, Sink, dead_letter, source_header
from churnwatch.stream.settings import WorkerSettings

log = logging.getLogger(__name__)

TP = tuple[str, int]
Stall = Literal["bounded", "unbounded", "gave_up"]
"""A stalled source `bounded` the others (at its last event time plus the lateness), was
`gave_up` on (silent for `ingest_stall_seconds`), or left them `unbounded` (its high watermark
is unknown: it may have nothing to deliver)."""


@dataclass(slots=True)
class _Source:
    """One assigned ingest topic partition."""

    rank: int
    """Ties in event time go to the topic listed first in the settings."""
    delivered_at: float
    """When the source last delivered a record (or was assigned)."""
    pending: deque[tuple[Event, Record, float]] = field(default_factory=deque)
    """Valid records not forwarded yet, with the wall time they were received."""
    waited_since: float | None = None
    """Since when the merge waits for a fetch of this source that confirms it has nothing
    more (None while it does not)."""
    next_offset: int | None = None
    """One past the last offset received since the assignment."""
    gap_since: float | None = None
    """When records after a gap started arriving (we sought back to `next_offset`)."""
    sought_at: float = 0.0
    """When we last sought back to `next_offset` (again every second while the gap lasts)."""
    last_ts: datetime | None = None
    """The event time of the last valid record received (since the assignment)."""
    stall: Stall | None = None
    """How the merge treats this source while it stalls (logged and counted once per stall);
    None once it delivers again."""


class Ingestor:
    """
    Validation, dead-lettering and the time-ordered merge of the ingest topics.

    `handle` takes a batch of records from the faust agent; `tick` (a timer) forwards what
    became ready without new records. Both acknowledge what they finished through `ack`.
    """

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        sink: Sink,
        metrics: Metrics,
        topics: TopicNames,
        assigned: Callable[[], set[TP]],
        highwater: Callable[[str, int], int | None],
        start_offset: Callable[[str, int], int | None] = lambda _t, _p: None,
        commit: Callable[[], Awaitable[object]] | None = None,
        seek: Callable[[str, int, int], Awaitable[None]] | None = None,
        fetched_at: Callable[[str, int], float | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """
        Args:
            assigned: the topic partitions assigned now.
            highwater: a partition's high watermark from the consumer's last fetch response
                (None before the first).
            start_offset: where a partition's delivery starts (its committed offset).
            fetched_at: when (wall time, seconds) the consumer's last fetch response for a
                partition arrived, the one `highwater` is from; None before the first. Without
                it (tests of the order alone) a caught-up high watermark is trusted as fresh.
            clock: the monotonic clock of the idle and stall timeouts.
            wall: the wall clock `fetched_at` is compared with.
        """
        self.settings = settings
        self.sink = sink
        self.metrics = metrics
        self.topics = topics
        self._assigned = assigned
        self._highwater = highwater
        self._start_offset = start_offset
        self._commit = commit
        self._seek = seek
        self._fetched_at = fetched_at
        self._clock = clock
        self._wall = wall
        self._ranks = {name: i for i, name in enumerate(topics.ingest_topics())}
        self._sources: dict[TP, _Source] = {}
        self._by_topic: dict[str, tuple[Any, Any, Any]] = {}
        self.seeks: list[tuple[TP, int]] = []
        """Seeks back to request from the consumer (done by `handle` after a batch)."""
        self._lock = asyncio.Lock()
        self._max_future = timedelta(seconds=settings.max_future_seconds)
        self._lateness = timedelta(seconds=settings.lateness_seconds)
        self.top: datetime | None = None
        """
        The largest event time forwarded by this process; events past it (or past their
        record's Kafka timestamp, whichever is later, see `_future_bound`) plus `max_future`
        are rejected. It starts empty: the first record forwarded after a start sets it. A
        bound carried over from before would be behind the records still to forward after a
        crash, and would reject them all.
        """
        for name in self._ranks:
            metrics.prime_topic(name)
            for outcome in ("bounded", "gave_up"):
                # at 0 from the start, so that increase() sees a first stall
                metrics.ingest_stalls.labels(name, outcome)

    def _counters(self, topic: str) -> tuple[Any, Any, Any]:
        """A topic's consumed, duplicates and processed counters (their children looked up
        once: a labels() call per record costs more than the increment)."""
        found = self._by_topic.get(topic)
        if found is None:
            m = self.metrics
            found = self._by_topic[topic] = (
                m.records_consumed.labels(topic),
                m.records_duplicates.labels(topic),
                m.records_processed.labels(topic),
            )
        return found

    async def handle(self, records: Sequence[Record], ack: Ack) -> None:
        """Take a batch of ingest records; forward what is ready."""
        async with self._lock:
            self._sync_assignment()
            dead: list[tuple[Record, BadEventError]] = []
            received = self._wall()
            for record in records:
                self._add(record, received, dead)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "ingest.batch",
                    extra={
                        "records": len(records),
                        "pending": {
                            f"{tp[0].rsplit('.', 1)[-1]}:{tp[1]}": len(s.pending)
                            for tp, s in sorted(self._sources.items())
                        },
                    },
                )
            if dead:
                await self._dead_letter(dead, ack)
            await self._forward_ready(ack)
            seeks, self.seeks = self.seeks, []
            for (topic, partition), offset in seeks:
                if self._seek is not None:
                    await self._seek(topic, partition, offset)

    async def tick(self, ack: Ack) -> None:
        """Forward what became ready while no record arrived."""
        async with self._lock:
            self._sync_assignment()
            await self._forward_ready(ack)

    def _sync_assignment(self) -> None:
        assigned = {tp for tp in self._assigned() if tp[0] in self._ranks}
        now = self._clock()
        for tp in list(self._sources):
            if tp not in assigned:
                # Revoked: its buffered records belong to the new owner now (never acked here).
                del self._sources[tp]
        for tp in assigned:
            if tp not in self._sources:
                self._sources[tp] = _Source(self._ranks[tp[0]], delivered_at=now)

    def _add(
        self, record: Record, received: float, dead: list[tuple[Record, BadEventError]]
    ) -> None:
        tp = (record.topic, record.partition)
        source = self._sources.get(tp)
        if source is None:
            return  # not ours (any more): never acknowledged here
        if source.next_offset is not None and record.offset < source.next_offset:
            # Delivered again after a rebalance: already buffered or forwarded.
            self._counters(record.topic)[0].inc()
            self._counters(record.topic)[1].inc()
            return
        if self._skipped(tp, source, record):
            return  # counted when it is delivered again
        self._counters(record.topic)[0].inc()
        source.next_offset = record.offset + 1
        source.delivered_at = self._clock()
        source.stall = None
        try:
            # The time bound is checked when the record's turn comes in the merge (`_ready`):
            # a backlog arrives far ahead of the largest event time forwarded so far.
            event = parse_event(record.value, max_bytes=self.settings.max_event_bytes)
        except BadEventError as error:
            dead.append((record, error))
            return
        source.pending.append((event, record, received))
        source.last_ts = event.ts

    def _skipped(self, tp: TP, source: _Source, record: Record) -> bool:
        """
        Whether records before this one were never delivered (a gap in the offsets, which
        faust can cause around a rebalance): then seek back to the first missing one and drop
        this one, unacknowledged, until the missing ones arrive. Forwarding it would let the
        commit pass over them. A gap that persists (records gone from the log) is accepted
        after `ingest_idle_seconds` plus ten seconds.
        """
        expected = source.next_offset
        if expected is None:
            expected = self._start_offset(*tp)
        if expected is None or record.offset <= expected:
            source.gap_since = None
            return False
        now = self._clock()
        context = {
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "expected_offset": expected,
        }
        if source.gap_since is None:
            source.gap_since = now
            log.info("ingest.gap", extra=context)
        if now - source.gap_since >= self.settings.ingest_idle_seconds + 10.0:
            log.error("ingest.gap_accepted", extra=context)
            source.gap_since = None
            return False
        if now - source.sought_at >= 1.0:
            source.sought_at = now
            self.seeks.append((tp, expected))
        return True

    async def _dead_letter(self, dead: list[tuple[Record, BadEventError]], ack: Ack) -> None:
        deliveries = []
        for record, error in dead:
            value = dead_letter(
                reason=error.reason,
                message=error.message,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                original=record.value,
                stage="ingest",
                max_original_bytes=self.settings.deadletter_max_original_bytes,
            )
            deliveries.append(
                await self.sink.send(
                    self.topics.deadletter,
                    record.key,
                    value,
                    partition=record.partition,
                    headers=(("reason", error.reason.encode()),),
                )
            )
            self.metrics.records_dead_lettered.labels(record.topic, error.reason).inc()
            log.warning(
                "event.dead_lettered",
                extra={
                    "topic": record.topic,
                    "partition": record.partition,
                    "offset": record.offset,
                    "reason": error.reason,
                    "stage": "ingest",
                    "detail": error.message,
                },
            )
        await asyncio.gather(*deliveries)
        await ack([record for record, _ in dead])

    def _check(
        self, tp: TP, source: _Source, received: float
    ) -> Literal["clear", "behind", "unconfirmed"]:
        """
        Whether the source (with nothing buffered) provably has nothing to deliver before a
        record received at `received`: `clear` when its position has reached the high
        watermark of a fetch response that arrived after that record; `behind` when it has not
        reached the last high watermark (or none is known yet); `unconfirmed` when it has, but
        the fetch predates the record: records may have been appended since (a fetch round is
        hours of event time when a history is published in bulk).
        """
        highwater = self._highwater(*tp)
        if highwater is None:
            return "behind"
        position = source.next_offset
        if position is None:
            # Nothing delivered since the assignment: it starts at its committed offset.
            position = self._start_offset(*tp)
            if position is None and highwater != 0:
                return "behind"
        if position is not None and position < highwater:
            return "behind"
        if self._fetched_at is None:
            return "clear"
        fetched = self._fetched_at(*tp)
        return "clear" if fetched is not None and fetched > received else "unconfirmed"

    def _ready(self, dead: list[tuple[Record, BadEventError]]) -> list[tuple[Event, Record]]:
        """
        Pop, per partition number, every record that may be forwarded now, in order; those
        later than the largest event time forwarded plus `max_future` go to `dead`.
        """
        now = self._clock()
        idle = self.settings.ingest_idle_seconds
        give_up = self.settings.ingest_stall_seconds
        groups: dict[int, list[tuple[TP, _Source]]] = {}
        for tp, source in self._sources.items():
            groups.setdefault(tp[1], []).append((tp, source))
        out: list[tuple[Event, Record]] = []
        for members in groups.values():
            while True:
                heads = [s for _, s in members if s.pending]
                if not heads:
                    break
                first = min(heads, key=lambda s: (s.pending[0][0].ts, s.rank))
                event, record, received = first.pending[0]
                waiting: dict[TP, _Source] = {}
                for tp, source in members:
                    check = "clear" if source.pending else self._check(tp, source, received)
                    if check != "clear":
                        waiting[tp] = source
                    if check != "unconfirmed":
                        source.waited_since = None
                    elif source.waited_since is None:
                        source.waited_since = now
                if waiting:
                    # Wait for them, unless none has delivered anything for a while.
                    if any(now - self._silent_since(s) < idle for s in waiting.values()):
                        break
                    until = self._stall_bound(record.partition, waiting, now, give_up)
                    if until is not None and event.ts > until:
                        break  # the stalled topics' next events would be too late after it
                first.pending.popleft()
                bound = self._future_bound(record)
                if bound is not None and event.ts > bound:
                    dead.append((record, self._future(event, bound)))
                else:
                    if self.top is None or event.ts > self.top:
                        self.top = event.ts
                    out.append((event, record))
        return out

    @staticmethod
    def _silent_since(source: _Source) -> float:
        """
        Since when a source waited for has been silent: its last delivery, or, while it only
        waits for a fresh fetch, the start of that wait if later (a quiet topic is not stalled
        by being quiet).
        """
        since = source.waited_since
        return source.delivered_at if since is None else max(source.delivered_at, since)

    def _stall_bound(
        self, partition: int, waiting: dict[TP, _Source], now: float, give_up: float
    ) -> datetime | None:
        """
        The latest event time the merge may forward while the `waiting` topics (none of which
        delivered anything for `ingest_idle_seconds`) stall: the earliest of their last event
        times plus the allowed lateness. A topic counts only while it is known to have records
        behind its high watermark (one whose high watermark is unknown may have nothing at
        all) and until it has been silent for `ingest_stall_seconds` (then it is given up on,
        each topic on its own). None (no bound) when no topic counts; `datetime.min` (nothing
        is forwarded) while one that counts has delivered nothing since its assignment.
        """
        outcomes: dict[TP, Stall] = {}
        lasts: list[datetime | None] = []
        for tp, source in waiting.items():
            if self._highwater(*tp) is None:
                outcomes[tp] = "unbounded"
            elif now - self._silent_since(source) >= give_up:
                outcomes[tp] = "gave_up"
            else:
                outcomes[tp] = "bounded"
                lasts.append(source.last_ts)
        bound: datetime | None = None
        if lasts:
            bound = datetime.min.replace(tzinfo=UTC)
            if all(last is not None for last in lasts):
                bound = min(last for last in lasts if last is not None) + self._lateness
        for tp, outcome in outcomes.items():
            source = waiting[tp]
            if source.stall == outcome:
                continue  # logged and counted when it began
            source.stall = outcome
            context = {
                "topic": tp[0],
                "partition": partition,
                "silent_seconds": round(now - self._silent_since(source), 1),
                "forwarding_until": None if bound is None else bound.isoformat(),
            }
            if outcome != "unbounded":
                self.metrics.ingest_stalls.labels(tp[0], outcome).inc()
            if outcome == "gave_up":
                log.error("ingest.merge_gave_up", extra=context)
            else:
                log.warning("ingest.merge_stalled", extra=context)
        return bound

    def _future_bound(self, record: Record) -> datetime | None:
        """
        The latest event time accepted now: `max_future` past the largest event time forwarded
        by this process or past the record's own Kafka timestamp (when it was produced),
        whichever is later. The record's timestamp matters after a restart: the partitions'
        merges resume at different event times, and the first one forwarded must not reject
        the others' records (a history published in bulk carries its publishing time).
        """
        ref = self.top
        if record.timestamp is not None:
            produced = datetime.fromtimestamp(record.timestamp, UTC)
            ref = produced if ref is None or produced > ref else ref
        return None if ref is None else ref + self._max_future

    def _future(self, event: Event, bound: datetime) -> BadEventError:
        msg = f"ts: {event.ts.isoformat()} is later than the allowed {bound.isoformat()}"
        return BadEventError(msg, reason="future_timestamp", field="ts")

    async def _forward_ready(self, ack: Ack) -> None:
        dead: list[tuple[Record, BadEventError]] = []
        ready = self._ready(dead)
        if dead:
            await self._dead_letter(dead, ack)
        if not ready:
            return
        partitions = self.settings.partitions_count
        deliveries = []
        for event, record in ready:
            key = record.key if record.key is not None else event.customer_id.encode()
            deliveries.append(
                await self.sink.send(
                    self.topics.events,
                    key,
                    record.value,
                    partition=partition_of(event.customer_id, partitions),
                    headers=(source_header(record.topic, record.partition, record.offset),),
                    timestamp=record.timestamp,
                )
            )
        await asyncio.gather(*deliveries)
        for _event, record in ready:
            self._counters(record.topic)[2].inc()
        await ack([record for _event, record in ready])
        if self._commit is not None:
            # Commit now rather than at faust's next interval: after a crash every record
            # forwarded but not committed is forwarded again (and dead-lettered `too_late` by
            # the scorer once it is behind the watermark).
            await self._commit()
