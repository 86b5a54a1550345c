"""
The core over a stream of records in arrival order: what the streaming workers do, in one
process, with the same functions. Used by `churnwatch replay`, the backtest and the demo.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import itertools
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from churnwatch.core.alerts import AlertRecord
from churnwatch.core.engine import (
    ModelView,
    Policy,
    StepResult,
    check_reuse,
    check_time,
    process_event,
    sweep_one,
)
from churnwatch.core.errors import BadEventError, ReasonCode
from churnwatch.core.events import EPOCH, Event, parse_event
from churnwatch.core.labels import Example
from churnwatch.core.learning import Curriculum, boundary, scoring_epoch
from churnwatch.core.model import ProgressiveValidation, Scorer, blend
from churnwatch.core.partitioning import DEFAULT_PARTITIONS, partition_of
from churnwatch.core.state import CustomerState

_CHECKPOINTS_KEPT = 8
_BATCH = 1000


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
        self.due: list[tuple[int, str]] = []
        """The sweep's schedule: (due time in microseconds since the epoch, customer id)."""
        self.queue: deque[tuple[int, bytes, Event]] = deque()


_MICROSECOND: Final = timedelta(microseconds=1)


def _micros(at: datetime) -> int:
    """`at` as whole microseconds since the epoch: exact, ordered as the datetimes are, and
    compared much faster in the schedule's heap."""
    return (at - EPOCH) // _MICROSECOND


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
        partitions: int = DEFAULT_PARTITIONS,
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
        self._latest: datetime | None = None
        self._due: dict[str, int] = {}
        self._due_at: dict[str, tuple[CustomerState, datetime | None]] = {}
        """The due time of the state each customer's last step made (its `StepResult.due_at`),
        so the next step need not compute it again."""
        """Every scheduled customer's next due time (microseconds), as next_due_at gives it."""
        self._queued: dict[str, int] = {}
        """The time of each customer's entry in its partition's schedule (at most one is live:
        an entry earlier than the customer's due time is moved on when it comes up)."""
        self.counts = Counts()
        self.quality = Quality()
        self._parts = [_Partition() for _ in range(self.partitions)]
        self.curriculum = Curriculum(policy.config.model_epoch, self.partitions)
        self._initial = self.learner.copy()
        self._checkpoints: dict[int, Scorer] = {}
        self._models: dict[int, ModelView] = {}
        """model_for's answers by scoring epoch, until the checkpoints change."""
        self._ready_for: int | None = None
        self._ready_before = EPOCH
        self._on_alert = on_alert
        self._on_dead_letter = on_dead_letter
        self._on_step = on_step

    # -- models per epoch -------------------------------------------------------------
    def checkpoints(self) -> dict[int, Scorer]:
        """The newest checkpoints by epoch (as the learner would have stored them)."""
        return dict(self._checkpoints)

    def model_for(self, at: datetime) -> ModelView:
        """The checkpoint to score at `at`: the previous epoch's, or the newest before it."""
        wanted = scoring_epoch(at, self.policy.config.model_epoch)
        model = self._models.get(wanted)
        if model is None:
            usable = [k for k in self._checkpoints if k <= wanted]
            model = self._checkpoints[max(usable)] if usable else self._initial
            self._models[wanted] = model
        return model

    def _close_epochs(self, partition: int, watermark: datetime) -> None:
        for epoch, examples in self.curriculum.advance(partition, watermark):
            for example in examples:
                self._learn(example)
            self._checkpoints[epoch] = self.learner.copy()
            for old in sorted(self._checkpoints)[:-_CHECKPOINTS_KEPT]:
                del self._checkpoints[old]
            self._models.clear()

    def _ready(self, part: _Partition, event: Event) -> bool:
        closed = self.curriculum.closed_through()
        if closed is None:
            return False
        if closed != self._ready_for:
            # scoring_epoch(at) <= closed exactly when `at` is before the start of epoch
            # closed + 2 (the floor division of timedeltas is exact).
            self._ready_for = closed
            self._ready_before = boundary(closed + 2, self.policy.config.model_epoch)
        at = event.ts if part.high_water is None else max(event.ts, part.high_water)
        return at < self._ready_before

    # -- records ----------------------------------------------------------------------
    def _dead(self, position: int, error: BadEventError, raw: bytes) -> None:
        self.counts.dead_lettered += 1
        self.counts.by_reason[error.reason] += 1
        if self._on_dead_letter is not None:
            self._on_dead_letter(DeadLetter(position, error.reason, error.message, raw))

    def feed(self, raw: bytes) -> None:
        """Take one record (bytes as on the wire, without the line's newline)."""
        self._take(raw, self._parse(raw))

    def feed_many(self, raws: Sequence[bytes]) -> None:
        """
        `feed` every record of `raws`, in order, with the same results: parsing is pure, so
        the records are parsed first, together (the validator's code stays warm in the CPU's
        caches), then applied one by one.
        """
        parse = self._parse
        for raw, parsed in zip(raws, [parse(raw) for raw in raws], strict=True):
            self._take(raw, parsed)

    def _parse(self, raw: bytes) -> Event | BadEventError:
        try:
            return parse_event(raw, max_bytes=self.policy.config.max_event_bytes)
        except BadEventError as error:
            return error

    def _take(self, raw: bytes, parsed: Event | BadEventError) -> None:
        position = self.counts.consumed
        self.counts.consumed += 1
        if isinstance(parsed, BadEventError):
            self._dead(position, parsed, raw)
            return
        event = parsed
        cfg = self.policy.config
        # Far in the future: judged against the latest event time of the input so far, as
        # the ingest judges it against the latest it forwarded (a quiet partition must not
        # reject what comes after its silence).
        future = check_time(event.ts, None, cfg, latest=self._latest)
        if future is not None:
            self._dead(position, future, raw)
            return
        if self._latest is None or event.ts > self._latest:
            self._latest = event.ts
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
        customer_id = event.customer_id
        state = self.states.get(customer_id)
        reused = check_reuse(state, event)
        if reused is not None:
            self._dead(position, reused, raw)
            return
        if part.high_water is None or event.ts > part.high_water:
            part.high_water = event.ts
        watermark = part.high_water - cfg.lateness
        known = self._due_at.get(customer_id)
        if state is not None and known is not None and known[0] is state:
            step = process_event(
                state,
                event,
                watermark=watermark,
                model_for=self.model_for,
                policy=self.policy,
                due_at=known[1],
            )
        else:  # a new customer, or a state set from outside
            step = process_event(
                state, event, watermark=watermark, model_for=self.model_for, policy=self.policy
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
        customer_id = state.customer_id
        self.states[customer_id] = state
        due_at = step.due_at
        self._due_at[customer_id] = (state, due_at)
        if due_at is None:
            self._due.pop(customer_id, None)
        else:
            due = _micros(due_at)
            self._due[customer_id] = due
            queued = self._queued.get(customer_id)
            if queued is None or due < queued:
                self._queued[customer_id] = due
                heapq.heappush(part.due, (due, customer_id))
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
        # Customers are swept in (due time, customer id) order, each when its due time comes:
        # an entry that comes up before its customer's due time (the customer moved on since)
        # is put back at that time, so it still comes up in order.
        schedule = part.due
        bound = _micros(until)
        queued = self._queued
        while schedule and schedule[0][0] <= bound:
            at, customer_id = heapq.heappop(schedule)
            if queued.get(customer_id) != at:
                continue  # superseded by an earlier entry, already handled
            due = self._due.get(customer_id)
            if due is None:
                del queued[customer_id]
                continue  # nothing left to do for this customer
            if due != at:
                queued[customer_id] = due
                heapq.heappush(schedule, (due, customer_id))
                continue
            del queued[customer_id]
            state = self.states[customer_id]
            known = self._due_at.get(customer_id)
            if known is not None and known[0] is state:
                step = sweep_one(
                    state,
                    until=until,
                    model_for=self.model_for,
                    policy=self.policy,
                    due_at=known[1],
                )
            else:  # a state set from outside
                step = sweep_one(state, until=until, model_for=self.model_for, policy=self.policy)
            self._apply(step, part)

    def _learn(self, example: Example) -> None:
        if not self.learn:
            return
        x = example.x
        learner = self.learner
        n_labels = learner.n_labels
        # predict_one, then learn_one: progressive validation.
        p_model = learner.predict_learn_one(x, example.churned)
        # The plan's prior is prior_points(rules, x).churn_probability.
        p_prior = self.policy.plan.prior.churn_probability(x)
        p_blend = blend(p_prior, p_model, n_labels=n_labels, config=self.policy.config.model)
        self.quality.model.update(example.churned, p_model)
        self.quality.prior.update(example.churned, p_prior)
        self.quality.blended.update(example.churned, p_blend)

    def run(self, records: Iterable[bytes]) -> Counts:
        """Feed every record, then `finish`."""
        with fewer_collections():
            for batch in batches(records):
                self.feed_many(batch)
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


def batches(records: Iterable[bytes], size: int = _BATCH) -> Iterator[list[bytes]]:
    """The records in lists of `size` (the last may be shorter), for `Replay.feed_many`."""
    iterator = iter(records)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """
    Pause the cyclic garbage collector while a whole replay runs (a whole-run setting, for
    `Replay.run` and the demo; `feed` alone leaves it be).

    A replay makes no reference cycles (its states are trees of frozen values, replaced at
    every step: a replay of 1,000 customers leaves 14 unreachable objects behind), so the
    collector finds nothing; but the short-lived objects it allocates trigger a collection
    every 700 of them, and the customers' states make every collection longer: about 30 us
    a record (a fifth of the replay's CPU) at 20,000 customers. Reference counting frees
    everything as before; what callbacks leave in cycles is collected after the run.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def read_records(path: str) -> Iterable[bytes]:
    """The records of a JSONL file as bytes, one per line, empty lines skipped."""
    with open(path, "rb") as handle:
        for line in handle:
            record = line.rstrip(b"\r\n")
            if record:
                yield record
