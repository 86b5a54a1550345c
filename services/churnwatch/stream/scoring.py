"""
The scoring worker: batches of churn.events, one partition at a time, through the core.

For each batch (the streaming protocol, /tmp/cw-stream-protocol.md):

1. The batch's records are decoded; records at or below the partition's `last_offset` were
   handled before a crash or rebalance and are skipped as duplicates.
2. The states of the batch's customers, and of the customers the sweep may reach, are read
   with one pipeline.
3. Each event goes through `process_event` exactly as `Replay.feed` does (an offset at or below
   the customer's applied offset is a duplicate; an event older than the partition's watermark
   is dead-lettered `too_late`), and after each event the partition is swept up to its new
   watermark, in (due, customer) order.
4. One `write_batch`: outbox (alerts, examples, dead letters) first, then the states with
   their applied offsets, the due and risk sets and the partition meta; WAITAOF when
   available.
5. The outbox records are produced and every delivery awaited; then the watermark record.
6. The outbox entries are removed.
7. Only then are the records acknowledged, so faust commits no offset before this point.

Models: scoring at time t uses the learner's checkpoint `scoring_epoch(t)`, capped by what the
learner can have released given this partition's own watermark before the event (the learner
closes an epoch only when every partition's watermark has passed it). When that checkpoint is
not in Redis yet, the batch so far is written and published (so the learner sees this
partition's watermark), and the worker waits up to `model_wait_seconds` before it falls back
to the newest earlier checkpoint (counted). `Replay` makes the same choice, so the states and
alerts equal the replay's.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from churnwatch.core.alerts import AlertRecord, alert_to_json
from churnwatch.core.engine import (
    ModelView,
    Policy,
    StepResult,
    check_reuse,
    check_time,
    next_due_at,
    process_event,
    sweep_one,
)
from churnwatch.core.errors import BadEventError
from churnwatch.core.events import Event, parse_event
from churnwatch.core.labels import Example
from churnwatch.core.learning import epoch_of, scoring_epoch
from churnwatch.core.model import Scorer
from churnwatch.core.state import CustomerState
from churnwatch.metrics import Metrics
from churnwatch.sdk.settings import TopicNames
from churnwatch.store import (
    BatchWrite,
    CorruptState,
    HistoryPoint,
    OutboxEntry,
    PartitionMeta,
    RedisStore,
    StoredAlert,
)
from churnwatch.stream.records import (
    Ack,
    Record,
    Sink,
    dead_letter,
    example_to_json,
    watermark_to_json,
)
from churnwatch.stream.settings import WorkerSettings

log = logging.getLogger(__name__)

_DUE_LIMIT: Final = 1_000_000
_RESOLVED_KEPT: Final = 64


class NeedModel(Exception):
    """Raised by `model_for` when the checkpoint for an epoch has not been looked up yet."""

    def __init__(self, epoch: int) -> None:
        super().__init__(epoch)
        self.epoch = epoch


class Checkpoints:
    """
    The scorer's view of the learner's model checkpoints in Redis.

    `resolve(k)` decides which model stands for epoch k (the checkpoint of k, else the newest
    earlier one, else the initial model); `model_for` then answers synchronously, as the core
    needs, and raises `NeedModel` for an epoch not resolved yet.
    """

    def __init__(
        self, store: RedisStore, settings: WorkerSettings, metrics: Metrics, policy: Policy
    ) -> None:
        self._store = store
        self._length = settings.model_epoch
        self._metrics = metrics
        # the policy's model config: the engine's, with the rules file's `model` section
        self.initial = Scorer(policy.config.model)
        self.latest: int | None = None
        self._by_epoch: dict[int, Scorer] = {}
        self._resolved: dict[int, ModelView] = {}
        self._in_use: str | None = None

    def model_for(self, at: datetime, cap: int | None) -> ModelView:
        """The model to score at `at`, given that no checkpoint after `cap` can exist yet."""
        if cap is None:
            return self.initial
        epoch = min(scoring_epoch(at, self._length), cap)
        model = self._resolved.get(epoch)
        if model is None:
            raise NeedModel(epoch)
        return model

    def final(self, epoch: int) -> bool:
        """Whether the learner is past `epoch` (its checkpoint exists or never will)."""
        return self.latest is not None and self.latest >= epoch

    async def refresh(self) -> None:
        """Read the newest checkpoint's epoch from Redis."""
        found = await self._store.latest_checkpoint()
        if found is not None:
            epoch, data = found
            if epoch not in self._by_epoch:
                self._by_epoch[epoch] = Scorer.from_bytes(data)
            if self.latest is None or epoch > self.latest:
                self.latest = epoch

    async def resolve(self, epoch: int, *, fallback: bool = False) -> None:
        """Fix the model that stands for `epoch`: its checkpoint or the newest earlier one."""
        found = await self._store.latest_checkpoint(at_most=epoch)
        model: Scorer = self.initial
        if found is not None:
            got, data = found
            cached = self._by_epoch.get(got)
            if cached is None:
                cached = self._by_epoch[got] = Scorer.from_bytes(data)
            model = cached
        self._resolved[epoch] = model
        for old in sorted(self._resolved)[:-_RESOLVED_KEPT]:
            del self._resolved[old]
        for old in sorted(self._by_epoch)[:-_RESOLVED_KEPT]:
            del self._by_epoch[old]
        if fallback:
            self._metrics.model_fallback.inc()
            log.warning(
                "model.fallback",
                extra={"wanted_epoch": epoch, "latest_epoch": self.latest, "using": model.version},
            )
        if model.version != self._in_use:
            self._in_use = model.version
            self._metrics.set_model_version(model.version)
            self._metrics.model_labels.set(model.n_labels)
            log.info("model.switched", extra={"epoch": epoch, "version": model.version})


