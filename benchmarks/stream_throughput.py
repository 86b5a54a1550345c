"""
The streaming pipeline end to end: one `churnwatch worker` (ingest + scoring) and one
`churnwatch learner` against the local stack's broker and Redis.

Writes benchmarks/results/stream_throughput.json and .md. Needs the local stack:

    eval "$(bash deploy/local/stack.sh up)"
    .venv/bin/python benchmarks/stream_throughput.py [--customers 5000] [--days 90]
        [--partitions 6] [--rate-fraction 0.3] [--duration 30] [--env KEY=VALUE ...]

It measures, in order, under a fresh topic prefix and Redis prefix (the Redis keys are deleted
at the end, the topics are deleted as far as the broker allows):

1. Backlog throughput. The simulator's records are published with the SDK before any worker
   runs; then the learner and the worker start as subprocesses. The clock runs from the first
   scrape of the worker's /metrics that shows a consumed ingest record to the first that shows
   every record handled (ingest and churn.events: processed + duplicates + dead-lettered), so
   the group join and faust's start-up are not counted. Events/s is events published per
   second of that window (each event crosses the worker twice: ingest, then scoring). The
   worker's CPU seconds over the same window (utime + stime from /proc/<pid>/stat) say how
   much of a core it had on a shared machine.
2. Redis bytes per customer, after the backlog: `MEMORY USAGE key SAMPLES 0` of each sampled
   customer's keys (state hash, `:hist`, `:alerts`), plus every per-partition and shared key
   (due/risk/change sets, meta, alert index) divided by the customers.
3. Event-to-alert latency with the worker caught up. Events are published at a steady pace (a
   fraction of the backlog rate): logins of the simulated customers, and one in
   `1/alert_share` an urgent open ticket of a new customer, which fires `urgent_ticket` on its
   own. A consumer in this process reads churn.alerts; the latency of an alert is its receipt
   wall time minus the wall time just before its ticket was handed to the producer (also
   carried in the event as the extra field `bench_sent_ms`). The first `--warmup` seconds are
   sent but not counted (the event-time jump past the backlog fires sweeps and waits for the
   next model checkpoint). The worker's own `churnwatch_event_to_alert_seconds` histogram
   (Kafka record timestamp to the alert's acknowledged publish) over the counted window is
   reported beside it.

The machine may be shared: the load average before and after is recorded with the figures.
Every wait has a deadline; the subprocesses are stopped by PID (SIGTERM, then SIGKILL after a
grace) whatever happens.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from uuid import uuid4

import orjson
import redis
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from churnwatch.core.events import format_ts, parse_event
from churnwatch.core.learning import boundary, epoch_of
from churnwatch.sdk.producer import EventProducer, publish_records
from churnwatch.sdk.settings import KafkaSettings, TopicNames
from churnwatch.sdk.topics import ensure_topics
from churnwatch.settings import CoreSettings
from churnwatch.sim import SimConfig, Simulation

RESULTS: Final = Path(__file__).resolve().parent / "results"
# Tansu holds every JoinGroup for the rebalance timeout: keep joins short (as the integration
# tests do), and let a scorer wait for the learner's checkpoint rather than fall back.
JOIN_ENV: Final = {
    "CHURNWATCH_BROKER_SESSION_TIMEOUT": "6",
    "CHURNWATCH_BROKER_REBALANCE_TIMEOUT": "3",
    "CHURNWATCH_BROKER_HEARTBEAT_INTERVAL": "0.5",
    "CHURNWATCH_MODEL_WAIT_SECONDS": "40",
}
STOP_GRACE_S: Final = 15.0
START_DEADLINE_S: Final = 90.0
LOG_LEVEL: Final = re.compile(r"^\S+ (WARNING|ERROR|CRITICAL) (\S+ \S+)")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class BenchError(RuntimeError):
    """The benchmark could not measure what it set out to (a deadline passed, a process died)."""


# -- subprocesses -----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_TICKS: Final = os.sysconf("SC_CLK_TCK")


@dataclass
class Child:
    """One `churnwatch worker|learner` subprocess, its log and metrics port."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    metrics_port: int

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the process so far (/proc/<pid>/stat fields 14, 15)."""
        stat = Path(f"/proc/{self.popen.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS

    def peak_rss_mib(self) -> float:
        """The process's peak resident memory so far (VmHWM of /proc/<pid>/status), MiB."""
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return f"--- {self.name} (pid {self.popen.pid}) log tail ---\n" + "\n".join(text[-lines:])

    def problems(self) -> dict[str, Any]:
        """Warning and error lines of the log, counted by level and `logger event`."""
        counts: dict[str, int] = {}
        tracebacks = 0
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("Traceback"):
                tracebacks += 1
            match = LOG_LEVEL.match(line)
            if match:
                key = f"{match[1]} {match[2]}"
                counts[key] = counts.get(key, 0) + 1
        return {"by_event": counts, "tracebacks": tracebacks}


