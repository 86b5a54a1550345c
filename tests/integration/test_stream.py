"""
The streaming workers against the real broker and Redis: a worker subprocess gives the states
and alerts of the in-process replay, and bad input never stops the stream.

The helpers here (the stack of one test, subprocesses, topic dumps, waits) are shared with
test_stream_faults.py.
"""

from __future__ import annotations

import asyncio
import base64
import heapq
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import orjson
import pytest
import redis
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.consumer.fetcher import ConsumerRecord
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from churnwatch.api.views import ListQuery, Views
from churnwatch.core.alerts import AlertRecord, alert_to_json
from churnwatch.core.engine import Policy
from churnwatch.core.errors import BadEventError
from churnwatch.core.events import format_ts, parse_event
from churnwatch.core.state import CustomerState, from_dict, to_dict
from churnwatch.metrics import Metrics
from churnwatch.replay.engine import Replay
from churnwatch.sdk.producer import EventProducer, publish_records, raw_producer
from churnwatch.sdk.settings import KafkaSettings, TopicNames
from churnwatch.sdk.topics import ensure_topics
from churnwatch.settings import CoreSettings
from churnwatch.sim import SimConfig, Simulation
from churnwatch.store import RedisStore, StoreSettings
from churnwatch.stream.ingest import Ingestor
from churnwatch.stream.records import Record
from churnwatch.stream.settings import WorkerSettings
from needs import free_port

pytestmark = pytest.mark.integration

PARTITIONS = 3
# 400 customers over 30 days: about 2,300 records, 30 model epochs.
SIM = SimConfig(customers=400, days=30, seed=3, duplicate_rate=0.01)
SHOP_SIM = SimConfig(customers=600, days=90, seed=5)
START_DEADLINE_S = 30.0
RUN_DEADLINE_S = 90.0
# Short faust timeouts (Tansu holds a JoinGroup for the rebalance timeout), a quick sweep,
# and a model wait longer than a takeover after a crash (session timeout plus a join).
TEST_ENV = {
    "CHURNWATCH_BROKER_SESSION_TIMEOUT": "6",
    "CHURNWATCH_BROKER_REBALANCE_TIMEOUT": "3",
    "CHURNWATCH_BROKER_HEARTBEAT_INTERVAL": "0.5",
    "CHURNWATCH_BROKER_COMMIT_INTERVAL": "0.5",
    "CHURNWATCH_SWEEP_INTERVAL_SECONDS": "0.5",
    "CHURNWATCH_MODEL_WAIT_SECONDS": "40",
    "CHURNWATCH_MODEL_POLL_SECONDS": "0.02",
    "CHURNWATCH_BATCH_MAX_RECORDS": "40",
    "CHURNWATCH_BATCH_WITHIN_SECONDS": "0.05",
    "CHURNWATCH_FETCH_MAX_WAIT_MS": "50",
    "CHURNWATCH_STORE_RETRY_MAX_SECONDS": "0.5",
    # smaller than a partition's customers (about 130): the state cache both hits and evicts
    "CHURNWATCH_STATE_CACHE_CUSTOMERS": "50",
    "CHURNWATCH_LOG_LEVEL": "info",
}


