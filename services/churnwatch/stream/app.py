"""
The faust side: the apps of `churnwatch worker` and `churnwatch learner`, built from settings.

The worker app runs two agents in one consumer group: `ingest` over the ingest topics (one
actor) and `scoring` over churn.events (one actor per partition, `isolated_partitions`, so a
partition waiting for a model checkpoint does not hold up the others), plus two timers: the
ingest merge's and the sweep's. faust's own partition assignor (kept on by
`table_standby_replicas`) co-partitions every topic, so partition p of every ingest topic and
of churn.events belong to the same worker.

Offsets: the agents read with `noack_take`, which never acknowledges by itself; a record is
acknowledged only when the protocol's step 7 is reached (or, at ingest, when its forward or
dead letter is delivered), and faust commits only acknowledged offsets (the longest run
without gaps). `stream_wait_empty` is off: a rebalance does not wait for a batch that waits
for a checkpoint only another worker's partitions can release.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import tempfile
import time
import uuid
from collections.abc import Awaitable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, cast

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP as FaustTP

from churnwatch.core.engine import Policy
from churnwatch.core.errors import StoreUnavailableError
from churnwatch.metrics import Metrics
from churnwatch.sdk.settings import KafkaSettings
from churnwatch.store import RedisStore
from churnwatch.stream.health import StoreHealth
from churnwatch.stream.ingest import Ingestor
from churnwatch.stream.learner import Learner
from churnwatch.stream.logs import logging_config
from churnwatch.stream.records import SOURCE_HEADER, Record, parse_source
from churnwatch.stream.scoring import ScoringWorker
from churnwatch.stream.settings import LearnerSettings, StreamSettings, WorkerSettings

log = logging.getLogger(__name__)

INGEST_TICK_SECONDS = 0.1
_FETCH_MAX_WAIT_ATTR = "_churnwatch_fetch_max_wait_ms"


def _install_fetch_max_wait() -> None:
    """
    Make faust's consumer honour `fetch_max_wait_ms` from our settings (faust fixes 1500 ms).

    A fetch over several partitions is answered at the end of the wait (Tansu, measured) even
    when records arrive early, so with faust's 1.5 s every hop of a record (ingest, scoring,
    the learner) would take up to 1.5 s.
    """
    thread_cls = faust_aiokafka.AIOKafkaConsumerThread
    if getattr(thread_cls, _FETCH_MAX_WAIT_ATTR, False):
        return
    original = thread_cls._create_worker_consumer

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        wait_ms = getattr(self.app, _FETCH_MAX_WAIT_ATTR, None)
        if wait_ms is not None:
            consumer._fetch_max_wait_ms = wait_ms
        return consumer

    setattr(thread_cls, "_create_worker_consumer", create)  # noqa: B010 (a method: mypy)
    setattr(thread_cls, _FETCH_MAX_WAIT_ATTR, True)


def credentials(kafka: KafkaSettings) -> Any:
    """faust credentials for the broker's security protocol (None for PLAINTEXT)."""
    protocol = kafka.security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = ssl.create_default_context(
        cafile=None if kafka.ssl_cafile is None else str(kafka.ssl_cafile)
    )
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    password = kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
    return faust.SASLCredentials(
        username=kafka.sasl_username,
        password=password,
        mechanism=kafka.sasl_mechanism,
        ssl_context=context if protocol == "SASL_SSL" else None,
    )


def build_app(settings: StreamSettings, group_id: str) -> faust.App:
    """A faust app (one consumer group) with the settings' broker, timeouts and logging."""
    kafka = settings.kafka
    data_dir = settings.data_dir or Path(tempfile.mkdtemp(prefix="churnwatch-faust-"))
    _install_fetch_max_wait()
    app = faust.App(
        group_id,
        broker="kafka://" + ";".join(kafka.bootstrap_servers()),
        broker_credentials=credentials(kafka),
        broker_client_id=kafka.client_id,
        autodiscover=False,
        datadir=str(data_dir),
        store="memory://",
        web_enabled=False,
        # Topics are created by `ensure_topics` with the settings' partition count.
        topic_allow_declare=False,
        topic_disable_leader=True,
        topic_partitions=kafka.partitions,
        # Keeps faust's co-partitioning assignor (faust picks round-robin without it).
        table_standby_replicas=1,
        broker_session_timeout=settings.broker_session_timeout,
        broker_rebalance_timeout=settings.broker_rebalance_timeout,
        broker_heartbeat_interval=settings.broker_heartbeat_interval,
        broker_request_timeout=settings.request_timeout,
        broker_commit_interval=settings.broker_commit_interval,
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,
        stream_buffer_maxsize=settings.stream_buffer_maxsize,
        broker_max_poll_records=settings.broker_max_poll_records,
        consumer_max_fetch_size=settings.consumer_max_fetch_bytes,
        producer_acks=-1,
        producer_request_timeout=settings.request_timeout,
        key_serializer="raw",
        value_serializer="raw",
        logging_config=logging_config(settings.log_level, settings.log_format),
    )
    setattr(app, _FETCH_MAX_WAIT_ATTR, settings.fetch_max_wait_ms)
    return app


