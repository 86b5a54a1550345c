"""
The producer SDK against the real broker: validation, routing, keys, partitions, files, CLI.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import click
import orjson
import pytest
from click.testing import CliRunner
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.consumer.fetcher import ConsumerRecord
from kafka.partitioner.default import DefaultPartitioner
from prometheus_client import CollectorRegistry

from churnwatch.core.errors import BadEventError, ChurnwatchError
from churnwatch.core.events import EVENT_TYPES, EventType, LoginEvent, event_to_json
from churnwatch.core.partitioning import partition_of
from churnwatch.metrics import Metrics
from churnwatch.sdk.broker import BrokerUnavailableError, grants_producer_id
from churnwatch.sdk.commands import register
from churnwatch.sdk.producer import EventProducer, Rejection, publish_file, raw_producer
from churnwatch.sdk.settings import KafkaSettings
from churnwatch.sdk.topics import describe_partitions, ensure_topics

PARTITIONS = 3
DEADLINE_S = 20.0


def event(kind: EventType, customer_id: str, n: int = 0) -> dict[str, Any]:
    """
    A valid event of the given type for a customer.
    """
    base: dict[str, Any] = {
        "event_id": f"{kind}-{customer_id}-{n}",
        "type": kind,
        "customer_id": customer_id,
        "ts": f"2024-03-01T10:{n % 60:02d}:00Z",
    }
    extra: dict[EventType, dict[str, Any]] = {
        "login": {"channel": "web"},
        "purchase": {"amount": 25.5, "currency": "EUR", "order_id": f"o{n}"},
        "ticket": {"ticket_id": f"t{n}", "severity": "high", "status": "open"},
        "return": {"order_id": f"o{n}", "amount": 10.0, "reason": "broken"},
        "cancel": {"reason": "too expensive"},
    }
    return base | extra[kind]


def line(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj)


@pytest.fixture
def settings(kafka_bootstrap: str, kafka_admin: KafkaAdminClient) -> Iterator[KafkaSettings]:
    """
    KafkaSettings with a topic prefix of its own and every topic created; deleted afterwards.
    """
    built = KafkaSettings(
        bootstrap=kafka_bootstrap,
        topic_prefix=f"cw-it-{uuid4().hex}.",
        partitions=PARTITIONS,
        request_timeout_ms=10_000,
        max_block_ms=2_000,
        linger_ms=2,
    )
    ensure_topics(built)
    try:
        yield built
    finally:
        existing = list(describe_partitions(built, built.topics().all()))
        if existing:
            kafka_admin.delete_topics(existing, timeout_ms=10_000)


def read_topic(bootstrap: str, topic: str, at_least: int = 0) -> list[ConsumerRecord]:
    """
    Every record on a topic: reads each partition up to the high watermark its fetches report.

    Partitions are assigned (no group), so there is no join to wait for. `at_least` covers a
    record acknowledged but not yet visible to fetches.
    """
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # An empty partition answers a fetch only after this wait; keep it short.
        fetch_max_wait_ms=50,
    )
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
            highs = [consumer.highwater(tp) for tp in partitions]
            if (
                len(records) >= at_least
                and None not in highs
                and all(
                    consumer.position(tp) >= high
                    for tp, high in zip(partitions, highs, strict=True)
                )
            ):
                return sorted(records, key=lambda r: (r.partition, r.offset))
        pytest.fail(f"expected to read {topic} to its end within {DEADLINE_S}s")
    finally:
        consumer.close()


def test_partition_of_is_kafka_pythons_default_partitioner() -> None:
    """
    churnwatch's partition_of places a key exactly where kafka-python's default partitioner does.
    """
    partitioner = DefaultPartitioner()
    keys = [f"customer-{i}" for i in range(2_000)] + ["", "é", "a-little-bit-long-string"]
    for count in (1, 2, 3, 6, 12):
        every = list(range(count))
        expected = [partitioner(key.encode(), every, every) for key in keys]
        assert expected == [partition_of(key, count) for key in keys]


def test_events_land_on_their_ingest_topic_keyed_and_partitioned_by_customer(
    settings: KafkaSettings, kafka_bootstrap: str
) -> None:
    """
    Each event type goes to its ingest topic, keyed by customer_id, on partition_of(customer, P),
    with the bytes it was given.
    """
    customers = [f"c{i}" for i in range(8)]
    sent: list[tuple[EventType, str, bytes, Any]] = []
    with EventProducer(settings) as producer:
        for kind in EVENT_TYPES:
            for customer in customers:
                raw = line(event(kind, customer))
                sent.append((kind, customer, raw, producer.send(raw)))
        producer.flush()
    topics = settings.topics()

    for kind, customer, _raw, future in sent:
        metadata = future.get(timeout=DEADLINE_S)
        assert (topics.for_event(kind), partition_of(customer, PARTITIONS)) == (
            metadata.topic,
            metadata.partition,
        )
    for kind in EVENT_TYPES:
        expected = {(customer.encode(), raw) for k, customer, raw, _ in sent if k == kind}
        records = read_topic(kafka_bootstrap, topics.for_event(kind), at_least=len(customers))
        assert expected == {(r.key, r.value) for r in records}
        assert all(r.partition == partition_of(r.key.decode(), PARTITIONS) for r in records)


def test_events_and_dicts_are_sent_as_their_canonical_json(
    settings: KafkaSettings, kafka_bootstrap: str
) -> None:
    """
    An Event object or a dict is sent as the event's canonical JSON (event_to_json).
    """
    as_dict = event("login", "c-dict")
    as_event = LoginEvent.model_validate(event("login", "c-event", 1))
    with EventProducer(settings) as producer:
        producer.send(as_dict).get(timeout=DEADLINE_S)
        producer.send(as_event).get(timeout=DEADLINE_S)

    records = read_topic(kafka_bootstrap, settings.topics().for_event("login"), at_least=2)

    expected = {
        event_to_json(LoginEvent.model_validate(as_dict)),
        event_to_json(as_event),
    }
    assert expected == {r.value for r in records}


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b"{not json", "malformed_json"),
        (
            line({k: v for k, v in event("purchase", "c1").items() if k != "amount"}),
            "missing_field",
        ),
        (line(event("purchase", "c1") | {"amount": -3}), "invalid_value"),
        (line(event("login", "c1") | {"type": "logout"}), "unknown_type"),
        (line(event("login", "c1") | {"ts": "2024-03-01T10:00:00"}), "naive_timestamp"),
    ],
)
def test_a_bad_event_raises_and_is_not_sent(
    settings: KafkaSettings, kafka_bootstrap: str, bad: bytes, reason: str
) -> None:
    """
    A bad event raises BadEventError with its reason and nothing reaches the broker: the next
    good event to the same topic is the topic's first record.
    """
    registry = CollectorRegistry()
    with EventProducer(settings, metrics=Metrics(registry)) as producer:
        with pytest.raises(BadEventError) as caught:
            producer.send(bad)
        kind: EventType = "purchase" if b"purchase" in bad else "login"
        good = producer.send(event(kind, "c1")).get(timeout=DEADLINE_S)

    assert reason == caught.value.reason
    assert 0 == good.offset
    topics = settings.topics()
    records = [
        r
        for topic in topics.ingest_topics()
        for r in read_topic(kafka_bootstrap, topic, at_least=int(topic == good.topic))
    ]
    assert 1 == len(records)
    assert 1.0 == registry.get_sample_value("churnwatch_rejected_total", {"reason": reason})
    assert 1.0 == registry.get_sample_value("churnwatch_published_total", {"topic": good.topic})


def test_an_oversize_event_is_refused(settings: KafkaSettings) -> None:
    """
    A payload over the size limit is refused as `oversize`, whether given as bytes or as a dict.
    """
    big = event("login", "c1") | {"note": "x" * 2_000}
    with EventProducer(settings, max_event_bytes=1_000) as producer:
        with pytest.raises(BadEventError) as from_bytes:
            producer.send(line(big))
        with pytest.raises(BadEventError) as from_dict:
            producer.send(big)

    assert ("oversize", "oversize") == (from_bytes.value.reason, from_dict.value.reason)


def test_publish_file_sends_the_good_lines_and_counts_the_bad_ones_by_reason(
    settings: KafkaSettings, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """
    publish_file sends every valid line, skips empty lines, and counts the others by reason
    with their line numbers, without stopping.
    """
    lines = [
        line(event("login", "c1")),
        b"{oops",
        b"",
        line(event("purchase", "c2")),
        line({k: v for k, v in event("ticket", "c3").items() if k != "severity"}),
        b"[1, 2]",
        b"   ",
        line(event("cancel", "c4")),
        b"\xff\xfe",
        line(event("return", "c5")) + b"\r",
    ]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines))
    seen: list[int] = []

    with EventProducer(settings) as producer:
        summary = publish_file(path, producer, seen.append)

    assert 4 == summary.sent
    assert (
        Counter({"malformed_json": 1, "missing_field": 1, "not_an_object": 1, "not_utf8": 1})
        == summary.rejected
    )
    assert [2, 5, 6, 9] == [r.line for r in summary.first_rejections]
    assert (
        Rejection(2, "malformed_json", summary.first_rejections[0].message)
        == (summary.first_rejections[0])
    )
    assert (Counter(), None) == (summary.failed, summary.stopped)
    assert [10] == seen
    topics = settings.topics()
    delivered = {
        kind: [r.value for r in read_topic(kafka_bootstrap, topics.for_event(kind))]
        for kind in EVENT_TYPES
    }
    assert {
        "login": [lines[0]],
        "purchase": [lines[3]],
        "ticket": [],
        "cancel": [lines[7]],
        "return": [lines[9].rstrip(b"\r")],
    } == delivered


def test_the_publish_command_prints_sent_and_rejected_counts(
    settings: KafkaSettings, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """
    `churnwatch publish FILE` prints what was sent and what was rejected by reason, exiting 0.
    """
    path = tmp_path / "events.jsonl"
    path.write_bytes(
        b"\n".join([line(event("login", "c1")), b"nope", line(event("login", "c2")), b"{}"]) + b"\n"
    )
    group = click.Group("churnwatch")
    register(group)
    env = {
        "CHURNWATCH_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "CHURNWATCH_KAFKA_TOPIC_PREFIX": settings.topic_prefix,
        "CHURNWATCH_KAFKA_PARTITIONS": str(PARTITIONS),
    }

    result = CliRunner().invoke(group, ["publish", str(path)], env=env)

    assert 0 == result.exit_code, result.output
    assert "sent: 2" in result.output
    assert "rejected: 2" in result.output
    assert "  malformed_json: 1" in result.output
    assert "  missing_field: 1" in result.output
    assert "line 2: malformed_json:" in result.output


def test_the_publish_command_exits_1_when_nothing_could_be_sent(
    settings: KafkaSettings, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """
    A file of nothing but bad lines publishes nothing, and the command exits 1.
    """
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"nope\n{}\n")
    group = click.Group("churnwatch")
    register(group)
    env = {
        "CHURNWATCH_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "CHURNWATCH_KAFKA_TOPIC_PREFIX": settings.topic_prefix,
    }

    result = CliRunner().invoke(group, ["publish", "--quiet", str(path)], env=env)

    assert 1 == result.exit_code, result.output
    assert "sent: 0" in result.output


def test_publish_before_the_topics_exist_fails_in_one_line_and_sends_nothing(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """
    `publish` without `topics create` checks the ingest topics first and fails with one error
    line naming the missing ones and the command that creates them; no topic is created.
    """
    prefix = f"cw-it-{uuid4().hex}."
    path = tmp_path / "events.jsonl"
    path.write_bytes(line(event("login", "c1")) + b"\n")
    group = click.Group("churnwatch")
    register(group)
    env = {"CHURNWATCH_KAFKA_BOOTSTRAP": kafka_bootstrap, "CHURNWATCH_KAFKA_TOPIC_PREFIX": prefix}

    result = CliRunner().invoke(group, ["publish", "--quiet", str(path)], env=env)

    assert 1 == result.exit_code, result.output
    (error,) = [row for row in result.output.splitlines() if row.startswith("Error: ")]
    topics = KafkaSettings(bootstrap=kafka_bootstrap, topic_prefix=prefix).topics()
    for topic in topics.ingest_topics():
        assert topic in error
    assert "churnwatch topics create" in error
    assert "sent:" not in result.output
    assert {} == describe_partitions(
        KafkaSettings(bootstrap=kafka_bootstrap, topic_prefix=prefix), topics.ingest_topics()
    )


def test_sending_to_a_topic_that_does_not_exist_fails_fast_and_creates_nothing(
    kafka_bootstrap: str,
) -> None:
    """
    Without `topics create`, send() raises BrokerUnavailableError naming the topic after
    max_block_ms, and the producer does not auto-create the topic.
    """
    settings = KafkaSettings(
        bootstrap=kafka_bootstrap, topic_prefix=f"cw-it-{uuid4().hex}.", max_block_ms=500
    )
    topic = settings.topics().for_event("login")

    with EventProducer(settings) as producer, pytest.raises(BrokerUnavailableError) as caught:
        producer.send(event("login", "c1"))

    assert repr(topic) in str(caught.value)
    assert {} == describe_partitions(settings, [topic])


def test_idempotence_follows_what_the_broker_grants(settings: KafkaSettings) -> None:
    """
    In `auto` mode the producer is idempotent exactly when the broker grants producer ids
    (Tansu does not, Apache Kafka does), and it can send either way.
    """
    granted, _why = grants_producer_id(settings)

    with EventProducer(settings) as producer:
        metadata = producer.send(event("login", "c1")).get(timeout=DEADLINE_S)

    assert granted == producer.idempotent
    assert 0 == metadata.offset


def test_sending_before_start_is_an_error(settings: KafkaSettings) -> None:
    """
    The producer connects in start(), so send() before it raises instead of connecting.
    """
    producer = EventProducer(settings)

    with pytest.raises(ChurnwatchError, match="start"):
        producer.send(event("login", "c1"))


def test_raw_producer_publishes_bytes_the_sdk_refuses(
    settings: KafkaSettings, kafka_bootstrap: str
) -> None:
    """
    raw_producer sends malformed bytes straight to an ingest topic (for dead-letter tests).
    """
    topic = settings.topics().for_event("login")
    producer = raw_producer(settings)
    try:
        producer.send(topic, key=b"c1", value=b"{not json").get(timeout=DEADLINE_S)
    finally:
        producer.close(timeout=5)

    assert [(b"c1", b"{not json")] == [
        (r.key, r.value) for r in read_topic(kafka_bootstrap, topic, at_least=1)
    ]


def test_settings_never_show_the_password() -> None:
    """
    The SASL password reaches kafka-python intact but prints as stars in reprs and logs.
    """
    settings = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password="hunter2",  # type: ignore[arg-type]
    )

    kwargs = settings.kafka_kwargs()

    assert "hunter2" == kwargs["sasl_plain_password"] + ""
    assert "hunter2" not in repr(kwargs)
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in repr(settings.describe())


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"security_protocol": "SASL_SSL"}, "needs sasl_mechanism"),
        ({"sasl_mechanism": "PLAIN"}, "needs security_protocol"),
        (
            {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN"},
            "needs sasl_username and sasl_password",
        ),
        ({"topic_prefix": "bad prefix/"}, "topic name must be"),
        ({"topic_alerts": "churn.events"}, "must be distinct"),
        ({"bootstrap": "localhost"}, "expected host:port"),
    ],
)
def test_invalid_kafka_settings_are_refused(fields: dict[str, Any], expected: str) -> None:
    """
    Inconsistent security settings, illegal or clashing topic names and bad addresses are refused.
    """
    with pytest.raises(ValueError, match=expected):
        KafkaSettings(**fields)