# -- the stack of one test --------------------------------------------------------------------
@dataclass
class Stack:
    """One test's topics (by prefix), Redis prefix and addresses."""

    bootstrap: str
    redis_url: str
    prefix: str
    kafka: KafkaSettings
    client: redis.Redis
    rules_file: Path | None = None
    """The rules of the workers and of the replay (None: the packaged default)."""

    def policy(self) -> Policy:
        return CoreSettings(rules_file=self.rules_file).to_policy()

    @property
    def topics(self) -> TopicNames:
        return self.kafka.topics()

    def env(self, group_id: str, metrics_port: int, **extra: str) -> dict[str, str]:
        """The environment of a worker or learner subprocess of this test."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("CHURNWATCH_")}
        return {
            **base,
            **TEST_ENV,
            "CHURNWATCH_KAFKA_BOOTSTRAP": self.bootstrap,
            "CHURNWATCH_KAFKA_PARTITIONS": str(PARTITIONS),
            "CHURNWATCH_KAFKA_TOPIC_PREFIX": self.prefix + ".",
            "CHURNWATCH_REDIS_URL": self.redis_url,
            "CHURNWATCH_REDIS_PREFIX": self.prefix,
            "CHURNWATCH_GROUP_ID": group_id,
            "CHURNWATCH_METRICS_PORT": str(metrics_port),
            **({} if self.rules_file is None else {"CHURNWATCH_RULES_FILE": str(self.rules_file)}),
            **extra,
        }

    def meta(self, partition: int) -> dict[str, str]:
        return self.client.hgetall(f"{self.prefix}:p:{{{partition}}}:meta")  # type: ignore[return-value]

    def outbox_size(self) -> int:
        return sum(
            int(self.client.hlen(f"{self.prefix}:p:{{{p}}}:outbox"))  # type: ignore[arg-type]
            for p in range(PARTITIONS)
        )

    def state(self, customer_id: str) -> CustomerState | None:
        raw: dict[str, str] = self.client.hgetall(f"{self.prefix}:c:{{{customer_id}}}")  # type: ignore[assignment]
        fields = {k: v for k, v in raw.items() if not k.startswith("o:")}
        return from_dict(fields) if fields else None


@pytest.fixture
def stack(
    kafka_bootstrap: str, redis_url: str, redis_client: redis.Redis, kafka_admin: KafkaAdminClient
) -> Iterator[Stack]:
    """
    Every churnwatch topic under a fresh prefix, and a fresh Redis prefix; removed afterwards.
    """
    prefix = f"cw-it-{uuid4().hex[:12]}"
    kafka = KafkaSettings(
        bootstrap=kafka_bootstrap, partitions=PARTITIONS, topic_prefix=prefix + "."
    )
    ensure_topics(kafka)
    try:
        yield Stack(kafka_bootstrap, redis_url, prefix, kafka, redis_client)
    finally:
        try:
            kafka_admin.delete_topics(list(kafka.topics().all()), timeout_ms=10_000)
        except Exception as exc:  # cleanup must not hide the test's outcome
            print(f"deleting the test topics failed: {exc!r}")
        keys = list(redis_client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            redis_client.delete(*keys)


# -- subprocesses -----------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    metrics_port: int

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return f"--- {self.name} (pid {self.popen.pid}) log tail ---\n" + "\n".join(text[-lines:])

    def alive(self) -> bool:
        return self.popen.poll() is None


@dataclass
class Processes:
    """Starts `churnwatch worker|learner` subprocesses and ends exactly those, by PID."""

    directory: Path
    started: list[Proc] = field(default_factory=list)

    def start(self, kind: str, stack: Stack, name: str, group_id: str) -> Proc:
        port = free_port()
        log = self.directory / f"{name}.log"
        popen = subprocess.Popen(
            [sys.executable, "-m", "churnwatch.stream", kind],
            env=stack.env(group_id, port),
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
        )
        proc = Proc(name, popen, log, port)
        self.started.append(proc)
        return proc

    def kill(self, proc: Proc) -> None:
        """SIGKILL: no shutdown, no commit, no flush."""
        proc.popen.send_signal(signal.SIGKILL)
        proc.popen.wait(timeout=10)

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.alive():
                proc.popen.send_signal(signal.SIGTERM)
        for proc in self.started:
            try:
                proc.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.popen.send_signal(signal.SIGKILL)
                proc.popen.wait(timeout=10)

    def tails(self) -> str:
        return "\n".join(proc.tail() for proc in self.started)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """The subprocesses a test starts; every one still running is stopped at the end."""
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()


def start_learner(processes: Processes, stack: Stack) -> Proc:
    return processes.start("learner", stack, "learner", f"{stack.prefix}-learner")


def start_worker(processes: Processes, stack: Stack, name: str = "worker") -> Proc:
    return processes.start("worker", stack, name, f"{stack.prefix}-worker")


# -- waiting, reading ------------------------------------------------------------------------
def wait_until(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    processes: Processes,
    every: float = 0.2,
) -> None:
    """Polls `condition` until it holds; fails after `timeout` seconds with the logs' tails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(every)
    pytest.fail(f"expected {what} within {timeout}s\n{processes.tails()}")


class TopicReader:
    """Reads a topic's partitions from the beginning; knows each partition's high watermark."""

    def __init__(self, stack: Stack, topic: str) -> None:
        self.tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        self.consumer = KafkaConsumer(
            bootstrap_servers=stack.bootstrap,
            enable_auto_commit=False,
            request_timeout_ms=10_000,
            fetch_max_wait_ms=50,
        )
        self.consumer.assign(self.tps)
        self.consumer.seek_to_beginning(*self.tps)
        self.records: list[ConsumerRecord] = []

    def read(self, max_seconds: float = 2.0) -> list[ConsumerRecord]:
        """Everything up to the current high watermarks (polls at most `max_seconds`)."""
        deadline = time.monotonic() + max_seconds
        while time.monotonic() < deadline:
            got = self.consumer.poll(timeout_ms=100)
            for batch in got.values():
                self.records.extend(batch)
            if not got and self.caught_up():
                break
        return self.records

    def highwaters(self) -> dict[int, int] | None:
        marks = {tp.partition: self.consumer.highwater(tp) for tp in self.tps}
        if any(mark is None for mark in marks.values()):
            return None
        return marks  # type: ignore[return-value]

    def caught_up(self) -> bool:
        marks = self.highwaters()
        return marks is not None and all(
            self.consumer.position(tp) >= marks[tp.partition] for tp in self.tps
        )

    def close(self) -> None:
        self.consumer.close()


def committed(stack: Stack, group_id: str, topics: Iterable[str]) -> dict[tuple[str, int], int]:
    """The group's committed offsets on these topics (missing: never committed)."""
    consumer = KafkaConsumer(
        bootstrap_servers=stack.bootstrap, group_id=group_id, enable_auto_commit=False
    )
    try:
        out: dict[tuple[str, int], int] = {}
        for topic in topics:
            for p in range(PARTITIONS):
                offset = consumer.committed(TopicPartition(topic, p))
                if offset is not None:
                    out[(topic, p)] = offset
        return out
    finally:
        consumer.close()


