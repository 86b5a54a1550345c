"""
A full replay of the ingest topics from offset 0 (a worker in a new consumer group after a
complete run, over the same topics and Redis: as after an offset reset) changes nothing: no
new alert, no record on churn.alerts at all, no dead letter, the same states (issue 14,
item 8). Every record is
forwarded again; the scorers recognise each by the ingest record it came from (its source
header), however far behind the watermark its event is.
"""

from __future__ import annotations

import signal

import test_stream
from oracle import check_against_replay, dead_letters
from test_stream import (
    SIM,
    Processes,
    Progress,
    Stack,
    TopicReader,
    publish,
    start_learner,
    wait_until,
)

from churnwatch.sim import Simulation

stack = test_stream.stack
processes = test_stream.processes


def records_on(stack: Stack, topic: str) -> int:
    reader = TopicReader(stack, topic)
    try:
        return len(reader.read(5.0))
    finally:
        reader.close()


def test_a_full_replay_from_offset_zero_sends_nothing_and_changes_nothing(
    stack: Stack, processes: Processes
) -> None:
    records = list(Simulation(SIM).records())
    sent = publish(stack, records)
    group = f"{stack.prefix}-worker"
    start_learner(processes, stack)
    worker = processes.start("worker", stack, "worker-1", group)
    progress = Progress(stack)
    try:
        wait_until(lambda: progress.done(group), 90, "the first run done", processes)
        alerts_before = records_on(stack, stack.topics.alerts)
        events_before = records_on(stack, stack.topics.events)
        assert events_before == sent
        worker.popen.send_signal(signal.SIGTERM)
        worker.popen.wait(timeout=30)
        # A new group: it has no committed offset and starts from the beginning.
        group = f"{stack.prefix}-replayed"
        processes.start("worker", stack, "worker-2", group)
        # Everything is forwarded again: churn.events doubles, and every copy is handled.
        wait_until(
            lambda: records_on(stack, stack.topics.events) == 2 * sent and progress.done(group),
            120,
            "every record forwarded again and handled",
            processes,
        )
    finally:
        progress.close()
    letters = dead_letters(stack)
    assert [] == letters
    assert alerts_before == records_on(stack, stack.topics.alerts)
    check_against_replay(stack, records)