def raw_topic(app: faust.App, *names: str) -> Any:
    return app.topic(
        *names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )


def to_record(event: Any) -> Record:
    message = event.message
    return _record_of(message, timestamp=message.timestamp, token=event)


def _record_of(message: Any, *, timestamp: float | None, token: object = None) -> Record:
    """A record of a faust message or an aiokafka ConsumerRecord (the same fields but the
    timestamp: faust's in seconds, aiokafka's in milliseconds; the caller gives seconds)."""
    value = message.value
    headers = message.headers or ()
    if isinstance(headers, dict):
        headers = headers.items()
    source = None
    for name, header in headers:
        if name == SOURCE_HEADER and isinstance(header, bytes):
            source = parse_source(header)
    return Record(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=value if value is not None else b"",
        timestamp=timestamp,
        token=token,
        source=source,
    )


class FaustSink:
    """Produces through the app's producer (acks=all); `send` returns the delivery."""

    def __init__(self, app: faust.App) -> None:
        self.app = app

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        *,
        partition: int | None,
        headers: Sequence[tuple[str, bytes]] = (),
        timestamp: float | None = None,
    ) -> Awaitable[object]:
        delivery: Awaitable[object] = await self.app.producer.send(
            topic, key, value, partition, timestamp, list(headers) or None
        )
        return delivery


def _acker(stream: Any) -> Any:
    async def ack(records: Sequence[Record]) -> None:
        for record in records:
            if record.token is not None:  # re-read from the log: not the stream's to ack
                await stream.ack(record.token)

    return ack


