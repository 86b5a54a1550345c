"""
A worker stopped with SIGTERM mid-stream commits only what it fully processed: started again,
it ends with the replay's alerts and states, nothing lost, nothing applied twice, no dead
letter (issue 14, item 2).
"""

from __future__ import annotations

import signal

import test_stream
from oracle import PacedPublisher, check_against_replay
from test_stream import SIM, Processes, Progress, Stack, start_learner, start_worker, wait_until

from churnwatch.sim import Simulation

stack = test_stream.stack
processes = test_stream.processes


def test_a_worker_stopped_with_sigterm_mid_stream_loses_and_doubles_nothing(
    stack: Stack, processes: Processes
) -> None:
    records = list(Simulation(SIM).records())
    start_learner(processes, stack)
    first = start_worker(processes, stack, "worker-1")
    publisher = PacedPublisher(stack, records, pause=0.1).start()
    progress = Progress(stack)
    try:
        wait_until(
            lambda: progress.applied() >= len(records) // 4,
            90,
            "a quarter of the events applied",
            processes,
            every=0.05,
        )
        first.popen.send_signal(signal.SIGTERM)
        assert 0 == first.popen.wait(timeout=60), first.tail()
        assert publisher.fraction() < 1.0, "stopped too late to test anything"
        start_worker(processes, stack, "worker-2")
        publisher.join()
        wait_until(
            lambda: progress.done(f"{stack.prefix}-worker"),
            150,
            "every record applied after the restart",
            processes,
        )
    finally:
        progress.close()
    check_against_replay(stack, records)
