"""
The core over a stream of records in arrival order: what the streaming workers do, in one
process, with the same functions. Used by `churnwatch replay`, the backtest and the demo.
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from churnwatch.core.alerts import AlertRecord
from churnwatch.core.engine import (
    ModelView,
    Policy,
    StepResult,
    check_time,
    next_due_at,
    process_event,
    sweep_one,
)
from churnwatch.core.errors import BadEventError, ReasonCode
from churnwatch.core.events import Event, parse_event
from churnwatch.core.labels import Example
from churnwatch.core.learning import Curriculum, scoring_epoch
from churnwatch.core.model import ProgressiveValidation, Scorer, blend
from churnwatch.core.partitioning import partition_of
from churnwatch.core.rules import prior_points
from churnwatch.core.state import CustomerState

_CHECKPOINTS_KEPT = 8


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that was not applied, with its original bytes and why."""

    position: int
    """0-based index of the record in the input."""
    reason: ReasonCode
    message: str
    raw: bytes


@dataclass(slots=True)
class Counts:
    """`consumed == processed + duplicates + dead_lettered` holds after every record."""

    consumed: int = 0
    processed: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    alerts: int = 0
    examples: int = 0

    def balanced(self) -> bool:
        return self.consumed == self.processed + self.duplicates + self.dead_lettered


@dataclass(slots=True)
class Quality:
    """Progressive validation (predict before learn) of the model, the prior and the blend."""

    model: ProgressiveValidation = field(default_factory=lambda: ProgressiveValidation(10**9))
    prior: ProgressiveValidation = field(default_factory=lambda: ProgressiveValidation(10**9))
    blended: ProgressiveValidation = field(default_factory=lambda: ProgressiveValidation(10**9))


class _Partition:
    __slots__ = ("due", "high_water", "queue")

    def __init__(self) -> None:
        self.high_water: datetime | None = None
        self.due: list[tuple[datetime, str]] = []
        self.queue: deque[tuple[int, bytes, Event]] = deque()