@dataclass(slots=True)
class _Partition:
    """What a worker process keeps per partition between batches."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    recovered_in: int = -1
    """The assignment (counter) in which the outbox was re-produced."""
    published: datetime | None = None
    published_at: float = 0.0
    """The last watermark record sent, and when (monotonic)."""
    gap_seek: tuple[int, float] | None = None
    """The offset we sought back to after a gap in the records, and when (monotonic)."""
    cache: OrderedDict[str, tuple[CustomerState, int | None]] = field(default_factory=OrderedDict)
    """Customer states as Redis holds them, with their applied offset on this partition:
    read from Redis, or written by a batch that succeeded (least recently used first)."""


@dataclass(slots=True)
class _Run:
    """One batch of one partition in progress (possibly flushed in several chunks)."""

    partition: int
    high_water: datetime | None
    swept_to: datetime | None
    """The sweep has handled everything due up to here (the watermark to publish)."""
    reported: datetime | None
    """The watermark after the last applied event: what `Replay` has told its curriculum."""
    last_offset: int | None
    states: dict[str, CustomerState] = field(default_factory=dict)
    applied: dict[str, int] = field(default_factory=dict)
    due: list[tuple[datetime, str]] = field(default_factory=list)
    due_of: dict[str, datetime | None] = field(default_factory=dict)
    """Each loaded or stepped customer's next due time (`next_due_at` of its state, as the
    step computed it: `StepResult.due_at`)."""
    # The chunk not yet written:
    dirty: dict[str, int | None] = field(default_factory=dict)
    outbox: list[OutboxEntry] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    alerts: list[tuple[AlertRecord, Record | None]] = field(default_factory=list)
    """Each alert with the record that caused it (None: the sweep)."""
    history: list[HistoryPoint] = field(default_factory=list)
    """The chunk's scorings, for the customers' score histories (the at-risk API)."""
    sources: dict[str, int] = field(default_factory=dict)
    """`PartitionMeta.sources` as of the records done so far."""
    ack: Ack | None = None
    cap: int | None = None
    """No checkpoint after this epoch can exist yet: the epoch of `reported`."""

    def report(self, watermark: datetime | None, length: timedelta) -> None:
        self.reported = watermark
        self.cap = None if watermark is None else epoch_of(watermark, length)


class ScoringWorker:
    """
    The scoring side of a worker process: batches, the sweep timer and outbox recovery.

    Adapters are given (store, sink, metrics) and connected by the caller; `handle_batch` is
    called by the faust agent with one partition's records.
    """

    def __init__(
        self,
        settings: WorkerSettings,
        policy: Policy,
        *,
        store: RedisStore,
        sink: Sink,
        metrics: Metrics,
        topics: TopicNames,
        highwater: Callable[[int], int | None] = lambda _p: None,
        seek: Callable[[int, int], Awaitable[None]] | None = None,
        reread: Callable[[int, int, int], Awaitable[list[Record]]] | None = None,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.segments = tuple(segment.name for segment in policy.rules.segments)
        self.store = store
        self.sink = sink
        self.metrics = metrics
        self.topics = topics
        self.checkpoints = Checkpoints(store, settings, metrics, policy)
        self._highwater = highwater
        self._seek = seek
        self._reread = reread
        self._parts: dict[int, _Partition] = {}
        self.assignments = 0
        """Counts partition assignments; a partition's outbox is recovered once per count."""
        self._lateness = policy.config.lateness
        self._epoch = policy.config.model_epoch
        self._dead_states: set[str] = set()
        """Entry ids of the unreadable states dead-lettered by this process."""
        metrics.prime_topic(topics.events)
        # The per-record counters' children, looked up once (a labels() call per record costs
        # more than the increment).
        self._consumed = metrics.records_consumed.labels(topics.events)
        self._processed = metrics.records_processed.labels(topics.events)
        self._duplicates = metrics.records_duplicates.labels(topics.events)

    def _part(self, partition: int) -> _Partition:
        part = self._parts.get(partition)
        if part is None:
            part = self._parts[partition] = _Partition()
        return part

    def after_store_outage(self, partition: int) -> None:
        """A batch of the partition failed on Redis and is tried again: what its attempt may
        have written to the outbox and not produced is produced first, and every state is read
        again (a write whose reply was lost may have been applied)."""
        part = self._part(partition)
        part.recovered_in = -1
        part.cache.clear()

    def on_assigned(self) -> None:
        """Partitions were (re)assigned: recover every partition's outbox before its next use,
        and read every state from Redis again (another worker may have written them since)."""
        self.assignments += 1
        for part in self._parts.values():
            part.cache.clear()

    def _remember(
        self, part: _Partition, customer_id: str, state: CustomerState, applied: int | None
    ) -> None:
        limit = self.settings.state_cache_customers
        if limit <= 0:
            return
        cache = part.cache
        cache[customer_id] = (state, applied)
        cache.move_to_end(customer_id)
        while len(cache) > limit:
            cache.popitem(last=False)

    # -- outbox -------------------------------------------------------------------------
    async def _ensure_recovered(self, partition: int, part: _Partition) -> None:
        if part.recovered_in == self.assignments:
            return
        entries = await self.store.outbox(partition)
        if entries:
            await self._produce(partition, entries)
            await self.store.clear_outbox(partition, [e.entry_id for e in entries])
            log.info(
                "outbox.recovered",
                extra={
                    "topic": self.topics.events,
                    "partition": partition,
                    "entries": len(entries),
                },
            )
        part.recovered_in = self.assignments

    async def _produce(self, partition: int, entries: Sequence[OutboxEntry]) -> None:
        deliveries = [
            await self.sink.send(e.topic, e.key, e.value, partition=partition, headers=e.headers)
            for e in entries
        ]
        await asyncio.gather(*deliveries)

    async def _publish_watermark(self, part: _Partition, partition: int, at: datetime) -> None:
        value = watermark_to_json(partition, at)
        delivery = await self.sink.send(self.topics.training, None, value, partition=partition)
        await delivery
        part.published = at
        part.published_at = time.monotonic()

    # -- the batch ----------------------------------------------------------------------
    def _run(self, partition: int, meta: PartitionMeta, ack: Ack | None) -> _Run:
        run = _Run(
            partition=partition,
            high_water=meta.high_water,
            swept_to=meta.watermark,
            reported=None,
            last_offset=meta.last_offset,
            sources=dict(meta.sources),
            ack=ack,
        )
        run.report(meta.watermark, self._epoch)
        return run

    async def handle_batch(self, partition: int, records: Sequence[Record], ack: Ack) -> None:
        """
        Apply one batch of one partition of churn.events (in offset order), then `ack` it.

        Raises:
            StoreUnavailableError: Redis failed; the caller waits and tries the batch again
                (after `after_store_outage`): nothing of it was acknowledged.
        """
        if not records:
            return
        part = self._part(partition)
        started = time.perf_counter()
        async with part.lock:
            await self._ensure_recovered(partition, part)
            meta = await self.store.load_partition(partition)
            records = await self._fill_gap(partition, meta, records)
            if await self._gap(partition, part, meta, records[0]):
                return
            records, rest = self._contiguous(meta, records)
            run = self._run(partition, meta, ack)
            parsed = self._decode(run, records)
            await self._load(run, parsed)
            for record, item in zip(records, parsed, strict=True):
                await self._apply(run, part, record, item)
            await self._flush(run, part)
            if rest:
                # Records went missing inside the batch: take them again from the log.
                await self._gap(
                    partition, part, PartitionMeta(last_offset=run.last_offset), rest[0]
                )
            highwater = self._highwater(partition)
            if highwater is not None:
                lag = max(0, highwater - (records[-1].offset + 1))
                self.metrics.consumer_lag.labels(self.topics.events, str(partition)).set(lag)
        self.metrics.batch_seconds.observe(time.perf_counter() - started)

    async def _fill_gap(
        self, partition: int, meta: PartitionMeta, records: Sequence[Record]
    ) -> Sequence[Record]:
        """
        The batch with the records before it that were never handled, read again from the log
        (`reread`), when it starts after a gap: Redis came back behind the offsets the
        consumer had moved past (a host crash lost its newest writes), or records went missing
        around a rebalance. The re-read records carry no acknowledgement token (their offsets
        are below the batch's, which acknowledges them all). When the log does not give the
        whole range, the batch is returned as it is and `_gap` handles it.
        """
        first = records[0]
        if self._reread is None or meta.last_offset is None:
            return records
        start = meta.last_offset + 1
        if first.offset <= start:
            return records
        found = await self._reread(partition, start, first.offset)
        if [r.offset for r in found] != list(range(start, first.offset)):
            return records
        log.warning(
            "batch.gap_reread",
            extra={
                "topic": first.topic,
                "partition": partition,
                "offset": first.offset,
                "expected_offset": start,
                "records": len(found),
            },
        )
        return [*found, *records]

    async def _gap(
        self, partition: int, part: _Partition, meta: PartitionMeta, first: Record
    ) -> bool:
        """
        Whether the batch starts after a gap (records after the last one handled, with some
        in between never handled): then seek back to the first missing offset and drop the
        batch, unacknowledged. Applying it would skip events for good: the missing ones would
        later count as handled (`last_offset`). A gap that persists (the records are gone
        from the log) is logged and accepted after `model_wait_seconds` plus ten seconds.
        """
        if meta.last_offset is None or first.offset <= meta.last_offset + 1:
            part.gap_seek = None
            return False
        target = meta.last_offset + 1
        now = time.monotonic()
        context = {
            "topic": first.topic,
            "partition": partition,
            "offset": first.offset,
            "expected_offset": target,
        }
        if part.gap_seek is None or part.gap_seek[0] != target:
            part.gap_seek = (target, now)
            log.warning("batch.gap", extra=context)
            if self._seek is not None:
                await self._seek(partition, target)
            return True
        if now - part.gap_seek[1] < self.settings.model_wait_seconds + 10.0:
            return True  # records delivered before the seek took effect
        log.error("batch.gap_accepted", extra=context)
        part.gap_seek = None
        return False

    @staticmethod
    def _contiguous(
        meta: PartitionMeta, records: Sequence[Record]
    ) -> tuple[Sequence[Record], Sequence[Record]]:
        """The batch up to the first gap in its offsets, and the rest (normally empty)."""
        expected = records[0].offset if meta.last_offset is None else meta.last_offset + 1
        for i, record in enumerate(records):
            if record.offset > expected:
                return records[:i], records[i:]
            expected = max(expected, record.offset + 1)
        return records, ()

    def _decode(self, run: _Run, records: Sequence[Record]) -> list[Event | BadEventError | None]:
        """Each record's event, its decoding error, or None when handled before."""
        out: list[Event | BadEventError | None] = []
        self._consumed.inc(len(records))
        for record in records:
            if run.last_offset is not None and record.offset <= run.last_offset:
                out.append(None)
                continue
            try:
                # Validated at ingest (with the time bound); here only the bytes are checked.
                out.append(parse_event(record.value, max_bytes=self.policy.config.max_event_bytes))
            except BadEventError as error:
                out.append(error)
        return out

    async def _load(self, run: _Run, parsed: list[Event | BadEventError | None]) -> None:
        events = [e for e in parsed if e is not None and not isinstance(e, BadEventError)]
        tops = [e.ts for e in events]
        if run.high_water is not None:
            tops.append(run.high_water)
        candidates: list[str] = []
        if tops:
            bound = max(tops) - self._lateness
            candidates = await self.store.due_customers(run.partition, bound, limit=_DUE_LIMIT)
        wanted = dict.fromkeys([*(e.customer_id for e in events), *candidates])
        part = self._part(run.partition)
        cache = part.cache
        corrupt: list[CorruptState] = []
        # The hits are taken before anything is remembered: remembering evicts.
        hits = {cid: cache[cid] for cid in wanted if cid in cache}
        missing = [cid for cid in wanted if cid not in hits]
        loaded = await self.store.load_states(missing, corrupt=corrupt) if missing else {}
        for bad in corrupt:
            self._dead_letter_state(run, bad)
        for customer_id in wanted:
            hit = hits.get(customer_id)
            if hit is not None:
                if customer_id in cache:
                    cache.move_to_end(customer_id)
                state, applied = hit
            elif customer_id in loaded:
                state, offsets = loaded[customer_id]
                applied = offsets.get(run.partition)
                self._remember(part, customer_id, state, applied)
            else:
                continue
            run.states[customer_id] = state
            if applied is not None:
                run.applied[customer_id] = applied
        for customer_id in candidates:
            state_or_none = run.states.get(customer_id)
            if state_or_none is not None:
                due = next_due_at(state_or_none, self.policy)
                run.due_of[customer_id] = due
                if due is not None:
                    run.due.append((due, customer_id))
        heapq.heapify(run.due)

    async def _apply(
        self, run: _Run, part: _Partition, record: Record, item: Event | BadEventError | None
    ) -> None:
        """
        Handle one record. It joins the chunk (`run.records`, `last_offset`) only when done:
        a chunk written while this record waits for a model must not claim it.
        """
        if item is None or self._forwarded_again(run, record):
            self._duplicates.inc()
            self._done(run, record)
            return
        if isinstance(item, BadEventError):
            self._dead_letter(run, record, item)
            self._done(run, record)
            return
        event = item
        cfg = self.policy.config
        # The replay's own check (the future bound is the ingest's: it is not given here).
        late = check_time(event.ts, run.high_water, cfg)
        if late is None:
            late = check_reuse(run.states.get(event.customer_id), event)
        if late is not None:
            self._dead_letter(run, record, late)
            self._done(run, record)
            return
        high_water = event.ts if run.high_water is None else max(run.high_water, event.ts)
        watermark = high_water - cfg.lateness
        applied = run.applied.get(event.customer_id)
        if applied is not None and record.offset <= applied:
            # Applied before a crash: its effects were written with it.
            run.high_water = high_water
            self._duplicates.inc()
        else:
            started = time.perf_counter()
            step = await self._step(
                run,
                part,
                lambda cap: process_event(
                    run.states.get(event.customer_id),
                    event,
                    watermark=watermark,
                    model_for=lambda at: self.checkpoints.model_for(at, cap),
                    policy=self.policy,
                ),
            )
            self.metrics.event_seconds.observe(time.perf_counter() - started)
            run.high_water = high_water
            if step.outcome == "duplicate":
                self._duplicates.inc()
                self._done(run, record)
                return
            self._processed.inc()
            run.applied[event.customer_id] = record.offset
            self._take(run, step, record)
        await self._sweep(run, part, watermark)
        run.report(watermark, self._epoch)
        self._done(run, record)

    @staticmethod
    def _forwarded_again(run: _Run, record: Record) -> bool:
        """
        Whether the record is an ingest record handled before, forwarded again (the ingest
        crashed between a forward and its commit, or its offsets were reset): a duplicate
        whatever its event time, never a `too_late` dead letter nor applied twice.
        """
        if record.source is None:
            return False
        topic, partition, offset = record.source
        seen = run.sources.get(f"{topic}:{partition}")
        return seen is not None and offset <= seen

    @staticmethod
    def _done(run: _Run, record: Record) -> None:
        run.records.append(record)
        if run.last_offset is None or record.offset > run.last_offset:
            # Never back: a record delivered again (a consumer behind the partition's last
            # handled offset, after a crash or in a new group) would otherwise let the next
            # batch take the records between it and the old last offset as new.
            run.last_offset = record.offset
        if record.source is not None:
            topic, partition, offset = record.source
            key = f"{topic}:{partition}"
            seen = run.sources.get(key)
            if seen is None or offset > seen:  # never back, as last_offset
                run.sources[key] = offset

    async def _step(
        self, run: _Run, part: _Partition, compute: Callable[[int | None], StepResult]
    ) -> StepResult:
        """Run a core step; when it needs a checkpoint not resolved yet, obtain it and retry."""
        while True:
            try:
                return compute(run.cap)
            except NeedModel as need:
                await self._obtain(run, part, need.epoch)

    async def _obtain(self, run: _Run, part: _Partition, epoch: int) -> None:
        checkpoints = self.checkpoints
        if not checkpoints.final(epoch):
            await checkpoints.refresh()
        if checkpoints.final(epoch):
            await checkpoints.resolve(epoch)
            return
        # The learner needs this partition's watermark to release the epoch: publish first.
        await self._flush(run, part)
        if run.swept_to is not None and part.published != run.swept_to:
            await self._publish_watermark(part, run.partition, run.swept_to)
        deadline = time.monotonic() + self.settings.model_wait_seconds
        while time.monotonic() < deadline:
            # A revoked partition's actor is cancelled by faust here; a kept one waits on.
            await asyncio.sleep(self.settings.model_poll_seconds)
            await checkpoints.refresh()
            if checkpoints.final(epoch):
                await checkpoints.resolve(epoch)
                return
        log.warning(
            "model.wait_timeout",
            extra={
                "topic": self.topics.events,
                "partition": run.partition,
                "offset": run.last_offset,
                "wanted_epoch": epoch,
                "waited_seconds": self.settings.model_wait_seconds,
            },
        )
        await checkpoints.resolve(epoch, fallback=True)

    async def _sweep(self, run: _Run, part: _Partition, until: datetime) -> None:
        due = run.due
        while due and due[0][0] <= until:
            at, customer_id = due[0]
            state = run.states[customer_id]
            if self._due_of(run, customer_id) != at:
                heapq.heappop(due)  # stale: the customer moved on since it was scheduled
                continue
            step = await self._step(run, part, self._sweeper(state, until))
            heapq.heappop(due)
            self.metrics.sweep_customers.inc()
            self._take(run, step, None)
        run.swept_to = until

    def _due_of(self, run: _Run, customer_id: str) -> datetime | None:
        """The customer's next due time: the one its last step or load gave."""
        if customer_id in run.due_of:
            return run.due_of[customer_id]
        due = run.due_of[customer_id] = next_due_at(run.states[customer_id], self.policy)
        return due

    def _sweeper(self, state: CustomerState, until: datetime) -> Callable[[int | None], StepResult]:
        def compute(cap: int | None) -> StepResult:
            return sweep_one(
                state,
                until=until,
                model_for=lambda at: self.checkpoints.model_for(at, cap),
                policy=self.policy,
            )

        return compute

    def _take(self, run: _Run, step: StepResult, record: Record | None) -> None:
        state = step.state
        customer_id = state.customer_id
        run.states[customer_id] = state
        if record is not None:
            run.dirty[customer_id] = record.offset
        else:
            run.dirty.setdefault(customer_id, None)
        due = step.due_at  # next_due_at(state), computed once by the step
        run.due_of[customer_id] = due
        if due is not None:
            heapq.heappush(run.due, (due, customer_id))
        key = customer_id.encode()
        scoring = step.scoring
        if scoring is not None and step.outcome != "duplicate":
            run.history.append(
                HistoryPoint(customer_id, scoring.at, scoring.churn_probability, scoring.score)
            )
        for alert in step.alerts:
            run.outbox.append(
                OutboxEntry(
                    alert.alert_id,
                    self.topics.alerts,
                    key,
                    alert_to_json(alert),
                    (("alert_id", alert.alert_id.encode()),),
                )
            )
            run.alerts.append((alert, record))
        for example in step.examples:
            run.outbox.append(self._example_entry(example, key))

    def _example_entry(self, example: Example, key: bytes) -> OutboxEntry:
        return OutboxEntry(example.example_id, self.topics.training, key, example_to_json(example))

    def _dead_letter(self, run: _Run, record: Record, error: BadEventError) -> None:
        self.metrics.records_dead_lettered.labels(self.topics.events, error.reason).inc()
        value = dead_letter(
            reason=error.reason,
            message=error.message,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            original=record.value,
            stage="scoring",
            max_original_bytes=self.settings.deadletter_max_original_bytes,
        )
        entry_id = f"dl|{record.topic}|{record.partition}|{record.offset}"
        headers = (("reason", error.reason.encode()),)
        run.outbox.append(OutboxEntry(entry_id, self.topics.deadletter, record.key, value, headers))
        log.warning(
            "event.dead_lettered",
            extra={
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "reason": error.reason,
                "stage": "scoring",
                "detail": error.message,
            },
        )

    def _dead_letter_state(self, run: _Run, bad: CorruptState) -> None:
        """
        A stored state that cannot be read goes to the dead-letter topic with its bytes, once
        per process (its entry id names the key and the bytes); the customer starts anew (its
        next write replaces the hash), and the batch goes on.
        """
        digest = hashlib.blake2b(bad.raw, digest_size=8).hexdigest()
        entry_id = f"dl|state|{bad.key}|{digest}"
        if entry_id in self._dead_states:
            return
        self._dead_states.add(entry_id)
        self.metrics.states_dead_lettered.inc()
        reason = "corrupt_state"
        value = dead_letter(
            reason=reason,
            message=f"stored state of customer {bad.customer_id!r} ({bad.key}): {bad.message}",
            topic=self.topics.events,
            partition=run.partition,
            offset=-1,
            original=bad.raw,
            stage="scoring",
            max_original_bytes=self.settings.deadletter_max_original_bytes,
            customer_id=bad.customer_id,
        )
        headers = (("reason", reason.encode()),)
        key = bad.customer_id.encode()
        run.outbox.append(OutboxEntry(entry_id, self.topics.deadletter, key, value, headers))
        log.warning(
            "state.dead_lettered",
            extra={
                "customer_id": bad.customer_id,
                "partition": run.partition,
                "reason": reason,
                "detail": bad.message,
            },
        )

    async def _flush(self, run: _Run, part: _Partition) -> None:
        """Steps 4 to 7 for the chunk so far: write, produce, clear the outbox, acknowledge."""
        if run.dirty or run.outbox or run.records:
            started = time.perf_counter()
            states = [(run.states[cid], offset) for cid, offset in run.dirty.items()]
            due = {cid: self._due_of(run, cid) for cid in run.dirty}
            meta = PartitionMeta(run.high_water, run.swept_to, run.last_offset, run.sources)
            alerts = [
                StoredAlert(a.customer_id, a.alert_id, a.event_ts, alert_to_json(a))
                for a, _ in run.alerts
            ]
            await self.store.write_batch(
                BatchWrite(
                    run.partition,
                    meta,
                    states,
                    list(run.outbox),
                    due,
                    history=run.history,
                    alerts=alerts,
                    segments=self.segments,
                )
            )
            for cid, offset in run.dirty.items():
                # Written: the cache holds what Redis now holds.
                if offset is None:
                    cached = part.cache.get(cid)
                    offset = cached[1] if cached is not None else run.applied.get(cid)
                self._remember(part, cid, run.states[cid], offset)
            written = time.perf_counter()
            if run.outbox:
                await self._produce(run.partition, run.outbox)
                self._published_alerts(run)
            produced = time.perf_counter()
            if run.swept_to is not None and run.swept_to != part.published:
                await self._publish_watermark(part, run.partition, run.swept_to)
            if run.outbox:
                await self.store.clear_outbox(run.partition, [e.entry_id for e in run.outbox])
            log.debug(
                "chunk.flushed",
                extra={
                    "topic": self.topics.events,
                    "partition": run.partition,
                    "last_offset": run.last_offset,
                    "records": len(run.records),
                    "states": len(run.dirty),
                    "outbox": len(run.outbox),
                    "watermark": None if run.swept_to is None else run.swept_to.isoformat(),
                    "write_s": round(written - started, 4),
                    "produce_s": round(produced - written, 4),
                    "total_s": round(time.perf_counter() - started, 4),
                },
            )
            run.dirty = {}
            run.outbox = []
            run.alerts = []
            run.history = []
        records, run.records = run.records, []
        if records and run.ack is not None:
            await run.ack(records)

    def _published_alerts(self, run: _Run) -> None:
        now = time.time()
        for alert, record in run.alerts:
            self.metrics.alerts.labels(alert.rule, alert.action).inc()
            if record is not None and record.timestamp is not None:
                self.metrics.event_to_alert_seconds.observe(max(0.0, now - record.timestamp))
            log.info(
                "alert.published",
                extra={
                    "alert_id": alert.alert_id,
                    "customer_id": alert.customer_id,
                    "rule": alert.rule,
                    "action": alert.action,
                    "score": alert.score,
                    "topic": self.topics.events,
                    "partition": run.partition,
                    "offset": None if record is None else record.offset,
                },
            )

    # -- the timer ----------------------------------------------------------------------
    async def tick(self, partitions: Sequence[int]) -> None:
        """
        For each owned partition: recover its outbox after an assignment, sweep it up to its
        watermark, and send its watermark record again when the last one is older than the
        sweep interval (a restarted learner learns every partition's progress from these).
        """
        for partition in partitions:
            part = self._part(partition)
            if part.lock.locked():
                continue  # a batch is running; it sweeps and publishes itself
            async with part.lock:
                await self._ensure_recovered(partition, part)
                meta = await self.store.load_partition(partition)
                if meta.watermark is None:
                    continue
                run = self._run(partition, meta, None)
                candidates = await self.store.due_customers(
                    partition, meta.watermark, limit=_DUE_LIMIT
                )
                if candidates:
                    await self._load(run, [])
                    await self._sweep(run, part, meta.watermark)
                    await self._flush(run, part)
                stale = time.monotonic() - part.published_at >= self.settings.sweep_interval_seconds
                if stale or part.published != meta.watermark:
                    await self._publish_watermark(part, partition, meta.watermark)