class Progress:
    """Whether the workers are done: everything forwarded, applied, produced and committed."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.ingest = [TopicReader(stack, t) for t in stack.topics.ingest_topics()]
        self.events = TopicReader(stack, stack.topics.events)

    def applied(self) -> int:
        """Records of churn.events handled by the scorers (from Redis)."""
        total = 0
        for p in range(PARTITIONS):
            last = self.stack.meta(p).get("last_offset")
            total += int(last) + 1 if last else 0
        return total

    def done(self, group_id: str) -> bool:
        for reader in self.ingest:
            reader.read(0.5)
        marks = [r.highwaters() for r in self.ingest]
        if any(m is None for m in marks):
            return False
        ingest_ends = {
            (reader.tps[0].topic, p): end
            for reader, m in zip(self.ingest, marks, strict=True)
            for p, end in (m or {}).items()
        }
        got = committed(self.stack, group_id, self.stack.topics.ingest_topics())
        if any(got.get(tp, 0) < end for tp, end in ingest_ends.items() if end > 0):
            return False
        self.events.read(0.5)
        events_ends = self.events.highwaters()
        if events_ends is None:
            return False
        for p, end in events_ends.items():
            last = self.stack.meta(p).get("last_offset")
            if end > 0 and (not last or int(last) + 1 < end):
                return False
        return self.stack.outbox_size() == 0

    def close(self) -> None:
        for reader in [*self.ingest, self.events]:
            reader.close()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples of a process's /metrics, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def counter(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """The sum of a counter's samples whose labels include `labels`."""
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    )


def publish(stack: Stack, records: Iterable[bytes]) -> int:
    """Publishes valid events with the SDK; returns how many were sent."""
    with EventProducer(stack.kafka) as producer:
        summary = publish_records(records, producer)
    assert summary.stopped is None
    return summary.sent


def merged_by_time(records: Sequence[ConsumerRecord]) -> list[bytes]:
    """
    The values of churn.events in the log's order per partition, the partitions interleaved
    by event time (as they would be in time order; the replay's order across partitions).
    """
    by_partition: dict[int, list[ConsumerRecord]] = {}
    for record in records:
        by_partition.setdefault(record.partition, []).append(record)

    def timed(record: ConsumerRecord) -> tuple[datetime, bytes]:
        try:
            return parse_event(record.value).ts, record.value
        except BadEventError:
            return datetime.min.replace(tzinfo=UTC), record.value

    streams = [
        [timed(r) for r in sorted(rs, key=lambda r: r.offset)] for rs in by_partition.values()
    ]
    return [value for _, value in heapq.merge(*streams, key=lambda item: item[0])]


def replay(records: Iterable[bytes], policy: Policy) -> tuple[Replay, list[AlertRecord]]:
    alerts: list[AlertRecord] = []
    engine = Replay(policy, partitions=PARTITIONS, on_alert=alerts.append)
    engine.run(records)
    return engine, alerts


def alerts_on_topic(stack: Stack) -> dict[str, list[bytes]]:
    """Every alert on churn.alerts by alert_id (a redelivered one appears more than once)."""
    reader = TopicReader(stack, stack.topics.alerts)
    try:
        records = reader.read(5.0)
    finally:
        reader.close()
    out: dict[str, list[bytes]] = {}
    for record in records:
        out.setdefault(orjson.loads(record.value)["alert_id"], []).append(record.value)
    return out


def _state_diff(expected: CustomerState, actual: CustomerState) -> dict[str, tuple[Any, Any]]:
    """The fields of two states that differ (the JSON part field by field), for a failure."""
    want, got = to_dict(expected), to_dict(actual)
    out: dict[str, tuple[Any, Any]] = {
        k: (want.get(k), got.get(k))
        for k in sorted({*want, *got} - {"s"})
        if want.get(k) != got.get(k)
    }
    rest_want, rest_got = orjson.loads(want["s"]), orjson.loads(got["s"])
    out.update(
        {
            f"s.{k}": (rest_want.get(k), rest_got.get(k))
            for k in sorted({*rest_want, *rest_got})
            if rest_want.get(k) != rest_got.get(k)
        }
    )
    return out


def assert_equals_replay(stack: Stack, original: Sequence[bytes]) -> Replay:
    """
    The states in Redis equal the replay's over churn.events (and, in score, over the
    original records), and churn.alerts holds exactly the replay's alerts, byte for byte.
    """
    reader = TopicReader(stack, stack.topics.events)
    try:
        logged = reader.read(5.0)
    finally:
        reader.close()
    from_log, log_alerts = replay(merged_by_time(logged), stack.policy())
    from_file, file_alerts = replay(original, stack.policy())
    assert set(from_file.states) == set(from_log.states)
    for customer_id, expected in from_log.states.items():
        actual = stack.state(customer_id)
        assert actual is not None, customer_id
        assert to_dict(expected) == to_dict(actual), (customer_id, _state_diff(expected, actual))
        expected_file = from_file.states[customer_id]
        assert (expected_file.score, expected_file.churn_probability) == (
            actual.score,
            actual.churn_probability,
        ), customer_id
    published = alerts_on_topic(stack)
    assert {a.alert_id for a in log_alerts} == set(published)
    assert {a.alert_id for a in file_alerts} == set(published)
    for alert in log_alerts:
        assert {alert_to_json(alert)} == set(published[alert.alert_id]), alert.alert_id
    assert_api_reads_the_replay(stack, from_log, log_alerts)
    return from_log


