"""
The embedded demo: the simulator's records through the same core the workers run, in one
process, and a report of what churnwatch would have done, how early and how well.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from churnwatch.core.alerts import AlertRecord, alert_to_json
from churnwatch.core.engine import Policy
from churnwatch.replay.engine import Counts, DeadLetter, Replay, batches, fewer_collections
from churnwatch.replay.evaluation import AlertLog, ChurnTruth, Evaluation, evaluate
from churnwatch.sim.simulator import SimConfig, Simulation


@dataclass(slots=True)
class DemoResult:
    counts: Counts
    evaluation: Evaluation
    log: AlertLog
    auc_model: float | None
    auc_prior: float | None
    auc_blended: float | None
    labels: int
    examples: list[AlertRecord]
    dead_letters: list[DeadLetter]
    model_version: str
    rules_version: str
    seconds: float
    customers_seen: int
    extra: dict[str, float] = field(default_factory=dict)


def _pick_examples(
    alerts: list[AlertRecord], truths: dict[str, ChurnTruth], n: int
) -> list[AlertRecord]:
    """Up to n example alerts: different rules first, customers who then churned first."""
    chosen: list[AlertRecord] = []
    rules_used: set[str] = set()
    churned = [a for a in alerts if truths.get(a.customer_id, ChurnTruth(False, None)).churned]
    for pool in (churned, alerts):
        for alert in pool:
            if len(chosen) >= n:
                return chosen
            if alert.rule in rules_used or not alert.reasons:
                continue
            rules_used.add(alert.rule)
            chosen.append(alert)
    for alert in churned:
        if len(chosen) >= n:
            break
        if alert not in chosen and alert.reasons:
            chosen.append(alert)
    return chosen


def run_demo(
    config: SimConfig,
    policy: Policy,
    *,
    alerts_out: IO[bytes] | None = None,
    progress: Callable[[int], None] | None = None,
    records: Iterable[bytes] | None = None,
) -> DemoResult:
    """
    Simulate, replay and evaluate.

    Args:
        config: the simulated population.
        policy: rules and engine config.
        alerts_out: where to write every alert as the workers would publish it (JSONL).
        progress: called with the number of simulated days replayed so far, after each day
            (with `records`: the number of records consumed, now and then).
        records: replay these records instead of the simulator's (its truths still apply).
    """
    started = time.perf_counter()
    log = AlertLog()
    kept: list[AlertRecord] = []
    dead: list[DeadLetter] = []

    def on_alert(alert: AlertRecord) -> None:
        log.add(alert.customer_id, alert.rule, alert.action, alert.event_ts)
        if len(kept) < 5000:
            kept.append(alert)
        if alerts_out is not None:
            alerts_out.write(alert_to_json(alert) + b"\n")

    def on_dead(letter: DeadLetter) -> None:
        if len(dead) < 1000:
            dead.append(letter)

    sim = Simulation(config)
    replay = Replay(policy, on_alert=on_alert, on_dead_letter=on_dead)
    with fewer_collections():
        if records is None:
            for day, records_of_day in enumerate(sim.batches(), start=1):
                for batch in batches(records_of_day):
                    replay.feed_many(batch)
                if progress is not None:
                    progress(day)
        else:
            fed = 0
            for batch in batches(iter(records)):
                replay.feed_many(batch)
                if progress is not None:  # at every 20,000 records
                    for mark in range((fed // 20_000 + 1) * 20_000, fed + len(batch) + 1, 20_000):
                        progress(mark)
                fed += len(batch)
            if progress is not None:
                progress(replay.counts.consumed)
        replay.finish()
    truths = {
        t.customer_id: ChurnTruth(
            churned=t.churned,
            churn_at=t.churn_at,
            cancelled=(state := replay.states.get(t.customer_id)) is not None
            and state.cancelled_at is not None,
        )
        for t in sim.truths()
    }
    evaluation = evaluate(log, truths, horizon=policy.config.horizon, seen=replay.states.keys())
    q = replay.quality
    return DemoResult(
        counts=replay.counts,
        evaluation=evaluation,
        log=log,
        auc_model=q.model.auc,
        auc_prior=q.prior.auc,
        auc_blended=q.blended.auc,
        labels=replay.learner.n_labels,
        examples=_pick_examples(kept, truths, 5),
        dead_letters=dead,
        model_version=replay.learner.version,
        rules_version=policy.rules_version,
        seconds=time.perf_counter() - started,
        customers_seen=len(replay.states),
    )


def write_alerts(path: Path, alerts: Iterable[AlertRecord]) -> None:
    """Write alerts as JSONL, one per line, as the workers would publish them."""
    with path.open("wb") as handle:
        for alert in alerts:
            handle.write(alert_to_json(alert) + b"\n")
