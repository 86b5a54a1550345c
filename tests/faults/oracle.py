"""
The oracle of the fault campaign and the paced publisher that makes faults meet live traffic.

`check_against_replay` reads back every record of churn.alerts and churn.deadletter and holds
them to the replay of the published input: the same alert ids, each with the replay's bytes,
each once unless the scenario allows redelivery (at-least-once out; the consumers deduplicate
by alert_id), and no dead letter at all (every input here is a good event).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import orjson
from test_stream import (
    SIM,
    Proc,
    Processes,
    Progress,
    Stack,
    TopicReader,
    alerts_on_topic,
    assert_equals_replay,
    publish,
    replay,
    start_learner,
    start_worker,
    wait_until,
)

from churnwatch.core.alerts import alert_to_json
from churnwatch.sdk.producer import EventProducer, PublishSummary, publish_records
from churnwatch.sim import Simulation


@dataclass
class PacedPublisher:
    """
    Publishes records in a thread, `chunk` at a time with `pause` seconds between chunks, so
    that they arrive while the group forms, rebalances or recovers. `fraction()` says how far
    it got; `join()` waits for the end (bounded) and returns the summary.
    """

    stack: Stack
    records: Sequence[bytes]
    chunk: int = 25
    pause: float = 0.08
    sent_so_far: int = 0
    summary: PublishSummary | None = None
    error: BaseException | None = None
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> PacedPublisher:
        self._thread = threading.Thread(target=self._run, name="paced-publisher", daemon=True)
        self._thread.start()
        return self

    def _paced(self) -> Iterator[bytes]:
        for i, record in enumerate(self.records):
            if i and i % self.chunk == 0:
                time.sleep(self.pause)
            self.sent_so_far = i
            yield record
        self.sent_so_far = len(self.records)

    def _run(self) -> None:
        try:
            with EventProducer(self.stack.kafka) as producer:
                self.summary = publish_records(self._paced(), producer)
        except BaseException as exc:  # reported by join()
            self.error = exc

    def fraction(self) -> float:
        return self.sent_so_far / max(1, len(self.records))

    def join(self, timeout: float = 120.0) -> PublishSummary:
        assert self._thread is not None, "not started"
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"publishing did not end within {timeout}s"
        if self.error is not None:
            raise self.error
        assert self.summary is not None
        assert self.summary.stopped is None, self.summary.stopped
        assert self.summary.sent == len(self.records), self.summary
        return self.summary


class Underway(NamedTuple):
    """A stream a third applied: what a fault scenario strikes into (`a_third_applied`)."""

    records: list[bytes]
    learner: Proc
    worker: Proc
    progress: Progress
    """Closed by the caller."""


def a_third_applied(stack: Stack, processes: Processes) -> Underway:
    """
    The simulated stream (SIM) published, the learner and one worker started, and a third of
    the events applied, but not all: the moment an outage scenario cuts a service.
    """
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
        assert progress.applied() < sent, "the fault would come too late to test anything"
    except BaseException:
        progress.close()
        raise
    return Underway(records, learner, worker, progress)


def dead_letters(stack: Stack) -> list[dict[str, object]]:
    reader = TopicReader(stack, stack.topics.deadletter)
    try:
        return [orjson.loads(r.value) for r in reader.read(5.0)]
    finally:
        reader.close()


def _alert_diff(alert: object, got: Sequence[bytes]) -> dict[str, object]:
    """The fields in which the published copies differ from the replay's alert."""
    want = orjson.loads(alert_to_json(alert))  # type: ignore[arg-type]
    out: dict[str, object] = {}
    for raw in got:
        have = orjson.loads(raw)
        for key in sorted({*want, *have}):
            if want.get(key) != have.get(key):
                out[key] = (want.get(key), have.get(key))
    return out


def check_against_replay(
    stack: Stack, records: Sequence[bytes], *, redelivery_allowed: bool = False
) -> None:
    """
    The workers' result equals the replay of `records`: no dead letter, Redis's states, and
    churn.alerts holding the replay's alerts byte for byte (once each unless redelivery is
    allowed).
    """
    letters = dead_letters(stack)
    reasons = Counter(str(letter.get("reason")) for letter in letters)
    assert not letters, f"{len(letters)} dead letters for good events: {dict(reasons)}"
    _, expected = replay(records, stack.policy())
    published = alerts_on_topic(stack)
    expected_ids = {a.alert_id for a in expected}
    missing, extra = expected_ids - set(published), set(published) - expected_ids
    assert not missing, f"{len(missing)} alerts of the replay missing (and {len(extra)} extra)"
    assert not extra, f"{len(extra)} alerts the replay does not have"
    for alert in expected:
        got = published[alert.alert_id]
        assert {alert_to_json(alert)} == set(got), (alert.alert_id, _alert_diff(alert, got))
        if not redelivery_allowed:
            assert len(got) == 1, f"{alert.alert_id} published {len(got)} times"
    assert_equals_replay(stack, records)
