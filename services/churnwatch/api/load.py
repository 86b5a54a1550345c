"""
Fill the store from a history, without the broker: replay the events through the core (the
same `Replay` the backtest runs) and write what the scoring workers would have written, with
the same `BatchWrite`: states, due and at-risk orders, score and alert histories, and the
model checkpoints. For trying the API and the web page on a history (`churnwatch load`), and
for the API's tests.

Not a substitute for the workers in production: nothing is produced to Kafka, and the
partition meta carries no offsets (a worker started on the same prefix would re-process).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from churnwatch.core.alerts import AlertRecord, alert_to_json
from churnwatch.core.engine import Policy, StepResult, next_due_at
from churnwatch.core.partitioning import partition_of
from churnwatch.replay.engine import Counts, Replay
from churnwatch.store import BatchWrite, HistoryPoint, PartitionMeta, RedisStore, StoredAlert

_CHUNK = 2000
"""States per write_batch call."""


@dataclass(slots=True)
class _Collected:
    history: dict[int, list[HistoryPoint]] = field(default_factory=dict)
    alerts: dict[int, list[StoredAlert]] = field(default_factory=dict)
    high_water: dict[int, datetime] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Loaded:
    """What `load_history` wrote."""

    counts: Counts
    customers: int
    alerts: list[AlertRecord]
    checkpoints: int


async def load_history(
    store: RedisStore, records: Iterable[bytes], policy: Policy, *, partitions: int
) -> Loaded:
    """Replay `records` and write the outcome to `store`, partition by partition."""
    collected = _Collected()
    fired: list[AlertRecord] = []

    def on_step(step: StepResult) -> None:
        state, scoring = step.state, step.scoring
        pid = partition_of(state.customer_id, partitions)
        if scoring is not None and step.outcome != "duplicate":
            point = HistoryPoint(
                state.customer_id, scoring.at, scoring.churn_probability, scoring.score
            )
            collected.history.setdefault(pid, []).append(point)
            top = collected.high_water.get(pid)
            if top is None or scoring.at > top:
                collected.high_water[pid] = scoring.at
        for alert in step.alerts:
            collected.alerts.setdefault(pid, []).append(_stored(alert))
            fired.append(alert)

    replay = Replay(policy, partitions=partitions, on_step=on_step)
    counts = replay.run(records)
    segments = tuple(s.name for s in policy.rules.segments)
    by_partition: dict[int, list[str]] = {}
    for customer_id in replay.states:
        by_partition.setdefault(partition_of(customer_id, partitions), []).append(customer_id)
    for pid in range(partitions):
        ids = sorted(by_partition.get(pid, []))
        history = collected.history.get(pid, [])
        alerts = collected.alerts.get(pid, [])
        high_water = collected.high_water.get(pid)
        watermark = None if high_water is None else high_water - policy.config.lateness
        for start in range(0, max(1, len(ids)), _CHUNK):
            chunk = set(ids[start : start + _CHUNK])
            states = [(replay.states[cid], None) for cid in sorted(chunk)]
            await store.write_batch(
                BatchWrite(
                    pid,
                    PartitionMeta(high_water, watermark, None),
                    states,
                    due={cid: next_due_at(replay.states[cid], policy) for cid in chunk},
                    history=[h for h in history if h.customer_id in chunk],
                    alerts=[a for a in alerts if a.customer_id in chunk],
                    segments=segments,
                )
            )
    checkpoints = replay.checkpoints()
    for epoch in sorted(checkpoints):
        await store.save_checkpoint(epoch, checkpoints[epoch].to_bytes())
    return Loaded(counts, len(replay.states), fired, len(checkpoints))


def _stored(alert: AlertRecord) -> StoredAlert:
    return StoredAlert(alert.customer_id, alert.alert_id, alert.event_ts, alert_to_json(alert))
