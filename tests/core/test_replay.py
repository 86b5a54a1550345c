"""
The replay: the core over a stream of records, deterministic, counting every record once.
"""

from __future__ import annotations

import io
import random
from datetime import timedelta

import pytest

from churnwatch.core.alerts import AlertRecord, alert_to_json
from churnwatch.core.engine import EngineConfig, Policy
from churnwatch.core.partitioning import partition_of
from churnwatch.core.rules import default_rules
from churnwatch.core.state import to_dict
from churnwatch.replay.demo import run_demo
from churnwatch.replay.engine import Replay
from churnwatch.sim.simulator import SimConfig, Simulation

POLICY = Policy.build(default_rules(), EngineConfig())
CONFIG = SimConfig(
    customers=150,
    days=90,
    seed=11,
    malformed_rate=0.01,
    duplicate_rate=0.02,
    disorder=timedelta(minutes=5),
)


@pytest.fixture(scope="module")
def records() -> list[bytes]:
    return list(Simulation(CONFIG).records())


def replay(records: list[bytes], partitions: int = 1) -> tuple[Replay, list[AlertRecord]]:
    alerts: list[AlertRecord] = []
    engine = Replay(POLICY, partitions=partitions, on_alert=alerts.append)
    engine.run(records)
    return engine, alerts


def test_every_record_is_counted_once(records: list[bytes]) -> None:
    """
    consumed == processed + duplicates + dead_lettered, with some of each.
    """
    engine, _ = replay(records)
    c = engine.counts
    assert len(records) == c.consumed
    assert c.consumed == c.processed + c.duplicates + c.dead_lettered
    assert c.duplicates > 0
    assert c.dead_lettered > 0
    assert c.processed > 0


def test_two_runs_give_byte_identical_alerts() -> None:
    """
    The demo with the same seed writes the same alert bytes twice.
    """
    small = SimConfig(customers=120, days=60, seed=5, malformed_rate=0.01, duplicate_rate=0.01)
    outs = []
    for _ in range(2):
        buffer = io.BytesIO()
        run_demo(small, POLICY, alerts_out=buffer)
        outs.append(buffer.getvalue())
    assert outs[0] == outs[1]
    assert outs[0].count(b"\n") > 10


def test_redelivered_events_change_nothing(records: list[bytes]) -> None:
    """
    Replaying every record twice in a row gives the same states and alerts as once.
    """
    once, alerts_once = replay(records)
    doubled = [r for record in records for r in (record, record)]
    twice, alerts_twice = replay(doubled)
    assert [alert_to_json(a) for a in alerts_once] == [alert_to_json(a) for a in alerts_twice]
    assert {c: to_dict(s) for c, s in once.states.items()} == {
        c: to_dict(s) for c, s in twice.states.items()
    }


def test_partition_interleaving_does_not_change_the_result(records: list[bytes]) -> None:
    """
    The same per-partition order interleaved differently across three partitions (as a
    consumer of three partitions may see it) gives the same states and the same alerts.
    """
    from churnwatch.core.errors import BadEventError
    from churnwatch.core.events import parse_event

    def part(raw: bytes) -> int:
        try:
            return partition_of(parse_event(raw).customer_id, 3)
        except BadEventError:
            return 0

    queues = [[r for r in records if part(r) == p] for p in range(3)]

    def chunks(seed: int) -> list[bytes]:
        rng = random.Random(seed)
        qs = [list(q) for q in queues]
        out: list[bytes] = []
        while any(qs):
            q = rng.choice([q for q in qs if q])
            n = rng.randint(1, 40)
            out.extend(q[:n])
            del q[:n]
        return out

    a, alerts_a = replay(chunks(1), partitions=3)
    b, alerts_b = replay(chunks(2), partitions=3)
    assert sorted(alert_to_json(x) for x in alerts_a) == sorted(alert_to_json(x) for x in alerts_b)
    assert {c: to_dict(s) for c, s in a.states.items()} == {
        c: to_dict(s) for c, s in b.states.items()
    }
    assert len(alerts_a) > 0


def test_a_quiet_partition_accepts_what_comes_after_its_silence() -> None:
    """
    One customer active every few days: nothing is dead-lettered for being in the future,
    while an event a year ahead is.
    """
    from datetime import UTC, datetime

    from churnwatch.core.events import LoginEvent, event_to_json

    def login(n: int, day: float) -> bytes:
        at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=day)
        return event_to_json(LoginEvent(event_id=f"e{n}", type="login", customer_id="c1", ts=at))

    records = [login(i, 3.5 * i) for i in range(10)] + [login(99, 400)]
    engine, _ = replay(records)
    assert 10 == engine.counts.processed
    assert {"future_timestamp": 1} == dict(engine.counts.by_reason)


def test_a_reused_event_id_is_dead_lettered_not_dropped_as_a_duplicate() -> None:
    """
    An event under an id the customer's state remembers with another event time is a
    different event: it is dead-lettered `reused_event_id` (the message names both times),
    not skipped as a duplicate, and it changes nothing; the same event again is a duplicate.
    """
    import orjson

    from churnwatch.replay.engine import DeadLetter

    def login(event_id: str, ts: str) -> bytes:
        return orjson.dumps({"event_id": event_id, "type": "login", "customer_id": "c1", "ts": ts})

    first = login("e1", "2026-01-01T10:00:00Z")
    again = login("e1", "2026-01-01T10:00:00Z")
    reused = login("e1", "2026-01-01T10:20:00Z")
    later = login("e2", "2026-01-01T10:30:00Z")
    letters: list[DeadLetter] = []
    engine = Replay(POLICY, partitions=1, on_dead_letter=letters.append)
    engine.run([first, again, reused, later])
    c = engine.counts
    assert (4, 2, 1, 1) == (c.consumed, c.processed, c.duplicates, c.dead_lettered)
    (letter,) = letters
    assert ("reused_event_id", reused) == (letter.reason, letter.raw)
    assert "2026-01-01T10:00:00+00:00" in letter.message
    assert "2026-01-01T10:20:00+00:00" in letter.message
    state = engine.states["c1"]
    assert 2 == state.features.event_count
