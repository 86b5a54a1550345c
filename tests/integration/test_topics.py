"""
Topic management against the real broker: every topic, one partition count, idempotent.
"""

from __future__ import annotations

from collections.abc import Iterator
from uuid import uuid4

import pytest
from kafka.admin import KafkaAdminClient, NewTopic

from churnwatch.core.errors import ConfigError
from churnwatch.sdk.settings import KafkaSettings
from churnwatch.sdk.topics import describe_partitions, ensure_topics

PARTITIONS = 3


@pytest.fixture
def settings(kafka_bootstrap: str, kafka_admin: KafkaAdminClient) -> Iterator[KafkaSettings]:
    """
    KafkaSettings whose topic names carry a prefix no other test uses; its topics are deleted.
    """
    built = KafkaSettings(
        bootstrap=kafka_bootstrap,
        topic_prefix=f"cw-it-{uuid4().hex}.",
        partitions=PARTITIONS,
        request_timeout_ms=10_000,
    )
    try:
        yield built
    finally:
        existing = list(describe_partitions(built, built.topics().all()))
        if existing:
            kafka_admin.delete_topics(existing, timeout_ms=10_000)


def test_ensure_topics_creates_every_topic_with_the_configured_partition_count(
    settings: KafkaSettings,
) -> None:
    """
    The first call creates all ten topics, each with the configured number of partitions.
    """
    names = settings.topics().all()

    created = ensure_topics(settings)

    assert 10 == len(names)
    assert list(names) == created
    assert {name: PARTITIONS for name in names} == describe_partitions(settings, names)


def test_ensure_topics_a_second_time_changes_nothing(settings: KafkaSettings) -> None:
    """
    A second call creates nothing and leaves every topic as it was.
    """
    names = settings.topics().all()
    ensure_topics(settings)

    created = ensure_topics(settings)

    assert [] == created
    assert {name: PARTITIONS for name in names} == describe_partitions(settings, names)


def test_ensure_topics_creates_only_the_missing_topics(
    settings: KafkaSettings, kafka_admin: KafkaAdminClient
) -> None:
    """
    A topic that already exists with the right partition count is kept; the others are created.
    """
    alerts = settings.topics().alerts
    kafka_admin.create_topics([NewTopic(alerts, PARTITIONS, 1)], timeout_ms=10_000)

    created = ensure_topics(settings)

    assert [name for name in settings.topics().all() if name != alerts] == created


def test_a_topic_with_another_partition_count_is_a_config_error_naming_it(
    settings: KafkaSettings, kafka_admin: KafkaAdminClient
) -> None:
    """
    An existing topic with a different partition count raises ConfigError naming the topic and
    both counts, and nothing else is created.
    """
    alerts = settings.topics().alerts
    kafka_admin.create_topics([NewTopic(alerts, 2, 1)], timeout_ms=10_000)

    with pytest.raises(ConfigError) as caught:
        ensure_topics(settings)

    message = str(caught.value)
    assert f"topic {alerts!r} has 2 partitions, expected {PARTITIONS}" in message
    assert {alerts: 2} == describe_partitions(settings, settings.topics().all())


def test_describing_a_missing_topic_neither_finds_nor_creates_it(settings: KafkaSettings) -> None:
    """
    describe_partitions leaves out topics that do not exist, and asking does not create them.
    """
    name = settings.topics().events

    first = describe_partitions(settings, [name])
    second = describe_partitions(settings, [name])

    assert {} == first
    assert {} == second


def test_the_topics_create_command_reports_each_topic(
    settings: KafkaSettings, kafka_bootstrap: str
) -> None:
    """
    `churnwatch topics create` creates the topics named by the environment and says so per topic.
    """
    import click
    from click.testing import CliRunner

    from churnwatch.sdk.commands import register

    group = click.Group("churnwatch")
    register(group)
    env = {
        "CHURNWATCH_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "CHURNWATCH_KAFKA_TOPIC_PREFIX": settings.topic_prefix,
        "CHURNWATCH_KAFKA_PARTITIONS": str(PARTITIONS),
    }

    first = CliRunner().invoke(group, ["topics", "create"], env=env)
    second = CliRunner().invoke(group, ["topics", "create"], env=env)

    assert (0, 0) == (first.exit_code, second.exit_code), first.output + second.output
    assert f"{settings.topics().alerts}: created ({PARTITIONS} partitions)" in first.output
    assert "10 created, 0 existed" in first.output
    assert "0 created, 10 existed" in second.output
