"""
The Redis store against a real Redis: the stack's (CHURNWATCH_TEST_REDIS), and one started
here with `requirepass` for the credential and failure cases.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
import redis
from pydantic import SecretStr

from churnwatch.core.engine import EngineConfig, Policy, process_event
from churnwatch.core.errors import StoreUnavailableError
from churnwatch.core.events import parse_event
from churnwatch.core.model import Scorer
from churnwatch.core.rules import default_rules
from churnwatch.core.state import CustomerState
from churnwatch.store import BatchWrite, OutboxEntry, PartitionMeta, RedisStore, StoreSettings
from churnwatch.store.redis_store import version_tuple, waitaof_reason
from needs import end, free_port, require_binaries

T = TypeVar("T")
# Every wait in this file is bounded by one of these.
OP_TIMEOUT_S = 60.0
SERVER_START_S = 15.0
START_AT = datetime(2024, 3, 1, tzinfo=UTC)
# One history per customer: purchases, an urgent ticket, a return, then a three-week silence
# that the next login catches up on (sweep, snapshots, anchors, rule states).
HISTORY: list[tuple[str, float, dict[str, Any]]] = [
    ("login", 0.0, {"channel": "web"}),
    ("purchase", 0.5, {"amount": 120.5, "currency": "EUR", "order_id": "O-1"}),
    ("ticket", 2.0, {"ticket_id": "T-1", "severity": "urgent", "status": "open"}),
    ("return", 3.0, {"order_id": "O-1", "amount": 60.0, "reason": "broken"}),
    ("ticket", 5.0, {"ticket_id": "T-1", "severity": "urgent", "status": "solved", "csat": 2}),
    ("purchase", 6.25, {"amount": 15.0, "currency": "EUR", "order_id": "O-2"}),
    ("login", 27.0, {}),
]


def run(coro: Coroutine[Any, Any, T]) -> T:
    """
    Runs a coroutine to completion, bounded by OP_TIMEOUT_S.
    """
    return asyncio.run(asyncio.wait_for(coro, OP_TIMEOUT_S))


def real_states(customer_ids: list[str], shift_days: float = 0.0) -> dict[str, CustomerState]:
    """
    States built by the core's own step over HISTORY, one per customer.
    """
    policy = Policy.build(default_rules(), EngineConfig())
    scorer = Scorer(policy.config.model)
    states: dict[str, CustomerState] = {}
    for number, customer_id in enumerate(customer_ids):
        state: CustomerState | None = None
        for i, (kind, day, fields) in enumerate(HISTORY):
            at = START_AT + timedelta(days=day + shift_days + number / 24)
            raw = orjson.dumps(
                {
                    "event_id": f"{customer_id}-{i}",
                    "type": kind,
                    "customer_id": customer_id,
                    "ts": at.isoformat(),
                    **fields,
                }
            )
            event = parse_event(raw)
            step = process_event(
                state,
                event,
                watermark=event.ts - policy.config.lateness,
                model_for=lambda _at: scorer,
                policy=policy,
            )
            state = step.state
        assert state is not None
        states[customer_id] = state
    return states


def batch(
    partition: int, states: Sequence[tuple[CustomerState, int | None]], **kw: Any
) -> BatchWrite:
    """
    A BatchWrite with an empty meta unless one is given.
    """
    return BatchWrite(
        partition=partition, meta=kw.pop("meta", PartitionMeta()), states=states, **kw
    )


@pytest.fixture
def settings(redis_url: str, redis_prefix: str) -> StoreSettings:
    """
    Store settings on the stack's Redis under this test's own prefix.
    """
    return StoreSettings(url=redis_url, prefix=redis_prefix)


@pytest.fixture
def store(settings: StoreSettings) -> RedisStore:
    """
    A store built on the stack's Redis (each test starts and closes it inside its coroutine).
    """
    return RedisStore(settings)


async def started(store: RedisStore) -> RedisStore:
    """
    Starts the store and returns it.
    """
    await store.start()
    return store


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[tuple[int, str, subprocess.Popen[bytes]]]:
    """
    A redis-server of our own with `requirepass`, on a free port; stopped by its PID after.
    """
    require_binaries("redis-server")
    port = free_port()
    password = "s3cret-pa55word-for-test"
    log = (tmp_path / "redis.log").open("wb")
    proc = subprocess.Popen(
        [
            "redis-server",
            "--bind", "127.0.0.1", "--port", str(port), "--dir", str(tmp_path),
            "--save", "", "--appendonly", "no", "--requirepass", password,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        client = redis.Redis(port=port, password=password, socket_timeout=1)
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"redis-server on port {port} did not answer: see {log.name}")
                time.sleep(0.05)
        client.close()
        yield port, password, proc
    finally:
        end(proc, timeout=10)
        log.close()


# -- customers -------------------------------------------------------------------------


def test_state_round_trip_equals_the_original(store: RedisStore) -> None:
    """
    States built by the core come back from Redis equal, with their applied offsets.
    """
    states = real_states(["alice", "bob", "carol"])
    assert all(s.pending and s.score is not None and s.rules for s in states.values())

    async def go() -> tuple[dict[str, tuple[CustomerState, dict[int, int]]], CustomerState | None]:
        await started(store)
        try:
            written = [(s, 10 + i) for i, s in enumerate(states.values())]
            await store.write_batch(batch(2, written))
            return await store.load_states([*states, "nobody"]), await store.load_state("bob")
        finally:
            await store.close()

    loaded, bob = run(go())
    expected = {cid: (s, {2: 10 + i}) for i, (cid, s) in enumerate(states.items())}
    assert expected == loaded
    assert states["bob"] == bob


def test_unknown_customers_and_partitions_are_empty(store: RedisStore) -> None:
    """
    Customers never written are absent, and a partition never written has an empty meta.
    """

    async def go() -> tuple[object, ...]:
        await started(store)
        try:
            return (
                await store.load_states(["x", "y"]),
                await store.load_state("x"),
                await store.load_partition(0),
                await store.outbox(0),
                await store.due_customers(0, START_AT),
                await store.latest_checkpoint(),
            )
        finally:
            await store.close()

    assert ({}, None, PartitionMeta(), [], [], None) == run(go())


def test_applied_offsets_are_kept_per_partition(store: RedisStore) -> None:
    """
    A state written without an offset keeps its offsets; offsets of other partitions stay.
    """
    state = real_states(["dave"])["dave"]

    async def go() -> list[dict[int, int]]:
        await started(store)
        seen: list[dict[int, int]] = []
        try:
            for partition, offset in [(0, 5), (0, None), (1, 7), (0, 9)]:
                await store.write_batch(batch(partition, [(state, offset)]))
                seen.append((await store.load_states(["dave"]))["dave"][1])
        finally:
            await store.close()
        return seen

    assert [{0: 5}, {0: 5}, {0: 5, 1: 7}, {0: 9, 1: 7}] == run(go())


def test_stale_fields_do_not_survive_a_write(store: RedisStore, redis_client: redis.Redis) -> None:
    """
    Fields the new state does not write (an older format's) are removed; offsets are kept.
    """
    first, second = real_states(["erin"]), real_states(["erin"], shift_days=1.0)
    key = store.keys.customer("erin")

    async def go() -> CustomerState | None:
        await started(store)
        try:
            await store.write_batch(batch(0, [(first["erin"], 3)]))
            redis_client.hset(key, mapping={"f.obsolete": "1.5", "legacy": "x", "o:4": "11"})
            await store.write_batch(batch(0, [(second["erin"], None)]))
            return await store.load_state("erin")
        finally:
            await store.close()

    assert second["erin"] == run(go())
    fields = set(redis_client.hkeys(key))
    assert {"f.obsolete", "legacy"}.isdisjoint(fields)
    assert {"o:0": "3", "o:4": "11"} == {
        str(k): str(v) for k, v in redis_client.hgetall(key).items() if str(k).startswith("o:")
    }


# -- partitions: meta, outbox, due, risk ----------------------------------------------


def test_partition_meta_round_trip(store: RedisStore) -> None:
    """
    The partition meta written with a batch is read back equal (with the last ingest offset
    handled per source, topic names with dots and colons included); None fields stay None.
    """
    sources = {"cw.events.login:0": 17, "cw.events.purchase:3": 0, "odd:name:2": 5}
    full = PartitionMeta(START_AT + timedelta(hours=2), START_AT + timedelta(hours=1), 41, sources)
    partial = PartitionMeta(high_water=START_AT, watermark=None, last_offset=None)

    async def go() -> tuple[PartitionMeta, PartitionMeta]:
        await started(store)
        try:
            await store.write_batch(batch(3, [], meta=full))
            await store.write_batch(batch(4, [], meta=partial))
            return await store.load_partition(3), await store.load_partition(4)
        finally:
            await store.close()

    assert (full, partial) == run(go())


def test_outbox_is_readable_until_cleared(store: RedisStore) -> None:
    """
    Outbox entries written with a batch are read back in order until they are cleared.
    """
    entries = [
        OutboxEntry("alert-2", "churn.alerts", b"alice", b'{"a":2}', (("alert_id", b"alert-2"),)),
        OutboxEntry("alert-1", "churn.alerts", b"bob", b'{"a":1}', (("alert_id", b"alert-1"),)),
        OutboxEntry("ex-9", "churn.training", None, bytes(range(256))),
    ]
    state = real_states(["alice"])["alice"]

    async def go() -> tuple[list[OutboxEntry], ...]:
        await started(store)
        try:
            meta = PartitionMeta(last_offset=17)
            await store.write_batch(batch(1, [(state, 17)], outbox=entries, meta=meta))
            before = await store.outbox(1)
            other = await store.outbox(0)
            await store.clear_outbox(1, ["alert-2", "ex-9", "never-there"])
            middle = await store.outbox(1)
            await store.clear_outbox(1, ["alert-1"])
            return before, other, middle, await store.outbox(1)
        finally:
            await store.close()

    assert (entries, [], [entries[1]], []) == run(go())


def test_due_customers_are_exactly_those_due_until(store: RedisStore) -> None:
    """
    due_customers returns the customers due at or before `until`; None removes a customer.
    """
    at = START_AT + timedelta(days=3, microseconds=123_456)
    due = {
        "early": at - timedelta(days=1),
        "exact": at,
        "late": at + timedelta(microseconds=1),
        "gone": at - timedelta(days=2),
        "never": None,
    }

    async def go() -> tuple[list[str], ...]:
        await started(store)
        try:
            await store.write_batch(batch(0, [], due=due))
            first = await store.due_customers(0, at)
            await store.write_batch(batch(0, [], due={"gone": None, "late": at}))
            second = await store.due_customers(0, at)
            limited = await store.due_customers(0, at, limit=1)
            return first, second, limited, await store.due_customers(1, at)
        finally:
            await store.close()

    first, second, limited, other = run(go())
    assert ["gone", "early", "exact"] == first
    assert ["early", "exact", "late"] == second
    assert ["early"] == limited
    assert [] == other


def test_naive_times_are_refused(store: RedisStore) -> None:
    """
    A naive datetime in a batch or a due query is a ValueError, before anything is written.
    """
    naive = datetime(2024, 1, 1)  # naive on purpose

    async def go() -> None:
        await started(store)
        try:
            with pytest.raises(ValueError, match="timezone-aware"):
                await store.write_batch(batch(0, [], due={"c": naive}))
            with pytest.raises(ValueError, match="timezone-aware"):
                await store.due_customers(0, naive)
        finally:
            await store.close()

    run(go())


def test_at_risk_is_ordered_and_paginated_over_partitions(store: RedisStore) -> None:
    """
    at_risk merges the partitions, highest churn probability first, and pages consistently.
    """
    base = real_states(["k0"])["k0"]
    probabilities = {f"k{i}": round(0.05 * (i % 7) + 0.01 * (i % 3), 4) for i in range(20)}
    probabilities["k3"] = probabilities["k10"]  # a tie across partitions
    states = {
        c: replace(base, customer_id=c, churn_probability=p) for c, p in probabilities.items()
    }
    expected = sorted(probabilities.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)

    async def go() -> tuple[list[list[tuple[str, float]]], list[tuple[str, float]], list[Any]]:
        await started(store)
        try:
            ids = list(states)
            await store.write_batch(batch(0, [(states[c], 1) for c in ids[::2]]))
            await store.write_batch(batch(1, [(states[c], 1) for c in ids[1::2]]))
            pages = [
                await store.at_risk(limit=6, offset=o, partitions=[0, 1]) for o in (0, 6, 12, 18)
            ]
            unscored = replace(states["k6"], churn_probability=None)
            await store.write_batch(batch(0, [(unscored, 2)]))
            after = await store.at_risk(limit=100, partitions=range(2))
            return pages, after, await store.at_risk(limit=5, partitions=[])
        finally:
            await store.close()

    pages, after, none = run(go())
    assert expected == [item for page in pages for item in page]
    assert [6, 6, 6, 2] == [len(page) for page in pages]
    assert [kv for kv in expected if kv[0] != "k6"] == after
    assert [] == none


# -- checkpoints ------------------------------------------------------------------------


def test_checkpoints_save_load_latest_and_trim(redis_url: str, redis_prefix: str) -> None:
    """
    Checkpoints round trip, `latest` follows the newest epoch, and only the newest N are kept.
    """
    store = RedisStore(StoreSettings(url=redis_url, prefix=redis_prefix, checkpoints_kept=3))
    blob = Scorer().to_bytes()
    blobs = {epoch: blob + str(epoch).encode() for epoch in range(1, 7)}
    client = redis.Redis.from_url(redis_url, decode_responses=True)

    async def go() -> tuple[object, ...]:
        await started(store)
        try:
            for epoch in (1, 2, 3, 5, 6, 4):
                await store.save_checkpoint(epoch, blobs[epoch])
            return (
                {e: await store.load_checkpoint(e) for e in range(1, 8)},
                await store.latest_checkpoint(),
                await store.latest_checkpoint(at_most=5),
                await store.latest_checkpoint(at_most=3),
                client.get(store.keys.latest()),
                client.zrange(store.keys.versions(), 0, -1),
            )
        finally:
            await store.close()
            client.close()

    loaded, latest, at_most_5, at_most_3, latest_key, versions = run(go())
    expected = {e: (blobs[e] if e in (4, 5, 6) else None) for e in range(1, 8)}
    assert expected == loaded
    assert (6, blobs[6]) == latest
    assert (5, blobs[5]) == at_most_5
    assert None is at_most_3
    assert "6" == latest_key
    assert ["4", "5", "6"] == versions


# -- failures and credentials -----------------------------------------------------------


def test_wrong_password_raises_without_the_password(
    password_redis: tuple[int, str, subprocess.Popen[bytes]],
) -> None:
    """
    A wrong password (setting or URL) is a StoreUnavailableError naming the address, not it.
    """
    port, _, _ = password_redis
    wrong = "wrong-pa55word-xyz"
    cases = [
        StoreSettings(url=f"redis://127.0.0.1:{port}/0", password=SecretStr(wrong)),
        StoreSettings(url=f"redis://:{wrong}@127.0.0.1:{port}/0"),
        StoreSettings(url=f"redis://127.0.0.1:{port}/0"),
    ]
    for settings in cases:
        with pytest.raises(StoreUnavailableError) as caught:
            run(RedisStore(settings).start())
        message = str(caught.value)
        assert wrong not in message
        assert f"127.0.0.1:{port}" in message
        assert message.startswith("start on redis at ")
        assert isinstance(caught.value.__cause__, redis.exceptions.RedisError)
        assert wrong not in repr(settings)


def test_right_password_then_server_gone(
    password_redis: tuple[int, str, subprocess.Popen[bytes]],
) -> None:
    """
    The settings' password overrides the URL's; once the server is gone, calls raise ours.
    """
    port, password, server = password_redis
    settings = StoreSettings(
        url=f"redis://:not-it@127.0.0.1:{port}/0", password=SecretStr(password)
    )
    store = RedisStore(settings)

    async def go() -> str:
        await store.start()
        try:
            await store.ping()
            server.terminate()
            await asyncio.to_thread(server.wait, 10)
            with pytest.raises(StoreUnavailableError) as caught:
                await store.load_states(["a"])
            return str(caught.value)
        finally:
            await store.close()

    message = run(go())
    assert password not in message
    assert message.startswith(f"load_states on redis at 127.0.0.1:{port}: ")


def test_closed_port_raises_store_unavailable() -> None:
    """
    Nothing listening is a StoreUnavailableError naming the operation and the address.
    """
    port = free_port()
    settings = StoreSettings(
        url=f"redis://:pw-in-url-123@127.0.0.1:{port}/0", socket_timeout=1.0, wait_aof_timeout=0.5
    )
    with pytest.raises(StoreUnavailableError) as caught:
        run(RedisStore(settings).start())
    assert "pw-in-url-123" not in str(caught.value)
    assert str(caught.value).startswith(f"start on redis at 127.0.0.1:{port}: ")


def test_calls_before_start_raise(settings: StoreSettings) -> None:
    """
    A store that was never started says so instead of connecting lazily.
    """
    with pytest.raises(StoreUnavailableError, match="not started"):
        run(RedisStore(settings).ping())


# -- WAITAOF ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "appendonly", "expected"),
    [
        ("7.2.4", "yes", None),
        ("8.0.2", "yes", None),
        ("7.2.0", None, None),
        ("7.2.4", "no", "appendonly is 'no', not 'yes'"),
        ("7.0.15", "yes", "redis_version 7.0.15 < 7.2 has no WAITAOF"),
        ("6.2.14", None, "redis_version 6.2.14 < 7.2 has no WAITAOF"),
        (None, None, None),
    ],
)
def test_waitaof_reason(version: str | None, appendonly: str | None, expected: str | None) -> None:
    """
    WAITAOF is usable from Redis 7.2 with appendonly yes; unknowns are left to a probe.
    """
    assert expected == waitaof_reason(version, appendonly)


def test_version_tuple() -> None:
    """
    Version strings compare as tuples of their leading numbers.
    """
    assert [(7, 2, 4), (7, 0, 15), (8, 0), (7, 2)] == [
        version_tuple(v) for v in ("7.2.4", "7.0.15", "8.0-rc1", "7.2.x")
    ]


def test_waitaof_detection_against_the_stack(
    store: RedisStore, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """
    The store detects WAITAOF support of the stack's Redis (AOF on), logs it once, and writes.
    """
    version = str(redis_client.info("server")["redis_version"])
    appendonly = redis_client.config_get("appendonly")["appendonly"]
    assert "yes" == appendonly
    supported = version_tuple(version) >= (7, 2)
    state = real_states(["wendy"])["wendy"]

    async def go() -> CustomerState | None:
        with caplog.at_level(logging.INFO, logger="churnwatch.store.redis_store"):
            await started(store)
        try:
            await store.write_batch(batch(0, [(state, 1)], meta=PartitionMeta(last_offset=1)))
            return await store.load_state("wendy")
        finally:
            await store.close()

    assert state == run(go())
    assert supported == store.waitaof
    logged = [r for r in caplog.records if r.getMessage() == "store.waitaof"]
    assert 1 == len(logged)
    assert supported == getattr(logged[0], "enabled", None)
    if not supported:
        assert f"redis_version {version} < 7.2 has no WAITAOF" == store.waitaof_reason


def test_write_batch_sends_waitaof_when_enabled(
    store: RedisStore, redis_client: redis.Redis
) -> None:
    """
    With WAITAOF on, the batch is written and then waited for (an error where Redis lacks it).
    """
    state = real_states(["xena"])["xena"]
    supported = version_tuple(str(redis_client.info("server")["redis_version"])) >= (7, 2)

    async def go() -> CustomerState | None:
        await started(store)
        try:
            store._waitaof = True  # force the path even where detection turned it off
            if supported:
                await store.write_batch(batch(0, [(state, 1)]))
            else:
                with pytest.raises(StoreUnavailableError, match="unknown command 'WAITAOF'"):
                    await store.write_batch(batch(0, [(state, 1)]))
            return await store.load_state("xena")
        finally:
            await store.close()

    # Written either way: WAITAOF comes after the writes in the same pipeline.
    assert state == run(go())


def test_waitaof_off_in_settings(redis_url: str, redis_prefix: str) -> None:
    """
    wait_aof=False turns WAITAOF off without asking the server.
    """
    store = RedisStore(StoreSettings(url=redis_url, prefix=redis_prefix, wait_aof=False))

    async def go() -> tuple[bool, str]:
        await store.start()
        await store.close()
        return store.waitaof, store.waitaof_reason

    assert (False, "wait_aof is off in the settings") == run(go())


# -- settings ---------------------------------------------------------------------------


def test_settings_never_show_the_password() -> None:
    """
    Neither repr nor address shows a password from the URL or the settings.
    """
    settings = StoreSettings(
        url="redis://user:url-secret-1@10.0.0.5:6380/2", password=SecretStr("field-secret-2")
    )
    shown = f"{settings!r} {settings} {settings.address}"
    assert "url-secret-1" not in shown
    assert "field-secret-2" not in shown
    assert "10.0.0.5:6380" == settings.address


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prefix": "cw{x}"}, "prefix"),
        ({"prefix": ""}, "prefix"),
        ({"url": "http://127.0.0.1:6379"}, "url"),
        ({"cluster_nodes": ["127.0.0.1"]}, "cluster_nodes"),
        ({"socket_timeout": 1.0, "wait_aof_timeout": 2.0}, "wait_aof_timeout"),
    ],
)
def test_settings_reject_bad_values(kwargs: dict[str, Any], field: str) -> None:
    """
    Invalid settings fail at construction with a message naming the field.
    """
    with pytest.raises(ValueError, match=field):
        StoreSettings(**kwargs)


def test_every_prefix_of_a_batch_write_keeps_states_behind_their_due_entries_and_meta(
    redis_url: str, redis_prefix: str, redis_client: redis.Redis
) -> None:
    """
    Redis applies a batch's pipeline in order, and a crash or a shutdown can keep any prefix
    of it. For every prefix, applied alone under a prefix of its own: a customer whose state
    (with its applied offset) is written also has its due entry (the retry skips that
    customer's events as applied and would never write the entry again), and the partition
    meta is written only once every state is.
    """
    states = real_states(["p1", "p2", "p3"])
    due = {cid: s.last_activity_at + timedelta(days=7) for cid, s in states.items()}
    write = batch(
        0,
        [(s, 40 + i) for i, s in enumerate(states.values())],
        due=due,
        meta=PartitionMeta(last_offset=42),
    )
    commands = [
        c
        for phase in RedisStore(StoreSettings(url=redis_url))._batch_commands(write)
        for c in phase
    ]
    assert len(commands) > 5
    for k in range(len(commands) + 1):
        prefix = f"{redis_prefix}-{k}"
        store = RedisStore(StoreSettings(url=redis_url, prefix=prefix))
        for command in [c for phase in store._batch_commands(write) for c in phase][:k]:
            redis_client.execute_command(*command)

        async def read(store: RedisStore = store) -> tuple[dict[str, Any], list[str], Any]:
            await started(store)
            try:
                loaded = await store.load_states(list(states))
                far = START_AT + timedelta(days=3650)
                return loaded, await store.due_customers(0, far), await store.load_partition(0)
            finally:
                await store.close()

        loaded, due_now, meta = run(read())
        assert set(loaded) <= set(due_now), (k, commands[k - 1][0] if k else None)
        if meta.last_offset is not None:
            assert set(states) == set(loaded), k