def assert_api_reads_the_replay(stack: Stack, engine: Replay, alerts: list[AlertRecord]) -> None:
    """
    What the at-risk API reads from the workers' writes is the replay's: the at-risk order,
    each customer's alert history (byte for byte, once each, newest first) and a score
    history that ends at the customer's current score.
    """
    expected = sorted(
        (
            (s.churn_probability, cid)
            for cid, s in engine.states.items()
            if s.churn_probability is not None and s.cancelled_at is None
        ),
        reverse=True,
    )
    by_customer: dict[str, list[AlertRecord]] = {}
    for alert in alerts:
        by_customer.setdefault(alert.customer_id, []).append(alert)

    async def read() -> tuple[list[str], dict[str, list[bytes]], dict[str, Any]]:
        store = RedisStore(StoreSettings(url=stack.redis_url, prefix=stack.prefix))
        await store.start()
        try:
            views = Views(store, stack.policy(), partitions=PARTITIONS)
            page = await views.at_risk(ListQuery(limit=len(engine.states) + 1, show="all"))
            histories = await store.alerts_of(by_customer, limit=1000)
            some = sorted(engine.states)[:20]
            last = {cid: (await store.score_history(cid, limit=1)) for cid in some}
        finally:
            await store.close()
        return [item["customer_id"] for item in page["items"]], histories, last

    order, histories, last = asyncio.run(read())
    assert [cid for _, cid in expected] == order
    for cid, fired in by_customer.items():
        newest_first = sorted(fired, key=lambda a: (a.event_ts, a.alert_id), reverse=True)
        assert [alert_to_json(a) for a in newest_first] == histories[cid], cid
    for cid, points in last.items():
        state = engine.states[cid]
        if state.scored_at is not None:
            assert state.churn_probability == points[-1]["churn_probability"], cid
            assert format_ts(state.scored_at) == points[-1]["at"], cid


def run_to_the_end(stack: Stack, processes: Processes) -> Proc:
    """
    Start a learner and a worker over what was published, and wait until every record is
    forwarded, applied and committed; returns the worker.
    """
    start_learner(processes, stack)
    worker = start_worker(processes, stack)
    wait_done(stack, processes)
    return worker


def wait_done(stack: Stack, processes: Processes, timeout: float = RUN_DEADLINE_S) -> None:
    """Wait until every record is forwarded, applied and committed by the worker group."""
    progress = Progress(stack)
    try:
        wait_until(
            lambda: progress.done(f"{stack.prefix}-worker"),
            timeout,
            "every record forwarded, applied and committed",
            processes,
        )
    finally:
        progress.close()


# -- tests ------------------------------------------------------------------------------------
def test_a_worker_gives_the_states_and_alerts_of_the_replay(
    stack: Stack, processes: Processes
) -> None:
    """
    Events published with the SDK and run through a worker give the replay's states and alerts.
    """
    records = list(Simulation(SIM).records())
    sent = publish(stack, records)
    assert len(records) == sent
    worker = run_to_the_end(stack, processes)
    engine = assert_equals_replay(stack, records)
    assert engine.counts.alerts > 20
    samples = scrape(worker.metrics_port)
    events = stack.topics.events
    consumed = counter(samples, "churnwatch_records_consumed_total", topic=events)
    assert sent == consumed
    assert consumed == counter(
        samples, "churnwatch_records_processed_total", topic=events
    ) + counter(samples, "churnwatch_records_duplicates_total", topic=events) + counter(
        samples, "churnwatch_records_dead_lettered_total", topic=events
    )
    assert engine.counts.duplicates == counter(
        samples, "churnwatch_records_duplicates_total", topic=events
    )
    assert 0.0 == counter(samples, "churnwatch_model_fallback_total")


def test_a_worker_with_the_shop_rules_gives_the_replay(stack: Stack, processes: Processes) -> None:
    """
    With rules/examples/ecommerce.yaml (labels relative to the purchase gap, the prior as a
    model input, its own learning rate) on a purchase-only history, the worker and the learner
    give the replay's states and alerts: the rules' model settings reach both processes.
    """
    stack.rules_file = Path(__file__).resolve().parents[2] / "rules/examples/ecommerce.yaml"
    records = [r for r in Simulation(SHOP_SIM).records() if b'"type":"purchase"' in r]
    assert len(records) == publish(stack, records)
    run_to_the_end(stack, processes)
    engine = assert_equals_replay(stack, records)
    assert engine.counts.examples > 100
    assert engine.learner.n_labels > 0


def good_event(n: int, customer: str, at: datetime) -> bytes:
    return orjson.dumps(
        {
            "event_id": f"ev-good-{n}",
            "type": "login",
            "customer_id": customer,
            "ts": at.isoformat(),
            "channel": "web",
        }
    )


def purchase(event_id: str, customer: str, at: str, amount: Any = 10.0) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "type": "purchase",
        "customer_id": customer,
        "ts": at,
        "amount": amount,
        "currency": "EUR",
        "order_id": f"o-{event_id}",
    }


