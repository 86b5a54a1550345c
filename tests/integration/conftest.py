"""
Fixtures for integration tests against the real broker and Redis on loopback.

Addresses come from CHURNWATCH_TEST_KAFKA (host:port) and CHURNWATCH_TEST_REDIS
(a redis:// URL). Start the services with `bash deploy/local/stack.sh up` and
export the variables it prints. When they are unset the tests skip on a laptop
and fail in CI (CI=true), so a green build means they ran.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import redis
from kafka.admin import KafkaAdminClient, NewTopic

from needs import require_binaries, unavailable

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
# Partitions of each test topic: more than one, so group assignment is exercised.
TEST_TOPIC_PARTITIONS = 3


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """
    Marks every test under tests/integration with the `integration` marker.
    """
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def promtool() -> str:
    """
    The path of promtool (from Debian's prometheus package).
    """
    require_binaries("promtool")
    return str(shutil.which("promtool"))


@pytest.fixture(scope="session")
def stack_script() -> Path:
    """
    deploy/local/stack.sh, once the programs it starts are installed.
    """
    require_binaries("redis-server", "redis-cli", "prometheus")
    tansu = REPO_ROOT / "deploy" / "local" / "bin" / "tansu"
    if not tansu.is_file() and shutil.which("tansu") is None:
        unavailable(f"tansu not found at {tansu} nor on PATH (install: `bash .ci/install.sh`)")
    return REPO_ROOT / "deploy" / "local" / "stack.sh"


@pytest.fixture
def kafka_topic(kafka_admin: KafkaAdminClient) -> Iterator[str]:
    """
    A fresh topic with TEST_TOPIC_PARTITIONS partitions, deleted after the test.
    """
    name = f"cw-it-{uuid4().hex}"
    kafka_admin.create_topics(
        [NewTopic(name, num_partitions=TEST_TOPIC_PARTITIONS, replication_factor=1)],
        timeout_ms=10_000,
    )
    try:
        yield name
    finally:
        kafka_admin.delete_topics([name], timeout_ms=10_000)


@pytest.fixture
def kafka_group_id() -> str:
    """
    A consumer group id no other test uses.
    """
    return f"cw-it-{uuid4().hex}"


@pytest.fixture
def kafka_consumer_settings(kafka_bootstrap: str) -> dict[str, Any]:
    """
    KafkaConsumer keyword arguments with short group timeouts for tests.

    Tansu holds a JoinGroup until the member's rebalance timeout (kafka-python's
    max_poll_interval_ms) runs out, so it is kept short; the request timeout must
    exceed the session timeout. Offsets are committed by the test, never automatically.
    """
    return {
        "bootstrap_servers": kafka_bootstrap,
        "auto_offset_reset": "earliest",
        "enable_auto_commit": False,
        "session_timeout_ms": 6_000,
        "heartbeat_interval_ms": 1_000,
        "max_poll_interval_ms": 3_000,
        "request_timeout_ms": 10_000,
    }


@pytest.fixture
def redis_prefix(redis_client: redis.Redis) -> Iterator[str]:
    """
    A key prefix no other test uses; every key under it is deleted after the test.
    """
    prefix = f"cw-it-{uuid4().hex}"
    try:
        yield prefix
    finally:
        keys = list(redis_client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            redis_client.delete(*keys)


@pytest.fixture
def api_site(redis_url: str, redis_prefix: str) -> Iterator[Any]:
    """
    The at-risk API on a free loopback port over a Redis prefix seeded from a replay of 120
    simulated customers (tests/integration/api_support.py); stopped after the test.
    """
    from api_support import ApiSite

    site = ApiSite(redis_url, redis_prefix)
    site.start()
    try:
        yield site
    finally:
        site.close()


@pytest.fixture
def guarded_api_site(redis_url: str, redis_prefix: str) -> Iterator[Any]:
    """
    `api_site` with its tokens on (CHURNWATCH_API_AUTH=tokens): `site.tokens` holds the read
    and the write token, fresh for each test; `site.token` (what its requests send) is None.
    """
    from api_support import ApiSite

    tokens = {"read": f"read-{uuid4().hex}", "write": f"write-{uuid4().hex}"}
    auth = {"auth": "tokens", "read_token": tokens["read"], "write_token": tokens["write"]}
    site = ApiSite(redis_url, redis_prefix, auth=auth, tokens=tokens)
    site.start()
    try:
        yield site
    finally:
        site.close()
