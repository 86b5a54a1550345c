"""
The fixtures of the real services on loopback, shared by tests/integration and tests/faults:
the broker's address and an admin client, Redis's URL and a client.

Addresses come from CHURNWATCH_TEST_KAFKA (host:port) and CHURNWATCH_TEST_REDIS (a redis://
URL), as `bash deploy/local/stack.sh up` prints them. When they are unset the tests skip on a
laptop and fail in CI (CI=true), so a green build means they ran.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis
from kafka.admin import KafkaAdminClient

from needs import unavailable


def _address(variable: str) -> str:
    value = os.environ.get(variable, "").strip()
    if not value:
        unavailable(f"{variable} is not set")
    return value


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """
    The Kafka-protocol broker's bootstrap address, host:port.
    """
    return _address("CHURNWATCH_TEST_KAFKA")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """
    The Redis URL, e.g. redis://127.0.0.1:16379/0.
    """
    return _address("CHURNWATCH_TEST_REDIS")


@contextmanager
def admin_client(bootstrap: str) -> Iterator[KafkaAdminClient]:
    """A kafka-python admin client on `bootstrap`, closed at the end."""
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap, client_id="churnwatch-it", request_timeout_ms=10_000
    )
    try:
        yield admin
    finally:
        admin.close()


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> Iterator[KafkaAdminClient]:
    """
    One kafka-python admin client for the session.
    """
    with admin_client(kafka_bootstrap) as admin:
        yield admin


@pytest.fixture(scope="session")
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """
    A redis-py client on CHURNWATCH_TEST_REDIS that decodes replies to str.
    """
    client = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=5)
    try:
        yield client
    finally:
        client.close()
