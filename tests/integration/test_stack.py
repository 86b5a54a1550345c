"""
The local service stack: the broker, Redis, the stack script and the Prometheus files.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"
SERVICES = ("kafka", "redis", "prometheus")
# Every wait in this file is bounded by one of these.
POLL_DEADLINE_S = 30.0
SCRIPT_TIMEOUT_S = 90.0


def produce(bootstrap: str, topic: str, values: list[bytes]) -> dict[TopicPartition, int]:
    """
    Sends each value keyed by a customer id; returns each partition's offset after the last record.
    """
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, request_timeout_ms=10_000)
    try:
        futures = [
            producer.send(topic, key=f"customer-{i % 10}".encode(), value=value)
            for i, value in enumerate(values)
        ]
        producer.flush(timeout=POLL_DEADLINE_S)
        ends: dict[TopicPartition, int] = {}
        for future in futures:
            sent = future.get(timeout=POLL_DEADLINE_S)
            tp = TopicPartition(sent.topic, sent.partition)
            ends[tp] = max(ends.get(tp, 0), sent.offset + 1)
        return ends
    finally:
        producer.close(timeout=5)


def consume_to(consumer: KafkaConsumer, ends: dict[TopicPartition, int]) -> list[bytes]:
    """
    Polls until the consumer owns the partitions and stands at the given offsets; returns values.

    The target offsets come from the producer's acknowledgements rather than
    `end_offsets()`: Tansu 0.6.0 answers ListOffsets(latest) with the last batch's
    base offset + 1, not the high watermark.
    """
    received: list[bytes] = []
    deadline = time.monotonic() + POLL_DEADLINE_S
    while time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=200).values():
            received.extend(record.value for record in records)
        if consumer.assignment() == set(ends) and all(
            consumer.position(tp) >= end for tp, end in ends.items()
        ):
            return received
    pytest.fail(
        f"expected to reach offsets {ends} within {POLL_DEADLINE_S}s, got assignment "
        f"{consumer.assignment()} after {len(received)} records"
    )


def test_a_group_member_resumes_after_the_offsets_committed_by_the_previous_one(
    kafka_bootstrap: str,
    kafka_topic: str,
    kafka_group_id: str,
    kafka_consumer_settings: dict[str, Any],
) -> None:
    """
    A consumer that joins a group after another committed reads only the newer records.
    """
    first_batch = [f"event-{i}".encode() for i in range(100)]
    second_batch = [f"event-{i}".encode() for i in range(100, 120)]
    first_ends = produce(kafka_bootstrap, kafka_topic, first_batch)
    assert 3 == len(first_ends)

    first = KafkaConsumer(kafka_topic, group_id=kafka_group_id, **kafka_consumer_settings)
    try:
        consumed_first = consume_to(first, first_ends)
        first.commit()
        committed = {tp: first.committed(tp) for tp in first_ends}
        positions = {tp: first.position(tp) for tp in first_ends}
        highwaters = {tp: first.highwater(tp) for tp in first_ends}
    finally:
        first.close()
    assert sorted(first_batch) == sorted(consumed_first)
    assert first_ends == positions
    assert first_ends == committed
    # The fetch response's high watermark is right (what a lag metric should use).
    assert first_ends == highwaters

    second_ends = {tp: end for tp, end in first_ends.items()}
    second_ends.update(produce(kafka_bootstrap, kafka_topic, second_batch))
    second = KafkaConsumer(kafka_topic, group_id=kafka_group_id, **kafka_consumer_settings)
    try:
        consumed_second = consume_to(second, second_ends)
    finally:
        second.close()
    assert sorted(second_batch) == sorted(consumed_second)


def test_redis_stores_and_returns_a_value_with_the_append_only_file_on(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    """
    Redis returns what was set under the test's prefix, and runs with AOF enabled.
    """
    key = f"{redis_prefix}:greeting"
    redis_client.set(key, "hello", ex=60)

    assert "hello" == redis_client.get(key)
    assert {"appendonly": "yes"} == redis_client.config_get("appendonly")
    assert {"appendfsync": "everysec"} == redis_client.config_get("appendfsync")


# ---- the stack script -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stack:
    """
    A stack started by the test: its run dir and ports.
    """

    run_dir: Path
    kafka_port: int
    redis_port: int
    prometheus_port: int

    def args(self) -> list[str]:
        return [
            "--kafka-port",
            str(self.kafka_port),
            "--redis-port",
            str(self.redis_port),
            "--prometheus-port",
            str(self.prometheus_port),
            "--run-dir",
            str(self.run_dir),
        ]


def free_ports(count: int) -> list[int]:
    """
    Ports on 127.0.0.1 that nothing holds right now.

    They are drawn below the kernel's ephemeral range (32768 and up on Linux), so
    client connections made meanwhile cannot take them before the stack binds them.
    """
    chosen: list[int] = []
    for port in random.sample(range(20_000, 32_000), 200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        chosen.append(port)
        if len(chosen) == count:
            return chosen
    pytest.fail(f"expected {count} free ports in 20000..31999, found {chosen}")


def run_stack(script: Path, command: str, stack: Stack) -> subprocess.CompletedProcess[str]:
    """
    Runs `stack.sh COMMAND` for the given stack, bounded in time.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHURNWATCH_STACK_")}
    env["CHURNWATCH_STACK_START_TIMEOUT"] = "30"
    env["CHURNWATCH_STACK_STOP_TIMEOUT"] = "10"
    return subprocess.run(
        ["bash", str(script), command, *stack.args()],
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
        env=env,
        check=False,
    )