def test_bad_records_are_dead_lettered_and_good_ones_around_them_applied(
    stack: Stack, processes: Processes
) -> None:
    """
    Each kind of bad record lands on the dead-letter topic with its reason and original bytes,
    the good events around it are applied, and consumed == processed + duplicates + dead-lettered.
    """
    start_at = datetime(2026, 3, 1, 9, tzinfo=UTC)
    customers = [f"bad-c{i}" for i in range(6)]
    before = [good_event(i, customers[i % 6], start_at + timedelta(minutes=i)) for i in range(12)]
    after = [
        good_event(100 + i, customers[i % 6], start_at + timedelta(hours=2, minutes=i))
        for i in range(12)
    ]
    ts = (start_at + timedelta(hours=1)).isoformat()
    bad: dict[str, bytes] = {
        "malformed_json": b'{"type": "purchase", "customer_id": "bad-c0",',
        "not_utf8": b'\xff\xfe{"type": "login"}',
        "wrong_type": orjson.dumps(purchase("ev-bad-1", "bad-c1", ts, amount="ten")),
        "missing_field": orjson.dumps(
            {k: v for k, v in purchase("ev-bad-2", "bad-c2", ts).items() if k != "order_id"}
        ),
        "invalid_value": orjson.dumps(purchase("ev-bad-3", "bad-c3", ts, amount=-5.0)),
        "naive_timestamp": orjson.dumps(purchase("ev-bad-4", "bad-c4", "2026-03-01T10:00:00")),
        "future_timestamp": orjson.dumps(purchase("ev-bad-5", "bad-c5", "2100-01-01T00:00:00Z")),
        "unknown_type": orjson.dumps({**purchase("ev-bad-6", "bad-c0", ts), "type": "teleport"}),
        "oversize": orjson.dumps({**purchase("ev-bad-7", "bad-c1", ts), "pad": "x" * 70_000}),
    }
    producer = raw_producer(stack.kafka)
    try:
        for value in before:
            key = orjson.loads(value)["customer_id"].encode()
            producer.send(stack.topics.for_event("login"), key=key, value=value)
        for i, value in enumerate(bad.values()):
            key = customers[i % 6].encode()
            producer.send(stack.topics.for_event("purchase"), key=key, value=value)
        for value in after:
            key = orjson.loads(value)["customer_id"].encode()
            producer.send(stack.topics.for_event("login"), key=key, value=value)
        producer.flush(timeout=20)
    finally:
        producer.close(timeout=5)
    start_learner(processes, stack)
    worker = start_worker(processes, stack)
    progress = Progress(stack)
    try:
        wait_until(
            lambda: progress.done(f"{stack.prefix}-worker"),
            START_DEADLINE_S + 20,
            "the good records applied and the bad ones dead-lettered",
            processes,
        )
        # A record too late for its partition (behind the watermark by more than the
        # allowed lateness) is dead-lettered by the scorer, not the ingest.
        late = purchase("ev-late", "bad-c0", (start_at - timedelta(days=2)).isoformat())
        # The id of the customer's last login (still remembered, within the lateness) on
        # another event: not a redelivery, and dropping it as one would lose it.
        last = parse_event(after[-1])
        reused = orjson.loads(after[-1])
        reused["ts"] = (last.ts + timedelta(minutes=20)).isoformat()
        with EventProducer(stack.kafka) as sdk:
            sdk.send(late).get(timeout=20)
            sdk.send(reused).get(timeout=20)
        wait_until(
            lambda: (
                progress.done(f"{stack.prefix}-worker")
                and progress.applied() == len(before) + len(after) + 2
            ),
            20,
            "the late and the reused records handled",
            processes,
        )
    finally:
        progress.close()

    reader = TopicReader(stack, stack.topics.deadletter)
    try:
        letters = [orjson.loads(r.value) for r in reader.read(5.0)]
    finally:
        reader.close()
    by_reason = {letter["reason"]: letter for letter in letters}
    assert {*bad, "too_late", "reused_event_id"} == set(by_reason)
    assert len(bad) + 2 == len(letters)
    for reason, original in bad.items():
        letter = by_reason[reason]
        assert "ingest" == letter["stage"]
        assert stack.topics.for_event("purchase") == letter["source"]["topic"]
        assert original == original_of(letter)
        assert letter["message"]
    for reason in ("too_late", "reused_event_id"):
        assert "scoring" == by_reason[reason]["stage"]
        assert stack.topics.events == by_reason[reason]["source"]["topic"]
    assert last.event_id in by_reason["reused_event_id"]["message"]
    last_seen: dict[str, datetime] = {}
    for value in [*before, *after]:
        event = parse_event(value)
        last_seen[event.customer_id] = max(event.ts, last_seen.get(event.customer_id, event.ts))
    for customer, expected in last_seen.items():
        state = stack.state(customer)
        assert state is not None, customer
        assert expected == state.last_activity_at, customer

    samples = scrape(worker.metrics_port)
    for topic in [*stack.topics.ingest_topics(), stack.topics.events]:
        consumed = counter(samples, "churnwatch_records_consumed_total", topic=topic)
        handled = (
            counter(samples, "churnwatch_records_processed_total", topic=topic)
            + counter(samples, "churnwatch_records_duplicates_total", topic=topic)
            + counter(samples, "churnwatch_records_dead_lettered_total", topic=topic)
        )
        assert consumed == handled, topic
    ingest_dead = Counter(
        {
            dict(labels)["reason"]: value
            for (name, labels), value in samples.items()
            if name == "churnwatch_records_dead_lettered_total"
            and dict(labels)["topic"] == stack.topics.for_event("purchase")
        }
    )
    assert Counter(dict.fromkeys(bad, 1.0)) == ingest_dead
    assert len(before) + len(after) == counter(
        samples, "churnwatch_records_processed_total", topic=stack.topics.events
    )


def original_of(letter: dict[str, Any]) -> bytes:
    return base64.b64decode(letter["original_b64"])