class WorkerRuntime:
    """What the worker app's agents and timers share; connects on first use (in faust's loop)."""

    def __init__(self, settings: WorkerSettings, policy: Policy, metrics: Metrics) -> None:
        self.settings = settings
        self.policy = policy
        self.metrics = metrics
        self.topics = settings.kafka.topics()
        self.app = build_app(settings, settings.group_id)
        self.store = RedisStore(settings.redis)
        self.health = StoreHealth(metrics, max_backoff=settings.store_retry_max_seconds)
        sink = FaustSink(self.app)
        self.scoring = ScoringWorker(
            settings,
            policy,
            store=self.store,
            sink=sink,
            metrics=metrics,
            topics=self.topics,
            highwater=lambda p: self._highwater(self.topics.events, p),
            seek=self._seek_events,
            reread=self._reread_events,
        )
        self.ingestor = Ingestor(
            settings,
            sink=sink,
            metrics=metrics,
            topics=self.topics,
            assigned=self._assigned,
            highwater=self._highwater,
            start_offset=self._committed,
            commit=self._commit_acked,
            seek=self._seek_to,
            fetched_at=self._fetched_at,
        )
        self.ingest_ack: Any = None
        self._started = False
        self._start_lock = asyncio.Lock()

    async def start(self) -> None:
        async with self._start_lock:
            if self._started:
                return
            await self.health.retry("connect", self.store.start)
            self._started = True
            log.info(
                "worker.started",
                extra={
                    "group_id": self.settings.group_id,
                    "kafka": self.settings.kafka.describe(),
                    "redis": self.settings.redis.address,
                    "redis_prefix": self.settings.redis.prefix,
                    "waitaof": self.store.waitaof,
                },
            )

    def _assigned(self) -> set[tuple[str, int]]:
        return {(tp.topic, tp.partition) for tp in self.app.consumer.assignment()}

    async def _commit_acked(self) -> object:
        return await self.app.consumer.commit()

    def _committed(self, topic: str, partition: int) -> int | None:
        # faust keeps the committed offsets it sought to on assignment (and later commits).
        committed = getattr(self.app.consumer, "_committed_offset", None)
        if committed is None:
            return None
        value = committed.get(FaustTP(topic, partition))
        return None if value is None else int(value)

    async def _reread_events(self, partition: int, start: int, stop: int) -> list[Record]:
        """
        The records of churn.events `partition` from `start` up to `stop` (exclusive), read
        with a consumer of their own (no group, nothing committed): what a batch that starts
        after a gap is missing. faust's own seek cannot serve here: records it has already
        fetched past the gap reach the stream first, and faust then drops the re-fetched ones
        as already read. Returns what the log gave within the request timeout (possibly less,
        if the range was deleted by retention).
        """
        from aiokafka import AIOKafkaConsumer, TopicPartition

        kafka = self.settings.kafka
        options = kafka.kafka_kwargs()  # the sdk's mapping of the settings (SASL included)
        cafile = options.pop("ssl_cafile", None)  # aiokafka takes an SSL context instead
        if kafka.security_protocol != "PLAINTEXT":
            options["ssl_context"] = ssl.create_default_context(cafile=cafile)
        options["client_id"] = f"{kafka.client_id}-reread"
        options["request_timeout_ms"] = int(self.settings.request_timeout * 1000)
        tp = TopicPartition(self.topics.events, partition)
        consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, **options)
        found: list[Record] = []
        deadline = time.monotonic() + self.settings.request_timeout
        await consumer.start()
        try:
            consumer.assign([tp])
            consumer.seek(tp, start)
            while time.monotonic() < deadline and await consumer.position(tp) < stop:
                fetched = await consumer.getmany(tp, timeout_ms=500, max_records=stop - start)
                for message in fetched.get(tp, []):
                    if start <= message.offset < stop:
                        at = None if message.timestamp is None else message.timestamp / 1000.0
                        found.append(_record_of(message, timestamp=at))
        finally:
            await consumer.stop()
        return found

    async def _seek_events(self, partition: int, offset: int) -> None:
        await self._seek_to(self.topics.events, partition, offset)

    async def _seek_to(self, topic: str, partition: int, offset: int) -> None:
        await self.app.consumer.seek(FaustTP(topic, partition), offset)

    def _highwater(self, topic: str, partition: int) -> int | None:
        try:
            value = self.app.consumer.highwater(FaustTP(topic, partition))
        except (AssertionError, KeyError, AttributeError):
            return None
        return None if value is None else int(value)

    def _fetched_at(self, topic: str, partition: int) -> float | None:
        """When (wall time, s) the last fetch response for a partition arrived: the one its
        `highwater` is from (aiokafka's `last_poll_timestamp`; faust does not expose it)."""
        try:
            consumer = self.app.consumer._thread._ensure_consumer()  # type: ignore[attr-defined]
            value = consumer.last_poll_timestamp(FaustTP(topic, partition))
        except (AssertionError, KeyError, AttributeError):
            return None
        return None if value is None else int(value) / 1000.0

    @staticmethod
    def partitions_of(stream: Any) -> list[int]:
        """The churn.events partitions of an isolated-partition actor's stream."""
        return sorted(tp.partition for tp in getattr(stream, "active_partitions", None) or ())

    def revoked(self, stream: Any) -> bool:
        """Whether an isolated-partition actor's partitions are all no longer assigned."""
        mine = set(self.partitions_of(stream))
        return bool(mine) and not mine & set(self.owned_events_partitions())

    def owned_events_partitions(self) -> list[int]:
        return sorted(p for t, p in self._assigned() if t == self.topics.events)

    async def crash(self, exc: BaseException, what: str) -> None:
        log.exception("worker.crashed", extra={"during": what, "error": repr(exc)})
        await self.app.crash(exc)


