"""
Topic management: create every churnwatch topic with the configured partition count, idempotently.

All topics share one partition count P (DESIGN.md, "Keyed by customer"): a customer's records
then sit on the same partition number in every topic. A topic that already exists with another
count is a configuration error, never silently accepted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any, Final

import kafka.errors
from kafka.admin import KafkaAdminClient, NewTopic

from churnwatch.core.errors import ConfigError
from churnwatch.sdk.broker import BrokerUnavailableError, topic_metadata
from churnwatch.sdk.settings import KafkaSettings

log = logging.getLogger(__name__)

_NO_ERROR: Final = 0
_UNKNOWN_TOPIC: Final = 3
_LEADER_NOT_AVAILABLE: Final = 5
# A topic that was just created may briefly report no leader (Apache Kafka); ask again.
_SETTLE_SECONDS: Final = 5.0
_SETTLE_BACKOFF_SECONDS: Final = 0.1


def describe_partitions(settings: KafkaSettings, topics: Iterable[str]) -> dict[str, int]:
    """
    The partition count of each named topic that exists; missing topics are left out.

    Raises:
        BrokerUnavailableError: the broker did not answer.
        ConfigError: the broker refused to describe a topic (e.g. not authorized).
    """
    wanted = list(dict.fromkeys(topics))
    counts: dict[str, int] = {}
    deadline = time.monotonic() + _SETTLE_SECONDS
    while wanted:
        pending: list[str] = []
        for entry in topic_metadata(settings, wanted):
            name, code, partitions = entry["topic"], entry["error_code"], entry["partitions"]
            if code == _UNKNOWN_TOPIC:
                continue
            if code == _NO_ERROR or (code == _LEADER_NOT_AVAILABLE and partitions):
                counts[name] = len(partitions)
            elif code == _LEADER_NOT_AVAILABLE and time.monotonic() < deadline:
                pending.append(name)
            else:
                _raise_for(name, code, "describing")
        wanted = pending
        if wanted:
            time.sleep(_SETTLE_BACKOFF_SECONDS)
    return counts


def ensure_topics(settings: KafkaSettings) -> list[str]:
    """
    Creates every churnwatch topic that does not exist yet, with `settings.partitions` partitions.

    Idempotent: a second call creates nothing. Nothing is created when an existing topic has
    the wrong partition count.

    Returns:
        The topics this call created, in `settings.topics().all()` order.

    Raises:
        ConfigError: a topic exists with a different partition count (the message names the
            topic and both counts), or the broker refused to create one (e.g. a replication
            factor larger than the number of brokers).
        BrokerUnavailableError: the broker did not answer.
    """
    names = list(settings.topics().all())
    existing = describe_partitions(settings, names)
    _check_counts(settings, existing)
    missing = [name for name in names if name not in existing]
    created: list[str] = []
    raced: list[str] = []
    if missing:
        admin = _admin(settings)
        try:
            for name in missing:
                if _create(admin, settings, name):
                    created.append(name)
                else:
                    raced.append(name)
        finally:
            admin.close()
    if raced:
        # Someone else created these between our look and our create: check them too.
        _check_counts(settings, describe_partitions(settings, raced))
    log.info(
        "topics.ensured",
        extra={
            "topics_created": created,
            "topics_existing": [name for name in names if name not in created],
            "partitions": settings.partitions,
            "replication_factor": settings.replication_factor,
        },
    )
    return created


def _check_counts(settings: KafkaSettings, counts: dict[str, int]) -> None:
    wrong = {name: n for name, n in counts.items() if n != settings.partitions}
    if wrong:
        listed = "; ".join(
            f"topic {name!r} has {n} partitions, expected {settings.partitions}"
            for name, n in wrong.items()
        )
        msg = (
            f"{listed} (CHURNWATCH_KAFKA_PARTITIONS): every churnwatch topic must share one "
            "partition count so a customer's records meet on the same partition; recreate the "
            "topic or change the setting"
        )
        raise ConfigError(msg)


def _admin(settings: KafkaSettings) -> Any:
    try:
        return KafkaAdminClient(**settings.kafka_kwargs())
    except kafka.errors.KafkaError as exc:
        msg = f"no Kafka broker answered at {settings.bootstrap}: {exc!r}"
        raise BrokerUnavailableError(msg) from exc


def _create(admin: Any, settings: KafkaSettings, name: str) -> bool:
    """
    Creates one topic; False when it already existed.
    """
    topic = NewTopic(
        name, num_partitions=settings.partitions, replication_factor=settings.replication_factor
    )
    try:
        admin.create_topics([topic], timeout_ms=settings.request_timeout_ms)
    except kafka.errors.TopicAlreadyExistsError:
        return False
    except kafka.errors.KafkaError as exc:
        what = (
            f"creating topic {name!r} with {settings.partitions} partitions and replication "
            f"factor {settings.replication_factor} failed: {type(exc).__name__}"
        )
        if getattr(exc, "retriable", False):
            msg = f"{what} (broker at {settings.bootstrap} unavailable)"
            raise BrokerUnavailableError(msg) from exc
        raise ConfigError(what) from exc
    return True


def _raise_for(name: str, code: int, doing: str) -> None:
    error = kafka.errors.for_code(code)
    msg = f"{doing} topic {name!r}: expected no error, got {error.__name__} (code {code})"
    if getattr(error, "retriable", False):
        raise BrokerUnavailableError(msg)
    raise ConfigError(msg)
