"""
The Redis store through Redis Cluster: a three-master cluster on loopback, started here with
deploy/local/redis-cluster.sh on free ports and stopped after the module.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import redis
from redis.crc import key_slot
from test_store import START_AT, batch, real_states, run

from churnwatch.core.errors import StoreUnavailableError
from churnwatch.core.state import CustomerState
from churnwatch.store import OutboxEntry, PartitionMeta, RedisStore, StoreSettings
from churnwatch.store.redis_store import version_tuple
from needs import require_binaries

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
SCRIPT = REPO_ROOT / "deploy" / "local" / "redis-cluster.sh"
# Every wait in this file is bounded by one of these.
SCRIPT_TIMEOUT_S = 90.0
CLUSTER_START_S = 30


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_base_port() -> int:
    """
    A base port P with P..P+2 and their cluster bus ports (+10000) free on 127.0.0.1.
    """
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20_000, 29_990)
        ports = [base + i for i in range(3)] + [base + 10_000 + i for i in range(3)]
        if all(_port_free(p) for p in ports):
            return base
    pytest.fail("no free base port for a Redis Cluster in 20000-29990")


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CHURNWATCH_STACK_START_TIMEOUT": str(CLUSTER_START_S)}
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
        env=env,
        check=False,
    )


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """
    redis://127.0.0.1:P of a fresh three-master cluster; `down` runs after the module.
    """
    require_binaries("redis-server", "redis-cli")
    run_dir = tmp_path_factory.mktemp("redis-cluster")
    base = free_base_port()
    where = ["--base-port", str(base), "--run-dir", str(run_dir)]
    try:
        up = _script("up", *where)
        if up.returncode != 0:
            pytest.fail(f"redis-cluster.sh up failed ({up.returncode}):\n{up.stderr}")
        assert f"export CHURNWATCH_TEST_REDIS_CLUSTER=redis://127.0.0.1:{base}" in up.stdout
        yield f"redis://127.0.0.1:{base}"
    finally:
        down = _script("down", *where)
        assert 0 == down.returncode, down.stderr


@pytest.fixture
def settings(cluster_url: str) -> Iterator[StoreSettings]:
    """
    Cluster store settings under a prefix of this test; its keys are deleted after.
    """
    prefix = f"cw-it-{uuid4().hex}"
    yield StoreSettings(url=cluster_url, cluster=True, prefix=prefix)
    client = redis.RedisCluster.from_url(cluster_url, socket_timeout=5)
    try:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
    finally:
        client.close()


def test_cluster_slots_follow_the_hash_tags(settings: StoreSettings, cluster_url: str) -> None:
    """
    Every key of a partition shares one slot, and customers spread over all three masters.
    """
    store = RedisStore(settings)
    keys = store.keys
    for partition in range(4):
        slots = {key_slot(keys.partition(partition, k).encode()) for k in ("meta", "due", "risk")}
        slots.add(key_slot(keys.outbox(partition).encode()))
        assert 1 == len(slots)
    checkpoint_keys = [keys.checkpoint(1), keys.checkpoint(99), keys.latest(), keys.versions()]
    assert 1 == len({key_slot(k.encode()) for k in checkpoint_keys})
    client = redis.RedisCluster.from_url(cluster_url, socket_timeout=5)
    try:
        nodes = [client.get_node_from_key(keys.customer(f"cust-{i}")) for i in range(30)]
        owners = {node.name for node in nodes if node is not None}
    finally:
        client.close()
    assert 3 == len(owners)


def test_store_operations_through_redis_cluster(settings: StoreSettings) -> None:
    """
    Batches, states, offsets, due, at-risk, outbox and checkpoints work through RedisCluster.
    """
    ids = [f"cust-{i}" for i in range(30)]
    states = real_states(ids)
    probabilities = {cid: round(0.02 * i, 4) for i, cid in enumerate(ids)}
    scored = {cid: replace(states[cid], churn_probability=p) for cid, p in probabilities.items()}
    due = {cid: START_AT + timedelta(days=i) for i, cid in enumerate(ids)}
    outbox = [OutboxEntry(f"alert-{i}", "churn.alerts", ids[i].encode(), b"{}") for i in range(3)]
    meta = PartitionMeta(START_AT + timedelta(days=40), START_AT + timedelta(days=39), 99)
    store = RedisStore(settings.model_copy(update={"checkpoints_kept": 2}))

    async def go() -> dict[str, Any]:
        await store.start()
        try:
            written: dict[int, list[tuple[CustomerState, int | None]]] = {0: [], 1: []}
            for i, cid in enumerate(ids):
                written[i % 2].append((scored[cid], 100 + i))
            await store.write_batch(
                batch(
                    0,
                    written[0],
                    outbox=outbox,
                    meta=meta,
                    due={s.customer_id: due[s.customer_id] for s, _ in written[0]},
                )
            )
            await store.write_batch(batch(1, written[1], due={ids[1]: due[ids[1]]}))
            out: dict[str, Any] = {
                "loaded": await store.load_states([*ids, "nobody"]),
                "meta": await store.load_partition(0),
                "due": await store.due_customers(0, START_AT + timedelta(days=6)),
                "risk": await store.at_risk(limit=4, offset=2, partitions=[0, 1]),
                "outbox": await store.outbox(0),
            }
            await store.clear_outbox(0, ["alert-0", "alert-2"])
            out["outbox_after"] = await store.outbox(0)
            for epoch in (1, 2, 3):
                await store.save_checkpoint(epoch, f"model-{epoch}".encode())
            out["checkpoints"] = [await store.load_checkpoint(e) for e in (1, 2, 3)]
            out["latest"] = await store.latest_checkpoint(at_most=2)
            return out
        finally:
            await store.close()

    out = run(go())
    assert {cid: (scored[cid], {i % 2: 100 + i}) for i, cid in enumerate(ids)} == out["loaded"]
    assert meta == out["meta"]
    assert ["cust-0", "cust-2", "cust-4", "cust-6"] == out["due"]
    ranked = sorted(probabilities.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
    assert ranked[2:6] == out["risk"]
    assert outbox == out["outbox"]
    assert [outbox[1]] == out["outbox_after"]
    assert [None, b"model-2", b"model-3"] == out["checkpoints"]
    assert (2, b"model-2") == out["latest"]


def test_cluster_waitaof_is_detected_and_sent_per_node(settings: StoreSettings) -> None:
    """
    The store asks every master about WAITAOF; forced on, it is sent after the writes.
    """
    ids = [f"w-{i}" for i in range(12)]
    states = real_states(ids)
    store = RedisStore(settings)

    async def go() -> tuple[bool, str, dict[str, tuple[CustomerState, dict[int, int]]]]:
        await store.start()
        try:
            detected, reason = store.waitaof, store.waitaof_reason
            store._waitaof = True  # force the path even where detection turned it off
            written = [(states[c], 1) for c in ids]
            if detected:
                await store.write_batch(batch(0, written, meta=PartitionMeta(last_offset=1)))
            else:
                # Redis < 7.2 answers each node's WAITAOF with "unknown command", after the writes.
                with pytest.raises(StoreUnavailableError, match="unknown command 'WAITAOF'"):
                    await store.write_batch(batch(0, written, meta=PartitionMeta(last_offset=1)))
            return detected, reason, await store.load_states(ids)
        finally:
            await store.close()

    detected, reason, loaded = run(go())
    client = redis.Redis.from_url(settings.url, socket_timeout=5)
    try:
        version = str(client.info("server")["redis_version"])
    finally:
        client.close()
    assert (version_tuple(version) >= (7, 2)) == detected
    if not detected:
        assert reason.endswith(f"redis_version {version} < 7.2 has no WAITAOF")
    assert {c: (states[c], {0: 1}) for c in ids} == loaded


def test_cluster_unreachable_raises_store_unavailable() -> None:
    """
    A cluster that does not answer is a StoreUnavailableError naming the startup nodes.
    """
    base = free_base_port()
    settings = StoreSettings(
        url="redis://:cluster-pw-77@127.0.0.1:1/0",
        cluster=True,
        cluster_nodes=[f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}"],
        socket_timeout=1.0,
        wait_aof_timeout=0.5,
    )
    with pytest.raises(StoreUnavailableError) as caught:
        run(RedisStore(settings).start())
    message = str(caught.value)
    assert "cluster-pw-77" not in message
    assert message.startswith(f"start on redis cluster at 127.0.0.1:{base},127.0.0.1:{base + 1}: ")