# -- the ingest merge, without a broker ------------------------------------------------------
class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Sink:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send(self, topic: str, key: bytes | None, value: bytes, **_: Any) -> Any:
        self.sent.append(value)
        done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class _Merge:
    """An Ingestor on one partition of the login, purchase and return ingest topics (assigned
    when they have a high watermark entry), with a fake clock, a sink that keeps what is sent,
    high watermarks the test sets, and the records of one customer to feed it."""

    def __init__(self, prefix: str, *, fetches: bool = False, **settings: Any) -> None:
        kafka = KafkaSettings(partitions=1, topic_prefix=prefix)
        topics = kafka.topics()
        self.login, self.buy = topics.for_event("login"), topics.for_event("purchase")
        self.ret = topics.for_event("return")
        self.customer = f"{prefix}c1"
        self.highwaters: dict[tuple[str, int], int | None] = {
            (self.login, 0): 0,
            (self.buy, 0): 0,
        }
        self.clock, self.sink = _Clock(), _Sink()
        # With `fetches`: when each partition's last fetch response arrived (wall clock), as
        # the test sets it; the wall clock moves with the monotonic one.
        self.fetched: dict[tuple[str, int], float | None] = {}
        self.acked: list[tuple[str, int]] = []
        self.metrics = Metrics(CollectorRegistry())
        self.ingestor = Ingestor(
            WorkerSettings(kafka=kafka, **settings),
            sink=self.sink,
            metrics=self.metrics,
            topics=topics,
            assigned=lambda: set(self.highwaters),
            highwater=lambda t, p: self.highwaters.get((t, p)),
            start_offset=lambda _t, _p: 0,
            fetched_at=(lambda t, p: self.fetched.get((t, p))) if fetches else None,
            clock=self.clock,
            wall=self.clock,
        )

    async def ack(self, records: Sequence[Record]) -> None:
        self.acked.extend((r.topic, r.offset) for r in records)

    def _record(self, topic: str, n: int, value: dict[str, Any]) -> Record:
        return Record(topic, 0, n, self.customer.encode(), orjson.dumps(value))

    def logged(self, n: int, at: datetime) -> Record:
        """A login at offset n of the login topic."""
        return Record(self.login, 0, n, self.customer.encode(), good_event(n, self.customer, at))

    def bought(self, n: int, at: datetime) -> Record:
        """A purchase at offset n of the purchase topic."""
        return self._record(self.buy, n, purchase(f"ev-b{n}", self.customer, at.isoformat()))

    def returned(self, n: int, at: datetime) -> Record:
        """A return at offset n of the return topic."""
        value = {"event_id": f"ev-r{n}", "type": "return", "customer_id": self.customer}
        value |= {"ts": at.isoformat(), "order_id": f"o{n}", "amount": 5.0, "reason": "late"}
        return self._record(self.ret, n, value)

    def sent_at(self) -> list[str]:
        """The event times (HH:MM) of what was forwarded, in order."""
        return [orjson.loads(value)["ts"][11:16] for value in self.sink.sent]

    def stalls(self, topic: str, outcome: str) -> float:
        """churnwatch_ingest_stalls_total of a topic and outcome (0 before the first)."""
        labels = {"topic": topic, "outcome": outcome}
        found = self.metrics.registry.get_sample_value("churnwatch_ingest_stalls_total", labels)
        return found or 0.0


def _login(n: int, hour: int) -> bytes:
    return good_event(n, "merge-c1", datetime(2026, 3, 1, hour, tzinfo=UTC))


def _purchase(n: int, hour: int) -> bytes:
    return orjson.dumps(purchase(f"ev-p{n}", "merge-c1", f"2026-03-01T{hour:02d}:00:00Z"))


def test_the_ingest_forwards_the_ingest_topics_merged_in_event_time() -> None:
    """
    Records of several ingest topics are forwarded in event-time order: a topic that has not
    caught up is waited for, at most `ingest_idle_seconds`.
    """
    merge = _Merge("merge.", ingest_idle_seconds=5.0, ingest_stall_seconds=30.0)
    login, buy, highwaters = merge.login, merge.buy, merge.highwaters
    ingestor, sink, clock, ack = merge.ingestor, merge.sink, merge.clock, merge.ack
    highwaters.update({(login, 0): 2, (buy, 0): 2})

    def rec(topic: str, offset: int, value: bytes) -> Record:
        return Record(topic, 0, offset, b"merge-c1", value)

    async def scenario() -> None:
        await ingestor.handle([rec(buy, 0, _purchase(0, 10)), rec(buy, 1, _purchase(1, 12))], ack)
        assert [] == sink.sent  # the login topic has records it has not delivered yet
        await ingestor.handle([rec(login, 0, _login(0, 9)), rec(login, 1, _login(1, 11))], ack)
        assert [_login(0, 9), _purchase(0, 10), _login(1, 11), _purchase(1, 12)] == sink.sent
        # The login topic stalls with records pending: the purchase waits; it is two hours
        # past the login topic's last event (11:00), beyond the lateness, so it goes alone
        # only when the login topic is given up on.
        highwaters[(login, 0)] = 5
        highwaters[(buy, 0)] = 3
        await ingestor.handle([rec(buy, 2, _purchase(2, 13))], ack)
        assert 4 == len(sink.sent)
        clock.now += 5.0
        await ingestor.tick(ack)
        assert 4 == len(sink.sent)
        clock.now += 25.0
        await ingestor.tick(ack)
        assert _purchase(2, 13) == sink.sent[-1]

    asyncio.run(scenario())
    assert [0, 0, 1, 1, 2] == [offset for _topic, offset in merge.acked]


def _at(hour: int, minute: int) -> datetime:
    return datetime(2026, 3, 1, hour, minute, tzinfo=UTC)