def recorded_pids(stack: Stack) -> dict[str, int]:
    """
    The PIDs in the stack's pidfiles, by service.
    """
    pids = {}
    for service in SERVICES:
        pidfile = stack.run_dir / f"{service}.pid"
        if pidfile.exists():
            pids[service] = int(pidfile.read_text().strip())
    return pids


def is_running(pid: int) -> bool:
    """
    True when the process exists and is not a zombie.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@pytest.fixture
def second_stack(stack_script: Path, tmp_path: Path) -> Iterator[Stack]:
    """
    A second stack's settings on free ports in a temporary run dir, taken down after the test.
    """
    kafka_port, redis_port, prometheus_port = free_ports(3)
    stack = Stack(tmp_path / "run", kafka_port, redis_port, prometheus_port)
    try:
        yield stack
    finally:
        run_stack(stack_script, "down", stack)
        for pid in recorded_pids(stack).values():
            if is_running(pid):
                os.kill(pid, 9)


def test_the_stack_script_starts_reports_and_stops_exactly_its_own_processes(
    stack_script: Path, second_stack: Stack, tmp_path: Path
) -> None:
    """
    `up` starts a stack once, `status` sees it, a taken port is refused, `down` stops only its PIDs.
    """
    decoy = subprocess.Popen(["sleep", "60"])
    try:
        up = run_stack(stack_script, "up", second_stack)
        assert 0 == up.returncode, up.stderr
        assert f"export CHURNWATCH_TEST_KAFKA=127.0.0.1:{second_stack.kafka_port}" in up.stdout
        redis_export = f"export CHURNWATCH_TEST_REDIS=redis://127.0.0.1:{second_stack.redis_port}/0"
        assert redis_export in up.stdout
        pids = recorded_pids(second_stack)
        assert set(SERVICES) == set(pids)
        for service, name in zip(SERVICES, ("tansu", "redis-server", "prometheus"), strict=True):
            cmdline = Path(f"/proc/{pids[service]}/cmdline").read_bytes()
            assert name.encode() in cmdline, (service, cmdline)

        status = run_stack(stack_script, "status", second_stack)
        assert 0 == status.returncode, status.stdout + status.stderr
        for service in SERVICES:
            line = f"up (pid {pids[service]}, answering)"
            assert any(
                row.startswith(service) and line in row for row in status.stdout.splitlines()
            ), status.stdout

        again = run_stack(stack_script, "up", second_stack)
        assert 0 == again.returncode, again.stderr
        assert pids == recorded_pids(second_stack)
        assert 3 == again.stderr.count("already running")

        kafka_port, prometheus_port = free_ports(2)
        third = Stack(tmp_path / "third", kafka_port, second_stack.redis_port, prometheus_port)
        refused = run_stack(stack_script, "up", third)
        assert 1 == refused.returncode
        assert f"port {second_stack.redis_port}" in refused.stderr
        assert "redis" in refused.stderr
        assert {} == recorded_pids(third)

        down = run_stack(stack_script, "down", second_stack)
        assert 0 == down.returncode, down.stderr
        assert {} == {service: pid for service, pid in pids.items() if is_running(pid)}
        assert {} == recorded_pids(second_stack)
        assert decoy.poll() is None

        down_again = run_stack(stack_script, "down", second_stack)
        assert 0 == down_again.returncode, down_again.stderr
    finally:
        decoy.kill()
        decoy.wait(timeout=5)


# ---- Prometheus files -------------------------------------------------------------


def test_promtool_accepts_the_scrape_config(promtool: str) -> None:
    """
    promtool checks the scrape config and the rule file it names as valid.
    """
    result = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert 0 == result.returncode, result.stdout + result.stderr


def test_the_alert_rules_pass_their_promtool_unit_tests(promtool: str) -> None:
    """
    The alert rules fire and stay quiet as alerts_test.yml expects.
    """
    result = subprocess.run(
        [promtool, "test", "rules", str(PROMETHEUS_DIR / "alerts_test.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert 0 == result.returncode, result.stdout + result.stderr
