"""
Live operation equals the replay in the orders that are not easy: events published while the
consumer group forms, while a worker is killed and its partitions move to another, while the
learner is killed and restarted. Each ends with the replay's alerts, byte for byte, and no
event dead-lettered `too_late` (issue 18, item 1: the ingest merge once forwarded a topic's
records past another topic's records still in flight whenever partitions were assigned while
records were arriving).
"""

from __future__ import annotations

import pytest
import test_stream
from oracle import PacedPublisher, check_against_replay
from test_stream import (
    SIM,
    Processes,
    Stack,
    start_learner,
    start_worker,
    wait_done,
    wait_until,
)
from test_stream_faults import owns_events_partitions

from churnwatch.sim import Simulation

stack = test_stream.stack
processes = test_stream.processes

RUN_DEADLINE_S = 150.0


@pytest.mark.parametrize("order", ["workers first", "publish first"])
def test_the_easy_orders_give_the_replay(stack: Stack, processes: Processes, order: str) -> None:
    """
    Two workers assigned before anything is published, or a history published before any
    worker starts: the replay's result, with nothing dead-lettered.
    """
    records = list(Simulation(SIM).records())
    if order == "publish first":
        PacedPublisher(stack, records, chunk=len(records)).start().join()
    start_learner(processes, stack)
    workers = [start_worker(processes, stack, name) for name in ("worker-a", "worker-b")]
    if order == "workers first":
        wait_until(
            lambda: all(owns_events_partitions(w, stack) for w in workers),
            60,
            "both workers owning churn.events partitions",
            processes,
        )
        PacedPublisher(stack, records, chunk=len(records)).start().join()
    wait_done(stack, processes, RUN_DEADLINE_S)
    check_against_replay(stack, records)


def publish_while_the_group_forms(stack: Stack, processes: Processes) -> None:
    records = list(Simulation(SIM).records())
    start_learner(processes, stack)
    start_worker(processes, stack, "worker-a")
    publisher = PacedPublisher(stack, records).start()
    wait_until(lambda: publisher.fraction() >= 0.3, 60, "a third published", processes)
    # The second worker joins mid-publish: a rebalance while records arrive.
    start_worker(processes, stack, "worker-b")
    publisher.join()
    wait_done(stack, processes, RUN_DEADLINE_S)
    check_against_replay(stack, records)


def test_events_published_while_the_group_forms_give_the_replay(
    stack: Stack, processes: Processes
) -> None:
    """
    The first worker is assigned its partitions while events arrive, the second joins while
    they still arrive: the result is the replay's, with nothing dead-lettered.
    """
    publish_while_the_group_forms(stack, processes)


def kill_while_publishing(stack: Stack, processes: Processes) -> None:
    records = list(Simulation(SIM).records())
    learner = start_learner(processes, stack)
    doomed = start_worker(processes, stack, "worker-a")
    start_worker(processes, stack, "worker-b")
    wait_until(
        lambda: owns_events_partitions(doomed, stack),
        60,
        "the first worker owning churn.events partitions",
        processes,
    )
    publisher = PacedPublisher(stack, records, pause=0.15).start()
    wait_until(lambda: publisher.fraction() >= 0.4, 60, "two fifths published", processes)
    processes.kill(doomed)
    start_worker(processes, stack, "worker-c")
    wait_until(lambda: publisher.fraction() >= 0.7, 60, "seven tenths published", processes)
    processes.kill(learner)
    start_learner(processes, stack)
    assert publisher.fraction() < 1.0, "killed too late to test anything"
    publisher.join()
    wait_done(stack, processes, RUN_DEADLINE_S)
    # A killed worker's uncommitted alerts are produced again by the next owner.
    check_against_replay(stack, records, redelivery_allowed=True)


def test_a_worker_and_the_learner_killed_while_events_arrive_give_the_replay(
    stack: Stack, processes: Processes
) -> None:
    """
    Of two workers one is SIGKILLed mid-publish and a third joins; then the learner is
    SIGKILLed and restarted: the result is the replay's, with nothing dead-lettered.
    """
    kill_while_publishing(stack, processes)


@pytest.mark.long
@pytest.mark.parametrize("run", range(5))
def test_five_runs_in_a_row_of_publishing_while_the_group_forms(
    stack: Stack, processes: Processes, run: int
) -> None:
    publish_while_the_group_forms(stack, processes)


@pytest.mark.long
@pytest.mark.parametrize("run", range(5))
def test_five_runs_in_a_row_of_kills_while_events_arrive(
    stack: Stack, processes: Processes, run: int
) -> None:
    kill_while_publishing(stack, processes)
