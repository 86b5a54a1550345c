"""
Poison at a high rate (issue 14, item 7): one record in four of a simulated stream is bad, of
every kind the ingest and the scorers reject, a reused event id among them, published while a
worker runs. Every bad record lands on the dead-letter topic once, with its reason and its
bytes; the good ones give the replay's states and alerts, each alert once; the stream goes on.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import orjson
import test_stream
from oracle import dead_letters
from test_stream import (
    SIM,
    Processes,
    Progress,
    Stack,
    alerts_on_topic,
    assert_equals_replay,
    original_of,
    replay,
    start_learner,
    start_worker,
    wait_until,
)

from churnwatch.core.alerts import alert_to_json
from churnwatch.core.events import parse_event
from churnwatch.sdk.producer import raw_producer
from churnwatch.sim import Simulation

stack = test_stream.stack
processes = test_stream.processes
EVERY = 4
"""One record in EVERY is poison."""


def poison(n: int, good: bytes) -> tuple[str, bytes]:
    """The n-th bad record (its reason and bytes), made from the good event before it."""
    event = orjson.loads(good)
    kinds = (
        "malformed_json",
        "not_utf8",
        "not_an_object",
        "wrong_type",
        "missing_field",
        "invalid_value",
        "naive_timestamp",
        "unknown_type",
        "oversize",
        "reused_event_id",
    )
    kind = kinds[n % len(kinds)]
    own = {**event, "event_id": f"poison-{n}"}
    if kind == "malformed_json":
        return kind, b'{"type": "login", "customer_id": ' + str(n).encode()
    if kind == "not_utf8":
        return kind, b"\xff\xfe" + str(n).encode()
    if kind == "not_an_object":
        return kind, orjson.dumps([n, "login"])
    if kind == "wrong_type":
        return kind, orjson.dumps({**own, "customer_id": n})
    if kind == "missing_field":
        return kind, orjson.dumps({k: v for k, v in own.items() if k != "ts"})
    if kind == "invalid_value":
        return kind, orjson.dumps({**own, "customer_id": ""})
    if kind == "naive_timestamp":
        return kind, orjson.dumps({**own, "ts": own["ts"].replace("Z", "").split("+")[0]})
    if kind == "unknown_type":
        return kind, orjson.dumps({**own, "type": "teleport"})
    if kind == "oversize":
        return kind, orjson.dumps({**own, "pad": "x" * 70_000})
    # The good event's own id, a minute later: another event under a known id.
    later = parse_event(good).ts + timedelta(minutes=1)
    return kind, orjson.dumps({**event, "ts": later.isoformat()})


def test_poison_at_a_high_rate_is_dead_lettered_and_the_stream_goes_on(
    stack: Stack, processes: Processes
) -> None:
    good = [r for r in Simulation(SIM).records()]
    mixed: list[tuple[bytes, bytes | None]] = []  # (record, the good one it came after)
    expected: Counter[str] = Counter()
    originals: dict[bytes, str] = {}
    n = 0
    for i, record in enumerate(good):
        mixed.append((record, None))
        if i % (EVERY - 1) == EVERY - 2:
            kind, bad = poison(n, record)
            n += 1
            if bad in originals:
                continue  # the same bytes twice (a redelivery of a duplicate): skip
            mixed.append((bad, record))
            expected[kind] += 1
            originals[bad] = kind
    records = [r for r, _ in mixed]
    assert sum(expected.values()) * EVERY >= len(records) * 0.9
    start_learner(processes, stack)
    worker = start_worker(processes, stack)
    producer = raw_producer(stack.kafka)
    try:
        for record, after in mixed:
            source = after if after is not None else record
            head = orjson.loads(source)
            topic = stack.topics.for_event(head["type"])
            producer.send(topic, key=head["customer_id"].encode(), value=record)
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=5)
    progress = Progress(stack)
    try:
        wait_until(
            lambda: progress.done(f"{stack.prefix}-worker"),
            120,
            "every record handled",
            processes,
        )
    finally:
        progress.close()
    assert worker.popen.poll() is None, worker.tail()

    letters = dead_letters(stack)
    assert expected == Counter(str(letter["reason"]) for letter in letters)
    for letter in letters:
        assert originals[original_of(letter)] == letter["reason"]
    _, alerts = replay(records, stack.policy())
    published = alerts_on_topic(stack)
    assert {a.alert_id for a in alerts} == set(published)
    for alert in alerts:
        assert [alert_to_json(alert)] == published[alert.alert_id], alert.alert_id
    assert_equals_replay(stack, records)
