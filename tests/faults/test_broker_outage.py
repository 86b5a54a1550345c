"""
The broker unreachable for a few seconds mid-stream (issue 14, item 4, as far as this machine
allows): the worker, the learner and the publisher's clients lose every connection at once and
cannot reconnect until it is back, as in a broker restart or a network partition; then they
reconnect by themselves, and the result is the replay's (alerts may be produced twice: at-least
once out, deduplicated downstream by alert_id).

The test runs a broker of its own (Tansu, memory storage) behind a TCP proxy on loopback that it
can cut: the broker advertises the proxy's address, so every client connection goes through the
proxy. A real restart of the broker process is not what this is: Tansu's memory storage loses
every record on restart, and its PostgreSQL and S3 engines are not available here; the clients'
side (connections refused and reset, then back) is the same.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import test_stream
from kafka.admin import KafkaAdminClient
from oracle import a_third_applied, check_against_replay
from test_stream import (
    Processes,
    Stack,
    wait_until,
)

from needs import end, free_port, unavailable
from services import admin_client

stack = test_stream.stack
processes = test_stream.processes

REPO_ROOT = Path(__file__).resolve().parents[2]
OUTAGE_SECONDS = 5.0


@dataclass
class Proxy:
    """
    Forwards TCP connections from 127.0.0.1:`port` to 127.0.0.1:`target`, until `cut()`
    closes every connection and the listening socket; `restore()` listens again.
    """

    port: int
    target: int
    _listener: socket.socket | None = None
    _conns: list[socket.socket] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


def _tansu() -> str:
    local = REPO_ROOT / "deploy" / "local" / "bin" / "tansu"
    found = str(local) if os.access(local, os.X_OK) else shutil.which("tansu")
    if found is None:
        unavailable("tansu not found (install: `bash .ci/install.sh`)")
    return found


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    """A broker of the test's own on a free port, advertised at the proxy's port."""
    broker_port, proxy_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "OTEL_EXPORTER_OTLP_ENDPOINT"}
    log = (tmp_path / "tansu.log").open("ab")
    broker = subprocess.Popen(
        [
            _tansu(),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{broker_port}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{proxy_port}",
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    forwarder = Proxy(proxy_port, broker_port)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", broker_port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or broker.poll() is not None:
                    pytest.fail(f"tansu did not listen on {broker_port}")
                time.sleep(0.05)
        forwarder.restore()
        yield forwarder
    finally:
        forwarder.cut()
        end(broker)
        log.close()


# This module's stack talks to its own broker, through the proxy.
@pytest.fixture
def kafka_bootstrap(proxy: Proxy) -> str:
    return f"127.0.0.1:{proxy.port}"


@pytest.fixture
def kafka_admin(kafka_bootstrap: str) -> Iterator[KafkaAdminClient]:
    with admin_client(kafka_bootstrap) as admin:
        yield admin


def test_workers_reconnect_after_the_broker_was_unreachable_and_end_with_the_replay(
    stack: Stack, processes: Processes, proxy: Proxy
) -> None:
    """
    Every connection to the broker cut and refused for OUTAGE_SECONDS once a third of the
    events are applied: the worker and the learner stay up, reconnect, rejoin their groups
    and end with the replay's states and alerts.
    """
    outage(stack, processes, proxy)


@pytest.mark.long
@pytest.mark.parametrize("run", range(5))
def test_five_runs_in_a_row_of_a_broker_outage(
    stack: Stack, processes: Processes, proxy: Proxy, run: int
) -> None:
    outage(stack, processes, proxy)


def outage(stack: Stack, processes: Processes, proxy: Proxy) -> None:
    records, learner, worker, progress = a_third_applied(stack, processes)
    try:
        proxy.cut()
        time.sleep(OUTAGE_SECONDS)  # the outage itself: nothing to wait for
        assert worker.alive(), worker.tail()
        assert learner.alive(), learner.tail()
        proxy.restore()
        wait_until(
            lambda: progress.done(f"{stack.prefix}-worker"),
            180,
            "every record applied and committed after the broker returned",
            processes,
        )
    finally:
        progress.close()
    assert worker.alive(), processes.tails()
    assert learner.alive(), processes.tails()
    check_against_replay(stack, records, redelivery_allowed=True)
