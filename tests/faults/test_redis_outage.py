"""
Redis stopped for a few seconds mid-stream and started again (AOF on): the worker and the
learner wait and retry instead of exiting, the worker's /healthz says 503 and
churnwatch_store_up 0 meanwhile, and when Redis returns they go on to the replay's result
(issue 18, item 3: every worker used to exit on the first refused connection).

Three ways to stop it (issue 14, item 5): SIGTERM (a clean shutdown: Redis writes its AOF
first); SIGKILL (Redis dies, but what it acknowledged was already written to the AOF file,
so nothing is lost); and a host crash, SIGKILL followed by cutting the AOF's tail, as a
power loss with `appendfsync everysec` does to the writes of the last second (on a Redis
before 7.2 there is no WAITAOF to wait for the fsync). Redis then comes back behind the
offsets the worker has committed to the broker: the worker finds its partition's stored
`last_offset` behind the records it is given, reads the lost ones again from the log and
applies them before the batch, so the result is still the replay's (alerts produced twice are
the same alerts, deduplicated by `alert_id` downstream).

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
from oracle import a_third_applied, check_against_replay, dead_letters
from test_stream import (
    Processes,
    Stack,
    replay,
    wait_until,
)

from churnwatch.core.features import to_dict
from needs import free_port, require_binaries

stack = test_stream.stack
processes = test_stream.processes

OUTAGE_SECONDS = 4.0
LOST_SHARE = 0.5
"""What the host crash cuts from the AOF: its newer half (many batches: a power loss with
`appendfsync everysec` loses about a second, but a cut that falls only inside the batch in
flight, which the worker writes again anyway, would test nothing)."""


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

    def stop(self, how: str = "sigterm") -> None:
        """
        `sigterm`: Redis writes its AOF and exits (a clean shutdown); `sigkill`: it dies;
        `crash`: it dies and the newer LOST_SHARE of its AOF is gone, as after a power loss
        (Redis loads a cut AOF up to its last whole command, and drops a MULTI cut in two).
        """
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
            self.popen.wait(timeout=15)
        self.popen = None
        if how == "crash":
            [newest] = sorted(
                (self.directory / "appendonlydir").glob("*.incr.aof"),
                key=lambda path: int(path.name.split(".")[-3]),
            )[-1:]
            size = newest.stat().st_size
            with newest.open("r+b") as aof:
                aof.truncate(int(size * (1.0 - LOST_SHARE)))


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


@pytest.mark.parametrize("how", ["sigterm", "sigkill", "crash"])
def test_workers_wait_out_a_redis_outage_and_end_with_the_replay(
    stack: Stack, processes: Processes, own_redis: RedisServer, how: str
) -> None:
    """
    Redis stopped, killed, or killed with its newest writes lost, for OUTAGE_SECONDS once a
    third of the events are applied: the worker and the learner live through it, /healthz
    says 503, and the result is the replay's. After the crash the worker reads the records
    Redis lost again from the log, and every customer's features are the replay's (its scores
    and alerts need not be: the lost writes held model checkpoints too).
    """
    outage(stack, processes, own_redis, how)


@pytest.mark.long
@pytest.mark.parametrize("run", range(5))
def test_five_runs_in_a_row_of_a_redis_outage(
    stack: Stack, processes: Processes, own_redis: RedisServer, run: int
) -> None:
    outage(stack, processes, own_redis, ("sigterm", "sigkill", "crash")[run % 3])


def outage(stack: Stack, processes: Processes, own_redis: RedisServer, how: str) -> None:
    records, learner, worker, progress = a_third_applied(stack, processes)
    try:
        assert (200, "ok") == (lambda h: (h[0], h[1]["status"]))(healthz(worker.metrics_port))
        own_redis.stop(how)
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
    if how != "crash":
        check_against_replay(stack, records, redelivery_allowed=True)
        return
    assert "batch.gap_reread" in worker.log.read_text(), "Redis lost nothing the worker had done"
    # Nothing lost or doubled: every customer's features (what its events add up to) are the
    # replay's. Its scores and alerts need not be: the model checkpoints in the lost half are
    # gone too, and the scorings that wanted them fall back to an earlier one.
    assert not dead_letters(stack)
    engine, _ = replay(records, stack.policy())
    for customer_id, expected in engine.states.items():
        actual = stack.state(customer_id)
        assert actual is not None, customer_id
        assert to_dict(expected.features) == to_dict(actual.features), customer_id