def test_a_stalled_ingest_topic_holds_the_others_within_the_lateness_of_its_last_event() -> None:
    """
    A topic that has not caught up and is silent for `ingest_idle_seconds` lets the other
    topics' events through up to its last event time plus the allowed lateness (its next
    events still fit the scorer's watermark), and all of them once it is silent for
    `ingest_stall_seconds`. A topic silent since its assignment holds everything until then.
    """
    merge = _Merge(
        "stall.", ingest_idle_seconds=5.0, ingest_stall_seconds=30.0, lateness_seconds=3600.0
    )
    login, buy, highwaters = merge.login, merge.buy, merge.highwaters
    ingestor, sink, clock, ack = merge.ingestor, merge.sink, merge.clock, merge.ack
    highwaters.update({(login, 0): 5, (buy, 0): 3})

    logged, bought, sent_at = merge.logged, merge.bought, merge.sent_at

    async def scenario() -> None:
        # The login topic has not delivered anything yet: nothing goes, even when it is
        # silent for longer than ingest_idle_seconds (no event time to bound the others by).
        await ingestor.handle([bought(0, _at(9, 30)), bought(1, _at(10, 30))], ack)
        clock.now += 6.0
        await ingestor.tick(ack)
        assert [] == sent_at()
        assert 1.0 == merge.stalls(login, "bounded")
        await ingestor.tick(ack)
        assert 1.0 == merge.stalls(login, "bounded")  # one stall, counted once
        await ingestor.handle([logged(0, _at(9, 0)), logged(1, _at(10, 0))], ack)
        assert ["09:00", "09:30", "10:00"] == sent_at()  # then it waits for the login topic
        await ingestor.handle([bought(2, _at(11, 30))], ack)
        assert 3 == len(sink.sent)
        # Silent for ingest_idle_seconds: the purchases go up to 10:00 + 1 h.
        clock.now += 5.0
        await ingestor.tick(ack)
        assert ["09:00", "09:30", "10:00", "10:30"] == sent_at()
        # The login topic delivers again: its event goes in order, and the bound moves on.
        await ingestor.handle([logged(2, _at(10, 45))], ack)
        assert "10:45" == sent_at()[-1]
        clock.now += 5.0
        await ingestor.tick(ack)
        assert ["10:30", "10:45", "11:30"] == sent_at()[-3:]
        # A purchase far ahead waits for the login topic ...
        highwaters[(buy, 0)] = 4
        await ingestor.handle([bought(3, _at(14, 0))], ack)
        clock.now += 20.0
        await ingestor.tick(ack)
        assert "11:30" == sent_at()[-1]
        # ... until the login topic has been silent for ingest_stall_seconds.
        assert (3.0, 0.0) == (merge.stalls(login, "bounded"), merge.stalls(login, "gave_up"))
        clock.now += 5.0
        await ingestor.tick(ack)
        assert "14:00" == sent_at()[-1]
        assert (3.0, 1.0) == (merge.stalls(login, "bounded"), merge.stalls(login, "gave_up"))
        assert 0.0 == merge.stalls(buy, "bounded")

    asyncio.run(scenario())
    assert 7 == len(sink.sent)
    assert sorted(merge.acked) == sorted(
        [(login, 0), (login, 1), (login, 2), (buy, 0), (buy, 1), (buy, 2), (buy, 3)]
    )


def test_a_caught_up_topic_is_waited_for_until_a_fetch_after_the_record_confirms_it() -> None:
    """
    A topic at its high watermark holds another topic's record until a fetch response that
    arrived after that record confirms it has nothing more: records appended to it in between
    (a history published while partitions are assigned) are forwarded first, in event time.
    Waiting for such a fetch is not a stall; a topic whose fetches stop (a paused partition)
    stalls after `ingest_idle_seconds` like any other.
    """
    merge = _Merge("fresh.", fetches=True, ingest_idle_seconds=5.0, ingest_stall_seconds=30.0)
    login, buy, highwaters, fetched = merge.login, merge.buy, merge.highwaters, merge.fetched
    ingestor, clock, ack, sent_at = merge.ingestor, merge.clock, merge.ack, merge.sent_at
    logged, bought = merge.logged, merge.bought
    highwaters.update({(login, 0): 1, (buy, 0): 1})

    async def scenario() -> None:
        clock.now = 1.0
        fetched.update({(login, 0): 1.0, (buy, 0): 1.0})
        await ingestor.handle([logged(0, _at(9, 0))], ack)
        assert [] == sent_at()  # the purchase topic has a record it has not delivered
        await ingestor.handle([bought(0, _at(9, 30))], ack)
        # The login topic is at its high watermark, but from a fetch before the purchase
        # arrived: the purchase waits.
        assert ["09:00"] == sent_at()
        clock.now = 2.0
        await ingestor.tick(ack)
        assert ["09:00"] == sent_at()
        # The next fetch brings a login appended meanwhile: it goes first, then the purchase
        # (that fetch came after the purchase and found nothing more).
        highwaters[(login, 0)] = 2
        fetched[(login, 0)] = clock.now = 2.5
        await ingestor.handle([logged(1, _at(9, 10))], ack)
        assert ["09:00", "09:10", "09:30"] == sent_at()
        # A purchase arrives after the login topic's last fetch: it waits for the next one,
        # which finds nothing; a wait of a fetch round is no stall.
        highwaters[(buy, 0)] = 2
        fetched[(buy, 0)] = clock.now = 3.0
        await ingestor.handle([bought(1, _at(9, 50))], ack)
        clock.now = 3.5
        await ingestor.tick(ack)
        assert "09:30" == sent_at()[-1]
        fetched[(login, 0)] = clock.now = 3.6
        await ingestor.tick(ack)
        assert "09:50" == sent_at()[-1]
        assert 0.0 == merge.stalls(login, "bounded")
        # The login topic's fetches stop (a paused partition): the next purchases wait
        # ingest_idle_seconds, then go up to the last login plus the lateness (10:10).
        highwaters[(buy, 0)] = 4
        fetched[(buy, 0)] = clock.now = 4.0
        await ingestor.handle([bought(2, _at(10, 0)), bought(3, _at(11, 0))], ack)
        clock.now = 8.9
        await ingestor.tick(ack)
        assert "09:50" == sent_at()[-1]
        clock.now = 9.1
        await ingestor.tick(ack)
        assert ["09:50", "10:00"] == sent_at()[-2:]
        assert 1.0 == merge.stalls(login, "bounded")

    asyncio.run(scenario())


