"""
Redis stopped for a few seconds mid-stream and started again (AOF on, a clean shutdown): the
worker and the learner wait and retry instead of exiting, the worker's /healthz says 503 and
churnwatch_store_up 0 meanwhile, and when Redis returns they go on to the replay's result
(issue 18, item 3: every worker used to exit on the first refused connection).

The test runs its own redis-server, on a free port with its own data directory, so that
stopping it touches nothing else.
"""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import redis
import test_stream
from oracle import check_against_replay
from test_stream import (
    SIM,
    Processes,
    Progress,
    Stack,
    publish,
    start_learner,
    start_worker,
    wait_until,
)

from churnwatch.sim import Simulation
from needs import free_port, require_binaries

stack = test_stream.stack
processes = test_stream.processes

OUTAGE_SECONDS = 4.0


@dataclass
class RedisServer:
    """A redis-server of the test's own: AOF every second, stopped and started at will."""

    port: int
    directory: Path
    popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = ["--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.directory)]
        args += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
        self.popen = subprocess.Popen(
            ["redis-server", *args],
            stdout=(self.directory / "redis.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        client = redis.Redis(port=self.port, socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    pytest.fail(f"redis-server on port {self.port} did not start")
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        """SIGTERM: Redis writes its AOF and exits (a clean shutdown)."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            self.popen.wait(timeout=15)
        self.popen = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    require_binaries("redis-server")
    server = RedisServer(free_port(), tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


# The stack of this module's tests uses the test's own Redis.
@pytest.fixture
def redis_url(own_redis: RedisServer) -> str:
    return own_redis.url


@pytest.fixture
def redis_client(own_redis: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(own_redis.url, decode_responses=True, socket_timeout=5)
    try:
        yield client
    finally:
        client.close()


def healthz(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read())


def test_workers_wait_out_a_redis_outage_and_end_with_the_replay(
    stack: Stack, processes: Processes, own_redis: RedisServer
) -> None:
    """
    Redis stopped for OUTAGE_SECONDS once a third of the events are applied: the worker and
    the learner live through it, /healthz says 503, and the result is the replay's.
    """
    outage(stack, processes, own_redis)


@pytest.mark.long
@pytest.mark.parametrize("run", range(5))
def test_five_runs_in_a_row_of_a_redis_outage(
    stack: Stack, processes: Processes, own_redis: RedisServer, run: int
) -> None:
    outage(stack, processes, own_redis)


def outage(stack: Stack, processes: Processes, own_redis: RedisServer) -> None:
    records = list(Simulation(SIM).records())
    sent = publish(stack, records)
    learner = start_learner(processes, stack)
    worker = start_worker(processes, stack, "worker")
    progress = Progress(stack)
    try:
        wait_until(
            lambda: progress.applied() >= sent // 3,
            60,
            "a third of the events applied",
            processes,
            every=0.05,
        )
        assert progress.applied() < sent, "stopped Redis too late to test anything"
        assert (200, "ok") == (lambda h: (h[0], h[1]["status"]))(healthz(worker.metrics_port))
        own_redis.stop()
        started = time.monotonic()
        seen: list[tuple[int, dict[str, object]]] = []
        wait_until(
            lambda: seen.append(healthz(worker.metrics_port)) or seen[-1][0] == 503,
            OUTAGE_SECONDS,
            "/healthz saying 503 while Redis is down",
            processes,
            every=0.1,
        )
        assert "unavailable" == seen[-1][1]["redis"]
        samples = test_stream.scrape(worker.metrics_port)
        assert 0.0 == test_stream.counter(samples, "churnwatch_store_up")
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - started)))
        assert worker.alive(), worker.tail()
        assert learner.alive(), learner.tail()
        own_redis.start()
        wait_until(
            lambda: progress.done(f"{stack.prefix}-worker"),
            120,
            "every record applied after Redis returned",
            processes,
        )
    finally:
        progress.close()
    assert worker.alive(), processes.tails()
    assert learner.alive(), processes.tails()
    assert 200 == healthz(worker.metrics_port)[0]
    assert "store.unavailable" in worker.log.read_text()
    assert "store.recovered" in worker.log.read_text()
    check_against_replay(stack, records, redelivery_allowed=True)
