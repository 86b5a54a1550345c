"""
The streaming workers under faults: a worker killed mid-stream (SIGKILL) and restarted, two
workers of which one is killed while the other takes over, and a crash between the Redis write
and the produce. Every event is applied once and every alert published (duplicates allowed).
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime, timedelta

import orjson
import pytest
import redis
import test_stream
from prometheus_client import CollectorRegistry
from test_stream import (
    PARTITIONS,
    SIM,
    Proc,
    Processes,
    Progress,
    Stack,
    assert_equals_replay,
    counter,
    publish,
    scrape,
    start_learner,
    start_worker,
    wait_until,
)

from churnwatch.core.engine import Policy
from churnwatch.core.events import parse_event
from churnwatch.core.labels import Example
from churnwatch.core.partitioning import partition_of
from churnwatch.metrics import Metrics
from churnwatch.sdk.settings import KafkaSettings, TopicNames
from churnwatch.sim import Simulation
from churnwatch.store import RedisStore, StoreSettings
from churnwatch.stream.learner import Learner
from churnwatch.stream.records import Record, example_to_json, watermark_to_json
from churnwatch.stream.scoring import ScoringWorker
from churnwatch.stream.settings import LearnerSettings, WorkerSettings

pytestmark = pytest.mark.integration

# The fixtures of test_stream.py, used here by name.
stack = test_stream.stack
processes = test_stream.processes

RUN_DEADLINE_S = 120.0


def owns_events_partitions(proc: Proc, stack: Stack) -> bool:
    """Whether the worker's latest assignment (from its log) holds a churn.events partition."""
    lines = [
        line
        for line in proc.log.read_text(errors="replace").splitlines()
        if "partitions.assigned" in line
    ]
    return bool(lines) and re.search(re.escape(stack.topics.events) + r":\d", lines[-1]) is not None


def test_a_worker_killed_mid_stream_and_restarted_applies_every_event_once(
    stack: Stack, processes: Processes
) -> None:
    """
    A worker killed with SIGKILL mid-stream (while forwarding, then while scoring) and started
    again ends with the replay's states and alerts: nothing lost, nothing applied twice.
    """
    records = list(Simulation(SIM).records())
    sent = publish(stack, records)
    start_learner(processes, stack)
    first = start_worker(processes, stack, "worker-1")
    progress = Progress(stack)
    try:
        # Early: the ingest is still forwarding (it re-forwards what it had not committed),
        # the scorers have barely begun.
        wait_until(
            lambda: len(progress.events.read(0.05)) >= sent // 8,
            60,
            "an eighth of the events forwarded",
            processes,
            every=0.02,
        )
        processes.kill(first)
        second = start_worker(processes, stack, "worker-2")
        # Then mid-way through the scoring.
        wait_until(
            lambda: progress.applied() >= sent // 3,
            60,
            "a third of the events applied",
            processes,
        )
        processes.kill(second)
        assert progress.applied() < sent, "killed too late to test anything"
        start_worker(processes, stack, "worker-3")
        wait_until(
            lambda: progress.done(f"{stack.prefix}-worker"),
            RUN_DEADLINE_S,
            "every record applied after the restart",
            processes,
        )
    finally:
        progress.close()
    assert_equals_replay(stack, records)


def test_a_worker_takes_over_the_partitions_of_a_killed_one(
    stack: Stack, processes: Processes
) -> None:
    """
    Of two workers in one group, one is killed mid-stream; the other takes over its partitions
    and the result is the replay's.
    """
    records = list(Simulation(SIM).records())
    sent = publish(stack, records)
    start_learner(processes, stack)
    doomed = start_worker(processes, stack, "worker-a")
    survivor = start_worker(processes, stack, "worker-b")
    progress = Progress(stack)
    try:
        wait_until(
            lambda: (
                owns_events_partitions(doomed, stack)
                and owns_events_partitions(survivor, stack)
                and progress.applied() >= sent // 5
            ),
            60,
            "both workers owning churn.events partitions and a fifth of the events applied",
            processes,
        )
        processes.kill(doomed)
        assert progress.applied() < sent, "killed too late to test anything"
        wait_until(
            lambda: progress.done(f"{stack.prefix}-worker"),
            RUN_DEADLINE_S,
            "the survivor applying every record",
            processes,
        )
    finally:
        progress.close()
    assert survivor.alive()
    assert_equals_replay(stack, records)