def test_a_silent_ingest_topic_with_an_unknown_high_watermark_does_not_bound_the_others() -> None:
    """
    A topic whose high watermark is not known yet (it may have nothing to deliver at all)
    holds the others for `ingest_idle_seconds` only, as before any stall bound.
    """
    merge = _Merge("unknown.", ingest_idle_seconds=5.0, ingest_stall_seconds=30.0)
    ingestor, sink, clock, ack = merge.ingestor, merge.sink, merge.clock, merge.ack
    buy = merge.buy
    merge.highwaters.update({(merge.login, 0): None, (buy, 0): 1})

    async def scenario() -> None:
        value = orjson.dumps(purchase("ev-u0", "unknown-c1", "2026-03-01T10:00:00Z"))
        await ingestor.handle([Record(buy, 0, 0, b"unknown-c1", value)], ack)
        assert [] == sink.sent
        clock.now += 5.0
        await ingestor.tick(ack)
        assert [value] == sink.sent

    asyncio.run(scenario())


def test_a_topic_that_runs_dry_while_another_stalls_is_waited_for() -> None:
    """
    While one topic stalls, another that runs out of buffered records but has more to deliver
    is waited for as usual: the stall bound alone would let a third topic's later events pass
    and leave its next events behind the scorer's watermark.
    """
    merge = _Merge("dry.", ingest_idle_seconds=5.0, ingest_stall_seconds=30.0)
    login, buy, ret, highwaters = merge.login, merge.buy, merge.ret, merge.highwaters
    ingestor, clock, ack, sent_at = merge.ingestor, merge.clock, merge.ack, merge.sent_at
    bought, returned = merge.bought, merge.returned
    highwaters.update({(login, 0): 3, (buy, 0): 0, (ret, 0): 1})

    async def scenario() -> None:
        await ingestor.handle([merge.logged(0, _at(10, 0)), returned(0, _at(10, 5))], ack)
        assert ["10:00"] == sent_at()  # then it waits for the login topic
        clock.now += 6.0
        await ingestor.tick(ack)
        assert ["10:00", "10:05"] == sent_at()  # the login topic stalls: up to 11:00
        highwaters.update({(buy, 0): 2, (ret, 0): 2})
        await ingestor.handle([bought(0, _at(9, 30)), returned(1, _at(10, 50))], ack)
        # The purchase topic ran dry with one more record to deliver: 10:50 waits for it.
        assert ["10:00", "10:05", "09:30"] == sent_at()
        await ingestor.handle([bought(1, _at(9, 40))], ack)
        assert ["10:00", "10:05", "09:30", "09:40", "10:50"] == sent_at()

    asyncio.run(scenario())


def test_each_stalled_topic_is_given_up_on_by_its_own_silence() -> None:
    """
    A topic silent for `ingest_stall_seconds` stops bounding the others even while another
    topic, silent for less, still stalls: that one alone bounds them then.
    """
    merge = _Merge("each.", ingest_idle_seconds=5.0, ingest_stall_seconds=30.0)
    login, buy, ret, highwaters = merge.login, merge.buy, merge.ret, merge.highwaters
    ingestor, clock, ack, sent_at = merge.ingestor, merge.clock, merge.ack, merge.sent_at
    bought, returned = merge.bought, merge.returned
    highwaters.update({(login, 0): 5, (buy, 0): 5, (ret, 0): 3})

    async def scenario() -> None:
        first = [merge.logged(0, _at(9, 0)), bought(0, _at(9, 5)), returned(0, _at(9, 10))]
        await ingestor.handle([*first, returned(1, _at(12, 0)), returned(2, _at(13, 0))], ack)
        clock.now = 6.0
        await ingestor.tick(ack)
        assert ["09:00", "09:05", "09:10"] == sent_at()  # both stall: up to 10:00
        clock.now = 20.0
        await ingestor.handle([bought(1, _at(11, 30))], ack)
        assert "09:10" == sent_at()[-1]  # the login topic still bounds at 10:00
        # The login topic is given up on (silent 31 s); the purchase topic, silent 11 s,
        # bounds alone: up to 11:30 + 1 h.
        clock.now = 31.0
        await ingestor.tick(ack)
        assert ["09:10", "11:30", "12:00"] == sent_at()[-3:]
        assert (1.0, 0.0) == (merge.stalls(login, "gave_up"), merge.stalls(buy, "gave_up"))
        clock.now = 50.0
        await ingestor.tick(ack)
        assert "13:00" == sent_at()[-1]
        assert 1.0 == merge.stalls(buy, "gave_up")

    asyncio.run(scenario())