def build_worker(settings: WorkerSettings, policy: Policy, metrics: Metrics) -> WorkerRuntime:
    """The worker app with its agents and timers."""
    rt = WorkerRuntime(settings, policy, metrics)
    app = rt.app
    ingest_topic = raw_topic(app, *rt.topics.ingest_topics())
    events_topic = raw_topic(app, rt.topics.events)
    take = settings.batch_max_records
    within = settings.batch_within_seconds

    @app.agent(ingest_topic, name="churnwatch.ingest")
    async def ingest(stream: Any) -> None:
        await rt.start()
        ack = rt.ingest_ack = _acker(stream)
        async for events in stream.noack_take(take, within=within):
            try:
                await rt.ingestor.handle([to_record(e) for e in events], ack)
            except Exception as exc:
                await rt.crash(exc, "ingest")
                raise

    @app.agent(events_topic, name="churnwatch.scoring", isolated_partitions=True)
    async def scoring(stream: Any) -> None:
        await rt.start()
        ack = _acker(stream)
        try:
            async for events in stream.noack_take(take, within=within):
                records = [to_record(e) for e in events]
                by_partition: dict[int, list[Record]] = {}
                for record in records:
                    by_partition.setdefault(record.partition, []).append(record)
                try:
                    for partition, batch in by_partition.items():
                        await rt.health.retry(
                            "scoring",
                            partial(rt.scoring.handle_batch, partition, batch, ack),
                            before_retry=partial(rt.scoring.after_store_outage, partition),
                        )
                except Exception as exc:
                    await rt.crash(exc, "scoring")
                    raise
        except asyncio.CancelledError:
            if not rt.revoked(stream):
                raise  # the worker stops
            # faust cancels the actor of a revoked partition and, when the cancellation
            # escapes, restarts it for that partition, no longer assigned: the restarted
            # actors crash again until faust's supervisor gives up and the worker exits
            # (MaxRestartsExceeded, or an AssertionError in the conductor's
            # _update_tp_index). Ending here ends the actor; what it had not acknowledged
            # is the new owner's (issue 18, item 2).
            log.info("scoring.revoked", extra={"partitions": rt.partitions_of(stream)})

    async def ingest_tick() -> None:
        if rt.ingest_ack is None:
            return
        try:
            await rt.ingestor.tick(rt.ingest_ack)
        except Exception as exc:
            await rt.crash(exc, "ingest tick")
            raise

    async def sweep_tick() -> None:
        if not rt._started:
            return
        try:
            await rt.scoring.tick(rt.owned_events_partitions())
            rt.health.succeeded()
        except StoreUnavailableError as exc:
            rt.health.failed(exc, "sweep")  # the next tick tries again
        except Exception as exc:
            await rt.crash(exc, "sweep")
            raise

    async def on_assigned(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        rt.scoring.on_assigned()
        assigned = args[0] if args else kwargs.get("assigned", ())
        log.info(
            "partitions.assigned",
            extra={"partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in assigned)},
        )

    # Registered by call, not as decorators: faust's decorators are untyped.
    app.timer(INGEST_TICK_SECONDS)(ingest_tick)
    app.timer(settings.sweep_interval_seconds)(sweep_tick)
    app.on_partitions_assigned.connect(cast(Any, on_assigned))
    return rt


class LearnerRuntime:
    """The learner app: one agent over churn.training."""

    def __init__(self, settings: LearnerSettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.topics = settings.kafka.topics()
        # A fresh group every start: the learner rebuilds from the beginning of the topic.
        self.group_id = f"{settings.group_id}-{uuid.uuid4().hex[:12]}"
        self.app = build_app(settings, self.group_id)
        self.store = RedisStore(settings.redis)
        self.health = StoreHealth(metrics, max_backoff=settings.store_retry_max_seconds)
        self.learner = Learner(
            settings,
            store=self.store,
            metrics=metrics,
            topic=self.topics.training,
            sink=FaustSink(self.app),
            deadletter_topic=self.topics.deadletter,
            health=self.health,
        )
        self._started = False
        self._start_lock = asyncio.Lock()

    async def start(self) -> None:
        async with self._start_lock:
            if self._started:
                return
            await self.health.retry("connect", self.store.start)
            await self.learner.restore()
            self._started = True
            log.info(
                "learner.started",
                extra={
                    "group_id": self.group_id,
                    "kafka": self.settings.kafka.describe(),
                    "redis": self.settings.redis.address,
                    "redis_prefix": self.settings.redis.prefix,
                },
            )


def build_learner(settings: LearnerSettings, metrics: Metrics) -> LearnerRuntime:
    rt = LearnerRuntime(settings, metrics)
    topic = raw_topic(rt.app, rt.topics.training)

    @rt.app.agent(topic, name="churnwatch.learner")
    async def learn(stream: Any) -> None:
        await rt.start()
        async for events in stream.take_events(
            settings.batch_max_records, within=settings.batch_within_seconds
        ):
            try:
                await rt.learner.handle([to_record(e) for e in events])
            except Exception as exc:
                log.exception("learner.crashed", extra={"error": repr(exc)})
                await rt.app.crash(exc)
                raise

    return rt


def run(app: faust.App, settings: StreamSettings) -> None:
    """Run the app until SIGTERM or SIGINT (or a crash); exits the process."""
    worker = faust.Worker(
        app,
        loglevel=settings.log_level,
        quiet=True,
        redirect_stdouts=False,
        logging_config=logging_config(settings.log_level, settings.log_format),
    )
    worker.execute_from_commandline()