@dataclass
class Children:
    """Starts subprocesses and stops exactly those, by PID."""

    directory: Path
    started: list[Child] = field(default_factory=list)

    def start(self, kind: str, name: str, env: dict[str, str]) -> Child:
        port = free_port()
        script = Path(sys.executable).parent / "churnwatch"
        command = [str(script)] if script.exists() else [sys.executable, "-m", "churnwatch.stream"]
        log = self.directory / f"{name}.log"
        with log.open("wb") as stderr:
            popen = subprocess.Popen(
                [*command, kind],
                env={
                    **env,
                    "CHURNWATCH_METRICS_PORT": str(port),
                    "CHURNWATCH_DATA_DIR": str(self.directory / f"{name}-data"),
                },
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        child = Child(name, popen, log, port)
        self.started.append(child)
        return child

    def stop_all(self) -> None:
        for child in self.started:
            if child.alive():
                child.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for child in self.started:
            try:
                child.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.popen.send_signal(signal.SIGKILL)
                child.popen.wait(timeout=10)

    def check(self) -> None:
        for child in self.started:
            if not child.alive():
                msg = f"{child.name} exited with {child.popen.returncode}\n{child.tail()}"
                raise BenchError(msg)

    def tails(self) -> str:
        return "\n".join(child.tail() for child in self.started)


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, children: Children, every: float
) -> None:
    """Polls `condition` until it holds; raises BenchError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children.check()
        if condition():
            return
        time.sleep(every)
    msg = f"expected {what} within {timeout:.0f} s\n{children.tails()}"
    raise BenchError(msg)


# -- metrics ----------------------------------------------------------------------------------
def scrape(port: int) -> Samples:
    """The samples of a process's /metrics, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def try_scrape(port: int) -> Samples | None:
    """`scrape`, or None while the metrics server is not up yet."""
    try:
        return scrape(port)
    except OSError:
        return None


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels`."""
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    )


def handled(samples: Samples, topic: str) -> float:
    """Records of `topic` the worker is done with: processed + duplicates + dead-lettered."""
    return sum(
        total(samples, f"churnwatch_records_{kind}_total", topic=topic)
        for kind in ("processed", "duplicates", "dead_lettered")
    )


def histogram_quantiles(
    before: Samples, after: Samples, name: str, quantiles: Sequence[float]
) -> dict[str, Any]:
    """
    Quantiles of a histogram's observations between two scrapes, interpolated linearly inside
    the bucket as Prometheus's histogram_quantile does (so only as fine as the buckets).
    """

    def buckets(samples: Samples) -> dict[float, float]:
        return {
            float(dict(labels)["le"]): value
            for (sample, labels), value in samples.items()
            if sample == f"{name}_bucket"
        }

    old, new = buckets(before), buckets(after)
    bounds = sorted(new)
    counts = [new[b] - old.get(b, 0.0) for b in bounds]
    n = counts[-1] if counts else 0.0
    out: dict[str, Any] = {"observations": int(n)}
    if n <= 0:
        return out
    for q in quantiles:
        rank = q * n
        i = next(i for i, c in enumerate(counts) if c >= rank)
        upper = bounds[i]
        if math.isinf(upper):
            value: float = bounds[i - 1] if i > 0 else 0.0
        else:
            lower = bounds[i - 1] if i > 0 else 0.0
            below = counts[i - 1] if i > 0 else 0.0
            inside = counts[i] - below
            value = lower + (upper - lower) * ((rank - below) / inside if inside else 1.0)
        out[f"p{round(q * 100)}_s"] = round(value, 4)
    out["mean_s"] = round((total(after, f"{name}_sum") - total(before, f"{name}_sum")) / n, 4)
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile of sorted `values` (nearest rank)."""
    index = min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))
    return values[index]


def cpu_of(children: Sequence[Child]) -> dict[str, float]:
    return {child.name: child.cpu_seconds() for child in children}


# -- the stack of one run ---------------------------------------------------------------------
@dataclass
class Run:
    """The addresses, prefixes and settings of one benchmark run."""

    bootstrap: str
    redis_url: str
    prefix: str
    kafka: KafkaSettings
    extra_env: dict[str, str]

    @property
    def topics(self) -> TopicNames:
        return self.kafka.topics()

    def env(self, group_id: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("CHURNWATCH_")}
        return {
            **base,
            **JOIN_ENV,
            "CHURNWATCH_KAFKA_BOOTSTRAP": self.bootstrap,
            "CHURNWATCH_KAFKA_PARTITIONS": str(self.kafka.partitions),
            "CHURNWATCH_KAFKA_TOPIC_PREFIX": self.kafka.topic_prefix,
            "CHURNWATCH_REDIS_URL": self.redis_url,
            "CHURNWATCH_REDIS_PREFIX": self.prefix,
            "CHURNWATCH_GROUP_ID": group_id,
            **self.extra_env,
        }

    def core_settings(self) -> CoreSettings:
        """The core's settings the worker runs with (the defaults and `--env`)."""
        fields = {k.removeprefix("CHURNWATCH_").lower(): v for k, v in self.extra_env.items()}
        return CoreSettings.model_validate(
            {k: v for k, v in fields.items() if k in CoreSettings.model_fields}
        )

    def outbox_size(self, client: redis.Redis) -> int:
        return sum(
            int(client.hlen(f"{self.prefix}:p:{{{p}}}:outbox"))
            for p in range(self.kafka.partitions)
        )


# -- phase 1: the backlog ---------------------------------------------------------------------
def backlog(
    run: Run,
    children: Children,
    worker: Child,
    learner: Child,
    sent: int,
    client: redis.Redis,
    deadline_s: float,
) -> dict[str, Any]:
    """Times the worker through the published backlog; see the module docstring."""
    ingest = run.topics.ingest_topics()
    events = run.topics.events
    started = time.monotonic()

    def first_consumed() -> bool:
        samples = try_scrape(worker.metrics_port)
        return samples is not None and any(
            total(samples, "churnwatch_records_consumed_total", topic=t) > 0 for t in ingest
        )

    wait_for(first_consumed, START_DEADLINE_S, "the worker's first consumed record", children, 0.1)
    t0 = time.monotonic()
    cpu0 = cpu_of((worker, learner))
    join_s = t0 - started
    progress: list[tuple[float, float]] = []
    last: dict[str, Samples] = {}

    def done() -> bool:
        samples = scrape(worker.metrics_port)
        last["samples"] = samples
        forwarded = sum(
            total(samples, "churnwatch_records_processed_total", topic=t) for t in ingest
        )
        ingested = sum(handled(samples, t) for t in ingest)
        scored = handled(samples, events)
        progress.append((time.monotonic() - t0, scored))
        return ingested >= sent and scored >= forwarded

    wait_for(done, deadline_s, f"all {sent} records handled", children, 0.25)
    t1 = time.monotonic()
    cpu1 = cpu_of((worker, learner))
    wait_for(lambda: run.outbox_size(client) == 0, 30, "the outbox drained", children, 0.1)
    samples = last["samples"]
    elapsed = t1 - t0
    worker_cpu = cpu1["worker"] - cpu0["worker"]
    # The middle 80% of the churn.events records, away from the start-up and the tail.
    forwarded = sum(total(samples, "churnwatch_records_processed_total", topic=t) for t in ingest)
    lo, hi = 0.1 * forwarded, 0.9 * forwarded
    t_lo = next(t for t, n in progress if n >= lo)
    t_hi = next(t for t, n in progress if n >= hi)
    return {
        "events": sent,
        "join_and_start_s": round(join_s, 1),
        "elapsed_s": round(elapsed, 2),
        "events_per_s": round(sent / elapsed),
        "events_per_s_middle_80pct": round((hi - lo) / (t_hi - t_lo)) if t_hi > t_lo else None,
        "worker_cpu_s": round(worker_cpu, 2),
        "worker_cpu_share_of_one_core": round(worker_cpu / elapsed, 2),
        "worker_cpu_us_per_event": round(worker_cpu / sent * 1e6),
        "events_per_worker_cpu_s": round(sent / worker_cpu) if worker_cpu else None,
        "learner_cpu_s": round(cpu1["learner"] - cpu0["learner"], 2),
        "worker_peak_rss_mib": round(worker.peak_rss_mib(), 1),
        "learner_peak_rss_mib": round(learner.peak_rss_mib(), 1),
        "ingest": {
            "consumed": sum(
                total(samples, "churnwatch_records_consumed_total", topic=t) for t in ingest
            ),
            "forwarded": forwarded,
            "dead_lettered": sum(
                total(samples, "churnwatch_records_dead_lettered_total", topic=t) for t in ingest
            ),
        },
        "scoring": {
            "consumed": total(samples, "churnwatch_records_consumed_total", topic=events),
            "processed": total(samples, "churnwatch_records_processed_total", topic=events),
            "duplicates": total(samples, "churnwatch_records_duplicates_total", topic=events),
            "dead_lettered": total(samples, "churnwatch_records_dead_lettered_total", topic=events),
        },
        "alerts": total(samples, "churnwatch_alerts_total"),
        "model_fallbacks": total(samples, "churnwatch_model_fallback_total"),
        "batch_seconds_mean": round(
            total(samples, "churnwatch_batch_seconds_sum")
            / max(1.0, total(samples, "churnwatch_batch_seconds_count")),
            4,
        ),
        "batches": int(total(samples, "churnwatch_batch_seconds_count")),
    }


# -- Redis bytes per customer -----------------------------------------------------------------
def redis_bytes(
    run: Run, client: redis.Redis, customers: Sequence[str], sample_size: int, seed: int
) -> dict[str, Any]:
    """MEMORY USAGE of sampled customers' keys, and of every key under the prefix by kind."""
    sample = sorted(random.Random(seed).sample(list(customers), min(sample_size, len(customers))))
    kinds = ("", ":hist", ":alerts")
    pipe = client.pipeline(transaction=False)
    for cid in sample:
        for kind in kinds:
            pipe.memory_usage(f"{run.prefix}:c:{{{cid}}}{kind}", samples=0)
    sizes = [int(v or 0) for v in pipe.execute()]
    per_customer = sorted(sum(sizes[i : i + 3]) for i in range(0, len(sizes), 3))
    by_kind = {
        (kind or "state").lstrip(":"): round(
            sum(sizes[i] for i in range(k, len(sizes), 3)) / len(sample)
        )
        for k, kind in enumerate(kinds)
    }
    keys = list(client.scan_iter(match=f"{run.prefix}:*", count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    groups = {"customer": 0, "partition": 0, "model": 0, "shared": 0}
    counts = dict.fromkeys(groups, 0)
    for key, size in zip(keys, pipe.execute(), strict=True):
        name = key.decode() if isinstance(key, bytes) else str(key)
        rest = name[len(run.prefix) + 1 :]
        group = (
            "customer"
            if rest.startswith("c:")
            else "partition"
            if rest.startswith("p:")
            else "model"
            if rest.startswith("{model}")
            else "shared"
        )
        groups[group] += int(size or 0)
        counts[group] += 1
    n = len(customers)
    return {
        "customers": n,
        "sampled": len(sample),
        "sample_mean_bytes": round(sum(per_customer) / len(per_customer)),
        "sample_p50_bytes": percentile(per_customer, 0.5),
        "sample_p99_bytes": percentile(per_customer, 0.99),
        "sample_max_bytes": per_customer[-1],
        "sample_mean_bytes_by_key": by_kind,
        "partition_and_shared_bytes_per_customer": round(
            (groups["partition"] + groups["shared"]) / n
        ),
        "all_keys_bytes_per_customer": round(
            (groups["customer"] + groups["partition"] + groups["shared"]) / n
        ),
        "model_checkpoint_bytes": groups["model"],
        "keys_by_group": counts,
        "bytes_by_group": groups,
    }


# -- phase 2: latency -------------------------------------------------------------------------
class AlertReader:
    """Reads churn.alerts from the beginning in a thread; notes when each alert of ours arrived."""

    def __init__(self, run: Run, key_prefix: str) -> None:
        self.key_prefix = key_prefix.encode()
        self.arrived: dict[str, float] = {}
        self.rules: dict[str, str] = {}
        self.error: BaseException | None = None
        self._stop = threading.Event()
        tps = [TopicPartition(run.topics.alerts, p) for p in range(run.kafka.partitions)]
        self._consumer = KafkaConsumer(
            bootstrap_servers=run.bootstrap,
            enable_auto_commit=False,
            request_timeout_ms=10_000,
            fetch_max_wait_ms=10,
        )
        self._consumer.assign(tps)
        self._consumer.seek_to_beginning(*tps)
        self._thread = threading.Thread(target=self._loop, name="alert-reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                got = self._consumer.poll(timeout_ms=50)
                now = time.time()
                for batch in got.values():
                    for record in batch:
                        if record.key is None or not record.key.startswith(self.key_prefix):
                            continue
                        alert = orjson.loads(record.value)
                        self.arrived.setdefault(alert["customer_id"], now)
                        self.rules.setdefault(alert["customer_id"], alert["rule"])
        except BaseException as exc:  # reported by the main thread
            self.error = exc
        finally:
            self._consumer.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def latency(
    run: Run,
    children: Children,
    worker: Child,
    args: argparse.Namespace,
    rate: float,
    customers: Sequence[str],
    last_event_at: datetime,
) -> dict[str, Any]:
    """Paced events with alert-triggering tickets; see the module docstring."""
    core = run.core_settings()
    length = timedelta(hours=core.model_epoch_hours)
    # Past the next model epoch and the lateness, so the first events of every partition move
    # the watermarks past the epoch boundary and the learner can release the checkpoint; with
    # epochs too long for that (the ingest rejects events past `max_future`), just after the
    # backlog, in its last epoch.
    start_at = boundary(epoch_of(last_event_at, length) + 1, length) + timedelta(
        seconds=core.lateness_seconds + 600
    )
    if start_at - last_event_at > timedelta(seconds=core.max_future_seconds / 2):
        start_at = last_event_at + timedelta(minutes=1)
    key_prefix = f"{run.prefix}-lat-"
    reader = AlertReader(run, key_prefix)
    reader.start()
    rng = random.Random(args.seed)
    every = max(1, round(1 / args.alert_share))
    sent_at: dict[str, float] = {}
    counted: set[str] = set()
    behind_max = 0.0
    producer = EventProducer(run.kafka)
    producer.start()
    try:
        wall0 = time.time()
        mono0 = time.monotonic()
        measured_from = mono0 + args.warmup
        stop_at = measured_from + args.duration
        before: Samples | None = None
        cpu0 = 0.0
        i = 0
        while True:
            target = mono0 + i / rate
            now = time.monotonic()
            if target >= stop_at:
                break
            if target > now:
                time.sleep(target - now)
            else:
                behind_max = max(behind_max, now - target)
            if before is None and target >= measured_from:
                before = scrape(worker.metrics_port)
                cpu0 = worker.cpu_seconds()
            at = start_at + timedelta(seconds=time.time() - wall0)
            event: dict[str, Any]
            if i % every == 0:
                cid = f"{key_prefix}{i:07d}"
                event = {
                    "type": "ticket",
                    "customer_id": cid,
                    "ticket_id": f"t-{i}",
                    "severity": "urgent",
                    "status": "open",
                }
                if target >= measured_from:
                    counted.add(cid)
            else:
                event = {"type": "login", "customer_id": rng.choice(customers), "channel": "web"}
            sent = time.time()
            event |= {
                "event_id": f"{run.prefix}-p2-{i}",
                "ts": format_ts(at),
                "bench_sent_ms": int(sent * 1000),
            }
            producer.send(orjson.dumps(event))
            if event["type"] == "ticket":
                sent_at[event["customer_id"]] = sent
            i += 1
            if i % 500 == 0:
                children.check()
        send_end = time.monotonic()
        cpu1 = worker.cpu_seconds()
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=10)
    try:
        wait_for(
            lambda: counted <= reader.arrived.keys() or reader.error is not None,
            args.drain_timeout,
            f"the alerts of {len(counted)} tickets",
            children,
            0.1,
        )
    finally:
        reader.stop()
    if reader.error is not None:
        msg = f"the alert reader failed: {reader.error!r}"
        raise BenchError(msg) from reader.error
    time.sleep(0.5)  # the worker observes its histogram right after the produce is acknowledged
    after = scrape(worker.metrics_port)
    assert before is not None
    latencies = sorted(reader.arrived[c] - sent_at[c] for c in counted if c in reader.arrived)
    window = send_end - measured_from
    return {
        "rate_target_per_s": round(rate),
        "events_sent": i,
        "events_sent_counted_window": round((send_end - measured_from) * rate),
        "warmup_s": args.warmup,
        "window_s": round(window, 1),
        "pacer_max_behind_s": round(behind_max, 3),
        "alert_share": round(1 / every, 3),
        "alerts_expected": len(counted),
        "alerts_received": len(latencies),
        "alert_rules": sorted({reader.rules[c] for c in counted if c in reader.rules}),
        "event_time_start": format_ts(start_at),
        "latency_s": {
            "p50": round(percentile(latencies, 0.5), 4),
            "p90": round(percentile(latencies, 0.9), 4),
            "p99": round(percentile(latencies, 0.99), 4),
            "max": round(latencies[-1], 4),
            "min": round(latencies[0], 4),
            "mean": round(sum(latencies) / len(latencies), 4),
        }
        if latencies
        else None,
        "worker_histogram": histogram_quantiles(
            before, after, "churnwatch_event_to_alert_seconds", (0.5, 0.9, 0.99)
        ),
        "worker_cpu_share_of_one_core": round((cpu1 - cpu0) / window, 2),
        "worker_batches": int(
            total(after, "churnwatch_batch_seconds_count")
            - total(before, "churnwatch_batch_seconds_count")
        ),
        "model_fallbacks": total(after, "churnwatch_model_fallback_total"),
    }


# -- the run ----------------------------------------------------------------------------------
def cleanup(run: Run, client: redis.Redis) -> dict[str, Any]:
    """Deletes the run's Redis keys, and its topics where the broker allows it."""
    keys = list(client.scan_iter(match=f"{run.prefix}*", count=1000))
    for i in range(0, len(keys), 1000):
        client.delete(*keys[i : i + 1000])
    topics_deleted: bool | str = True
    try:
        admin = KafkaAdminClient(bootstrap_servers=run.bootstrap, request_timeout_ms=10_000)
        try:
            admin.delete_topics(list(run.topics.all()), timeout_ms=10_000)
        finally:
            admin.close()
    except Exception as exc:  # Tansu keeps topics in memory; leaving them is harmless
        topics_deleted = repr(exc)
    return {"redis_keys_deleted": len(keys), "topics_deleted": topics_deleted}


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.startswith("CHURNWATCH_"):
            msg = f"--env expects CHURNWATCH_NAME=value, got {pair!r}"
            raise SystemExit(msg)
        out[key] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--partitions", type=int, default=6, help="P of every topic")
    parser.add_argument("--rate-fraction", type=float, default=0.3, help="of the backlog rate")
    parser.add_argument("--alert-share", type=float, default=0.1, help="tickets among events")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds sent, not counted")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds counted")
    parser.add_argument("--drain-timeout", type=float, default=60.0)
    parser.add_argument("--backlog-timeout", type=float, default=600.0)
    parser.add_argument("--redis-sample", type=int, default=500, help="customers measured")
    parser.add_argument(
        "--env", action="append", default=[], help="CHURNWATCH_X=value for both processes"
    )
    args = parser.parse_args()
    bootstrap = os.environ.get("CHURNWATCH_TEST_KAFKA")
    redis_url = os.environ.get("CHURNWATCH_TEST_REDIS")
    if not bootstrap or not redis_url:
        msg = (
            "CHURNWATCH_TEST_KAFKA and CHURNWATCH_TEST_REDIS are unset: run "
            '`eval "$(bash deploy/local/stack.sh up)"` first'
        )
        raise SystemExit(msg)
    extra_env = parse_env(args.env)
    load_before = os.getloadavg()
    started_at = datetime.now(UTC)
    wall = time.perf_counter()

    prefix = f"cw-bench-{uuid4().hex[:12]}"
    kafka = KafkaSettings(
        bootstrap=bootstrap, partitions=args.partitions, topic_prefix=prefix + "."
    )
    run = Run(bootstrap, redis_url, prefix, kafka, extra_env)
    client = redis.Redis.from_url(redis_url)
    directory = Path(tempfile.mkdtemp(prefix="cw-bench-"))
    children = Children(directory)
    result: dict[str, Any] = {}
    try:
        ensure_topics(kafka)
        records = list(
            Simulation(
                SimConfig(customers=args.customers, days=args.days, seed=args.seed)
            ).records()
        )
        events = [parse_event(raw) for raw in records]
        customers = sorted({e.customer_id for e in events})
        last_event_at = max(e.ts for e in events)
        t = time.perf_counter()
        with EventProducer(kafka) as producer:
            summary = publish_records(records, producer)
        publish_s = time.perf_counter() - t
        if summary.stopped is not None or summary.sent != len(records):
            msg = f"publishing stopped after {summary.sent} of {len(records)}: {summary.stopped}"
            raise BenchError(msg)

        learner = children.start("learner", "learner", run.env(f"{prefix}-learner"))
        worker = children.start("worker", "worker", run.env(f"{prefix}-worker"))
        result = {
            "customers": args.customers,
            "days": args.days,
            "seed": args.seed,
            "partitions": args.partitions,
            "records": len(records),
        }
        phase1 = backlog(run, children, worker, learner, summary.sent, client, args.backlog_timeout)
        phase1["publish_s"] = round(publish_s, 1)
        phase1["publish_events_per_s"] = round(summary.sent / publish_s)
        result["backlog"] = phase1
        result["redis"] = redis_bytes(run, client, customers, args.redis_sample, args.seed)
        rate = args.rate_fraction * phase1["events_per_s"]
        result["latency"] = latency(run, children, worker, args, rate, customers, last_event_at)
    except BaseException:
        # What was measured before the failure, for the reader of the traceback.
        print(json.dumps(result, indent=2), file=sys.stderr)
        raise
    finally:
        children.stop_all()
        logs = {child.name: child.problems() for child in children.started}
        housekeeping = cleanup(run, client)
        client.close()
        for child in children.started:  # the logs stay for reading; faust's data dirs go
            shutil.rmtree(directory / f"{child.name}-data", ignore_errors=True)
    load_after = os.getloadavg()
    result |= {
        "log_problems": logs,
        "logs_dir": str(directory),
        "cleanup": housekeeping,
        "worker_env": {**JOIN_ENV, **extra_env},
        "total_wall_s": round(time.perf_counter() - wall, 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "started_at": format_ts(started_at),
    }
    command = " ".join([".venv/bin/python", "benchmarks/stream_throughput.py", *sys.argv[1:]])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "stream_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "stream_throughput.md").write_text(report(result, command))
    print(json.dumps(result, indent=2))


def table(rows: Sequence[tuple[str, object]]) -> str:
    lines = ["| measure | value |", "| --- | --- |"]
    lines += [f"| {label} | {value} |" for label, value in rows]
    return "\n".join(lines)


def report(r: dict[str, Any], command: str) -> str:
    """The readable results: the figures, and how each is measured."""
    b, m, lat = r["backlog"], r["redis"], r["latency"]
    ls, h = lat["latency_s"], lat["worker_histogram"]
    ing, sc = b["ingest"], b["scoring"]
    backlog_rows: list[tuple[str, object]] = [
        ("events", f"{b['events']:,}"),
        ("**events/s** (first consumed record to all handled)", f"**{b['events_per_s']:,}**"),
        ("events/s, middle 80% of churn.events", b["events_per_s_middle_80pct"]),
        ("elapsed", f"{b['elapsed_s']} s"),
        ("worker CPU", f"{b['worker_cpu_s']} s ({b['worker_cpu_share_of_one_core']} of a core)"),
        ("worker CPU per event (ingest + scoring)", f"{b['worker_cpu_us_per_event']} us"),
        ("events per worker CPU second", f"{b['events_per_worker_cpu_s']:,}"),
        ("learner CPU over the same window", f"{b['learner_cpu_s']} s"),
        (
            "peak resident memory (VmHWM): worker, learner",
            f"{b['worker_peak_rss_mib']} MiB, {b['learner_peak_rss_mib']} MiB",
        ),
        ("group join and start-up (not counted)", f"{b['join_and_start_s']} s"),
        ("batches; mean batch wall time", f"{b['batches']:,}; {b['batch_seconds_mean']} s"),
        ("alerts published", f"{b['alerts']:.0f}"),
        (
            "ingest: consumed, forwarded, dead-lettered",
            f"{ing['consumed']:.0f}, {ing['forwarded']:.0f}, {ing['dead_lettered']:.0f}",
        ),
        (
            "scoring: consumed, processed, duplicates, dead-lettered",
            f"{sc['consumed']:.0f}, {sc['processed']:.0f}, {sc['duplicates']:.0f}, "
            f"{sc['dead_lettered']:.0f}",
        ),
        ("model fallbacks", f"{b['model_fallbacks']:.0f}"),
        (
            "publishing the backlog with the SDK (before the worker starts)",
            f"{b['publish_s']} s, {b['publish_events_per_s']:,} events/s",
        ),
    ]
    redis_rows: list[tuple[str, object]] = [
        (
            f"customer keys, mean over {m['sampled']} sampled customers",
            f"**{m['sample_mean_bytes']:,} B**",
        ),
        (
            "p50 / **p99** / max",
            f"{m['sample_p50_bytes']:,} / **{m['sample_p99_bytes']:,}** / "
            f"{m['sample_max_bytes']:,} B",
        ),
        ("mean by key (state hash, :hist, :alerts)", m["sample_mean_bytes_by_key"]),
        (
            "per-partition and shared keys / customers",
            f"{m['partition_and_shared_bytes_per_customer']:,} B",
        ),
        (
            "**every key under the prefix (model aside) / customers**",
            f"**{m['all_keys_bytes_per_customer']:,} B**",
        ),
        ("model checkpoints (not per customer)", f"{m['model_checkpoint_bytes']:,} B"),
        ("keys by group", m["keys_by_group"]),
    ]
    latency_rows: list[tuple[str, object]] = [
        (
            "paced rate",
            f"{lat['rate_target_per_s']:,} events/s, {lat['alert_share']} of them "
            "alert-firing tickets",
        ),
        ("counted window", f"{lat['window_s']} s after a {lat['warmup_s']} s warm-up"),
        (
            "alerts expected / received",
            f"{lat['alerts_expected']} / {lat['alerts_received']} (rules {lat['alert_rules']})",
        ),
        (
            "**send to alert read back: p50 / p90 / p99 / max**",
            f"**{ls['p50']} / {ls['p90']} / {ls['p99']} / {ls['max']} s**",
        ),
        ("min / mean", f"{ls['min']} / {ls['mean']} s"),
        (
            "worker histogram `churnwatch_event_to_alert_seconds`: p50 / p90 / p99 / mean",
            f"{h.get('p50_s')} / {h.get('p90_s')} / {h.get('p99_s')} / {h.get('mean_s')} s "
            f"({h['observations']} observations)",
        ),
        ("worker CPU at this rate", f"{lat['worker_cpu_share_of_one_core']} of a core"),
        ("worker batches in the window", lat["worker_batches"]),
        ("pacer's worst lag behind schedule", f"{lat['pacer_max_behind_s']} s"),
    ]
    return f"""# Stream throughput: one worker, one learner, the local stack

```
eval "$(bash deploy/local/stack.sh up)"
{command}
```

Run {r["started_at"]} on {r["cpus"]} CPUs ({r["machine"]}, Python {r["python"]}) shared with
other workers: load average (1, 5, 15 min) {r["load_average_before"]} before and
{r["load_average_after"]} after. Every figure below was measured under that load; the CPU
seconds say how much of a core the worker actually got. Broker: Tansu (Kafka protocol, in
memory); Redis with AOF. Worker and learner settings: the defaults except {r["worker_env"]}.

Simulator: {r["customers"]} customers, {r["days"]} days, seed {r["seed"]}: {r["records"]:,}
events, {r["partitions"]} partitions per topic.

## Backlog throughput (one worker process)

{table(backlog_rows)}

How: the events are published first (`publish_records`), then `churnwatch learner` and
`churnwatch worker` start. The worker's /metrics is scraped every 0.25 s; the window runs from
the first scrape with a consumed ingest record to the first with every record handled at
ingest and at scoring (`churnwatch_records_{{processed,duplicates,dead_lettered}}_total`).
CPU is utime + stime of the worker process from /proc/<pid>/stat at both ends of the window.

## Redis bytes per customer (after the backlog)

{table(redis_rows)}

How: `MEMORY USAGE key SAMPLES 0` (every element counted) of `{{prefix}}:c:{{<id>}}`,
`...:hist` and `...:alerts` of the sampled customers; then of every key under the prefix,
grouped: customer keys, per-partition keys (`p:` due, risk, change sets and meta), shared
(the alert index), model checkpoints.

## Event-to-alert latency (worker caught up)

{table(latency_rows)}

How: events go out with the SDK at a fixed pace (a fraction of the backlog rate) from event
time {lat["event_time_start"]} (past the backlog's last model epoch and the lateness),
advancing with the wall clock: logins of simulated customers and, one in
{round(1 / lat["alert_share"])}, an urgent open ticket of a new customer, which fires
`urgent_ticket`. The send time is the wall clock just before `EventProducer.send` (also in the
event as `bench_sent_ms`); the alert's time is when a consumer thread in the benchmark
(fetch_max_wait 10 ms) got it from churn.alerts. It spans the producer's linger, the ingest
hop and its merge, the scoring batch window (`batch_within_seconds`), the Redis write, the
alert's produce and the read back. The worker's histogram runs from the record's Kafka
timestamp to the acknowledged produce of the alert, interpolated within its buckets (0.1,
0.25, 0.5, 1, 2.5 s ...), so it is coarse.

## Worker and learner logs

Warnings and errors by `logger event`: {r["log_problems"]}. Logs kept in {r["logs_dir"]}.
Cleanup: {r["cleanup"]}. Total wall time {r["total_wall_s"]} s.
"""


if __name__ == "__main__":
    main()