class Sink:
    """Records every produced record; deliveries succeed at once, or fail from the first alert."""

    def __init__(self, *, fail_on: str | None = None) -> None:
        self.fail_on = fail_on
        self.sent: list[tuple[str, bytes]] = []

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
        if topic == self.fail_on:
            msg = "the broker went away"
            raise ConnectionError(msg)
        self.sent.append((topic, value))
        delivery: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        delivery.set_result(None)
        return delivery

    def entry_ids(self, topics: TopicNames) -> list[str]:
        """The outbox ids of what was produced (watermark records have none)."""
        out = []
        for topic, value in self.sent:
            data = orjson.loads(value)
            if topic == topics.alerts:
                out.append(str(data["alert_id"]))
            elif topic == topics.training and data["kind"] == "example":
                out.append(str(data["example_id"]))
            elif topic == topics.deadletter:
                source = data["source"]
                out.append(f"dl|{source['topic']}|{source['partition']}|{source['offset']}")
        return sorted(out)


def direct_worker(
    redis_url: str, redis_prefix: str, count: int
) -> tuple[WorkerSettings, TopicNames, Policy, list[bytes]]:
    """
    The settings of a worker driven directly (no broker; the test's Redis prefix, no wait for
    a model), its topics and policy, and the first `count` simulated records of partition 0.
    """
    kafka = KafkaSettings(partitions=PARTITIONS, topic_prefix=redis_prefix + ".")
    settings = WorkerSettings(
        kafka=kafka,
        redis=StoreSettings(url=redis_url, prefix=redis_prefix),
        model_wait_seconds=0.0,
    )
    values = [
        raw
        for raw in Simulation(SIM).records()
        if partition_of(parse_event(raw).customer_id, PARTITIONS) == 0
    ][:count]
    return settings, kafka.topics(), settings.to_policy(), values


def test_records_written_but_not_produced_are_produced_on_the_next_assignment(
    redis_url: str, redis_prefix: str
) -> None:
    """
    A crash after a batch's Redis write and before its alerts are produced leaves the alerts,
    examples and dead letters in the outbox; the next owner produces them before anything
    else, and the records handled before the crash, delivered again, are skipped.
    """
    settings, topics, policy, values = direct_worker(redis_url, redis_prefix, 600)
    values.insert(20, b"not json")
    batch = [Record(topics.events, 0, offset, None, value) for offset, value in enumerate(values)]

    async def scenario() -> None:
        store = RedisStore(settings.redis)
        await store.start()
        acked: list[Record] = []

        async def ack(records: Sequence[Record]) -> None:
            acked.extend(records)

        try:
            crashed = ScoringWorker(
                settings,
                policy,
                store=store,
                sink=Sink(fail_on=topics.alerts),
                metrics=Metrics(CollectorRegistry()),
                topics=topics,
            )
            with pytest.raises(ConnectionError):
                await crashed.handle_batch(0, batch, ack)
            left = sorted(entry.entry_id for entry in await store.outbox(0))
            handled = int((await store.load_partition(0)).last_offset or 0) + 1
            assert any(entry.startswith("dl|") for entry in left) or handled > 20
            assert len(acked) < handled, "records of the crashed chunk were acknowledged"

            sink = Sink()
            metrics = Metrics(CollectorRegistry())
            recovering = ScoringWorker(
                settings, policy, store=store, sink=sink, metrics=metrics, topics=topics
            )
            recovering.on_assigned()
            await recovering.tick([0])
            assert left == sink.entry_ids(topics)
            assert [] == await store.outbox(0)

            acked.clear()
            await recovering.handle_batch(0, batch, ack)
            assert batch == acked
            # The records handled before the crash, and the simulator's own redeliveries.
            redelivered = sum(1 for i in range(handled, len(values)) if values[i] == values[i - 1])
            duplicates = metrics.records_duplicates.labels(topics.events)._value.get()
            assert handled + redelivered == duplicates
        finally:
            await store.close()

    asyncio.run(scenario())