class Replay:
    """
    Feed records one by one; customers' states, alerts, examples and counts come out.

    Records are kept per partition in their order, one watermark per partition, as the
    streaming workers keep them. The model learns epoch by epoch in the order of
    `core.learning.Curriculum` (predict before learn, for the quality figures), and an event
    is scored with the checkpoint of the previous epoch, exactly as the streaming scorers use
    the learner's checkpoints. A partition whose next event needs a checkpoint that is not
    final yet (another partition lags by more than an epoch) waits, as a scorer waits for the
    learner; so the result is the same whatever the interleaving of partitions.
    """

    def __init__(
        self,
        policy: Policy,
        *,
        partitions: int = 1,
        scorer: Scorer | None = None,
        learn: bool = True,
        on_alert: Callable[[AlertRecord], None] | None = None,
        on_dead_letter: Callable[[DeadLetter], None] | None = None,
        on_step: Callable[[StepResult], None] | None = None,
    ) -> None:
        self.policy = policy
        self.partitions = max(1, partitions)
        self.learner = scorer if scorer is not None else Scorer(policy.config.model)
        self.learn = learn
        self.states: dict[str, CustomerState] = {}
        self._due: dict[str, datetime | None] = {}
        self.counts = Counts()
        self.quality = Quality()
        self._parts = [_Partition() for _ in range(self.partitions)]
        self.curriculum = Curriculum(policy.config.model_epoch, self.partitions)
        self._initial = self.learner.copy()
        self._checkpoints: dict[int, Scorer] = {}
        self._on_alert = on_alert
        self._on_dead_letter = on_dead_letter
        self._on_step = on_step

    # -- models per epoch -------------------------------------------------------------
    def model_for(self, at: datetime) -> ModelView:
        """The checkpoint to score at `at`: the previous epoch's, or the newest before it."""
        wanted = scoring_epoch(at, self.policy.config.model_epoch)
        usable = [k for k in self._checkpoints if k <= wanted]
        return self._checkpoints[max(usable)] if usable else self._initial

    def _close_epochs(self, partition: int, watermark: datetime) -> None:
        for epoch, examples in self.curriculum.advance(partition, watermark):
            for example in examples:
                self._learn(example)
            self._checkpoints[epoch] = self.learner.copy()
            for old in sorted(self._checkpoints)[:-_CHECKPOINTS_KEPT]:
                del self._checkpoints[old]

    def _ready(self, part: _Partition, event: Event) -> bool:
        closed = self.curriculum.closed_through()
        if closed is None:
            return False
        at = event.ts if part.high_water is None else max(event.ts, part.high_water)
        return scoring_epoch(at, self.policy.config.model_epoch) <= closed

    # -- records ----------------------------------------------------------------------
    def _dead(self, position: int, error: BadEventError, raw: bytes) -> None:
        self.counts.dead_lettered += 1
        self.counts.by_reason[error.reason] += 1
        if self._on_dead_letter is not None:
            self._on_dead_letter(DeadLetter(position, error.reason, error.message, raw))

    def feed(self, raw: bytes) -> None:
        """Take one record (bytes as on the wire, without the line's newline)."""
        cfg = self.policy.config
        position = self.counts.consumed
        self.counts.consumed += 1
        try:
            event = parse_event(raw, max_bytes=cfg.max_event_bytes)
        except BadEventError as error:
            self._dead(position, error, raw)
            return
        pid = partition_of(event.customer_id, self.partitions)
        part = self._parts[pid]
        if part.high_water is None and not part.queue:
            # Nothing this partition will produce can be resolved before its first event
            # (less the lateness): a bound the learning order may rely on.
            self._close_epochs(pid, event.ts - cfg.lateness)
        part.queue.append((position, raw, event))
        self._pump()

    def _pump(self) -> None:
        progress = True
        while progress:
            progress = False
            for pid, part in enumerate(self._parts):
                while part.queue and self._ready(part, part.queue[0][2]):
                    self._process(pid, part, *part.queue.popleft())
                    progress = True

    def _process(self, pid: int, part: _Partition, position: int, raw: bytes, event: Event) -> None:
        cfg = self.policy.config
        problem = check_time(event.ts, part.high_water, cfg)
        if problem is not None:
            self._dead(position, problem, raw)
            return
        if part.high_water is None or event.ts > part.high_water:
            part.high_water = event.ts
        watermark = part.high_water - cfg.lateness
        step = process_event(
            self.states.get(event.customer_id),
            event,
            watermark=watermark,
            model_for=self.model_for,
            policy=self.policy,
        )
        if step.outcome == "duplicate":
            self.counts.duplicates += 1
            return
        self.counts.processed += 1
        self._apply(step, part)
        self._sweep(part, watermark)
        self._close_epochs(pid, watermark)

    def _apply(self, step: StepResult, part: _Partition) -> None:
        state = step.state
        self.states[state.customer_id] = state
        due = next_due_at(state, self.policy)
        self._due[state.customer_id] = due
        if due is not None:
            heapq.heappush(part.due, (due, state.customer_id))
        for alert in step.alerts:
            self.counts.alerts += 1
            if self._on_alert is not None:
                self._on_alert(alert)
        for example in step.examples:
            self.counts.examples += 1
            self.curriculum.add(example)
        if self._on_step is not None:
            self._on_step(step)

    def _sweep(self, part: _Partition, until: datetime) -> None:
        while part.due and part.due[0][0] <= until:
            due, customer_id = heapq.heappop(part.due)
            if self._due.get(customer_id) != due:
                continue  # stale entry: the customer moved on since it was scheduled
            state = self.states[customer_id]
            step = sweep_one(state, until=until, model_for=self.model_for, policy=self.policy)
            self._apply(step, part)

    def _learn(self, example: Example) -> None:
        if not self.learn:
            return
        x = example.x
        p_model = self.learner.predict_one(x)
        p_prior = prior_points(self.policy.rules, x, texts=False).churn_probability
        p_blend = blend(
            p_prior, p_model, n_labels=self.learner.n_labels, config=self.policy.config.model
        )
        self.quality.model.update(example.churned, p_model)
        self.quality.prior.update(example.churned, p_prior)
        self.quality.blended.update(example.churned, p_blend)
        self.learner.learn_one(x, example.churned)

    def run(self, records: Iterable[bytes]) -> Counts:
        """Feed every record, then `finish`."""
        for raw in records:
            self.feed(raw)
        self.finish()
        return self.counts

    def finish(self, until: datetime | None = None) -> None:
        """
        The end of the input: process what still waits, then run the sweep of every
        partition up to `until` (default: the partition's watermark).

        Partitions still waiting for a checkpoint (others have no more events to move the
        learner on) are processed in a fixed order: the earliest head first.
        """
        self._pump()
        while any(part.queue for part in self._parts):
            pid, part = min(
                ((pid, part) for pid, part in enumerate(self._parts) if part.queue),
                key=lambda item: (item[1].queue[0][2].ts, item[0]),
            )
            self._process(pid, part, *part.queue.popleft())
            self._pump()
        for pid, part in enumerate(self._parts):
            if part.high_water is None:
                continue
            bound = until or part.high_water - self.policy.config.lateness
            self._sweep(part, bound)
            self._close_epochs(pid, bound)
        # What is still buffered is learned too, for the quality figures; nothing scores after.
        for example in self.curriculum.drain():
            self._learn(example)


def read_records(path: str) -> Iterable[bytes]:
    """The records of a JSONL file as bytes, one per line, empty lines skipped."""
    with open(path, "rb") as handle:
        for line in handle:
            record = line.rstrip(b"\r\n")
            if record:
                yield record