def test_an_unreadable_stored_state_is_dead_lettered_and_the_batch_goes_on(
    redis_url: str, redis_prefix: str
) -> None:
    """
    Customers whose state in a real Redis is garbage (a state field that is a JSON list, one
    that is not JSON, an applied offset that is not a number) are dead-lettered once each with
    their customer id and bytes, start anew with this batch's events, and the other customers
    of the batch are applied as usual; no crash.
    """
    settings, topics, policy, values = direct_worker(redis_url, redis_prefix, 300)
    customers = list(dict.fromkeys(parse_event(raw).customer_id for raw in values))
    garbage = {
        customers[0]: {"s": "[1, 2, 3]"},
        customers[1]: {"s": "{not json", "f.v": "1"},
        customers[2]: {"s": "{}", "o:0": "twelve"},
    }
    batch = [Record(topics.events, 0, offset, None, value) for offset, value in enumerate(values)]

    async def scenario() -> None:
        store = RedisStore(settings.redis)
        await store.start()
        client = redis.Redis.from_url(redis_url)
        try:
            for customer_id, fields in garbage.items():
                client.hset(store.keys.customer(customer_id), mapping=fields)
            sink = Sink()
            metrics = Metrics(CollectorRegistry())
            worker = ScoringWorker(
                settings, policy, store=store, sink=sink, metrics=metrics, topics=topics
            )
            acked: list[Record] = []

            async def ack(records: Sequence[Record]) -> None:
                acked.extend(records)

            await worker.handle_batch(0, batch, ack)
            assert batch == acked
            letters = [orjson.loads(v) for t, v in sink.sent if t == topics.deadletter]
            by_customer = {
                letter["customer_id"]: letter
                for letter in letters
                if letter["reason"] == "corrupt_state"
            }
            assert set(garbage) == set(by_customer)
            for customer_id, letter in by_customer.items():
                assert customer_id in letter["message"]
                original = orjson.loads(base64.b64decode(letter["original_b64"]))
                assert set(garbage[customer_id].items()) <= set(
                    zip(original[::2], original[1::2], strict=True)
                )
            assert len(garbage) == metrics.states_dead_lettered._value.get()
            states = await store.load_states(customers)
            assert set(customers) == set(states)
            for customer_id in customers:
                # distinct events (the simulator redelivers some), cancels not counted
                events = {
                    e.event_id
                    for e in map(parse_event, values)
                    if e.customer_id == customer_id and e.type != "cancel"
                }
                assert len(events) == states[customer_id][0].features.event_count
        finally:
            client.close()
            await store.close()

    asyncio.run(scenario())


def test_training_records_the_learner_cannot_use_go_to_the_dead_letter_topic(
    redis_url: str, redis_prefix: str
) -> None:
    """
    A churn.training record that is not a training record, and a watermark of a partition that
    does not exist, are each dead-lettered by the learner with their reason, source and bytes
    (counted, awaited), and the good records around them are taken.
    """
    kafka = KafkaSettings(partitions=PARTITIONS, topic_prefix=redis_prefix + ".")
    settings = LearnerSettings(kafka=kafka, redis=StoreSettings(url=redis_url, prefix=redis_prefix))
    topics = kafka.topics()
    at = datetime(2026, 1, 5, tzinfo=UTC)
    example = Example("c1", at, at + timedelta(days=30), {"days_since_event": 0.0}, churned=True)
    values = [
        example_to_json(example),
        b"not json",
        watermark_to_json(PARTITIONS + 3, at),
        watermark_to_json(0, at),
    ]
    batch = [Record(topics.training, 1, 40 + i, b"c1", value) for i, value in enumerate(values)]

    async def scenario() -> None:
        store = RedisStore(settings.redis)
        await store.start()
        sink = Sink()
        metrics = Metrics(CollectorRegistry())
        learner = Learner(
            settings,
            store=store,
            metrics=metrics,
            topic=topics.training,
            sink=sink,
            deadletter_topic=topics.deadletter,
        )
        try:
            await learner.handle(batch)
        finally:
            await store.close()
        letters = [orjson.loads(v) for t, v in sink.sent if t == topics.deadletter]
        assert ["malformed", "bad_partition"] == [letter["reason"] for letter in letters]
        for letter, offset in zip(letters, (41, 42), strict=True):
            assert {"topic": topics.training, "partition": 1, "offset": offset} == letter["source"]
            assert values[offset - 40] == base64.b64decode(letter["original_b64"])
            assert "learner" == letter["stage"]
        dead = metrics.records_dead_lettered
        assert 1 == dead.labels(topics.training, "malformed")._value.get()
        assert 1 == dead.labels(topics.training, "bad_partition")._value.get()
        assert 2 == metrics.records_processed.labels(topics.training)._value.get()
        assert 1 == learner.curriculum.pending()

    asyncio.run(scenario())


def test_a_learner_killed_mid_stream_and_restarted_saves_the_same_checkpoints(
    stack: Stack, processes: Processes
) -> None:
    """
    A learner killed mid-stream rebuilds from churn.training and its newest checkpoint; the
    scorers wait for it, and the result is the replay's.
    """
    records = list(Simulation(SIM).records())
    sent = publish(stack, records)
    learner = start_learner(processes, stack)
    worker = start_worker(processes, stack)
    progress = Progress(stack)
    try:
        wait_until(
            lambda: progress.applied() >= sent // 3, 60, "a third of the events applied", processes
        )
        processes.kill(learner)
        assert progress.applied() < sent, "killed too late to test anything"
        processes.start("learner", stack, "learner-2", f"{stack.prefix}-learner")
        wait_until(
            lambda: progress.done(f"{stack.prefix}-worker"),
            RUN_DEADLINE_S,
            "every record applied with the restarted learner",
            processes,
        )
    finally:
        progress.close()
    assert_equals_replay(stack, records)
    assert 0.0 == counter(scrape(worker.metrics_port), "churnwatch_model_fallback_total")
