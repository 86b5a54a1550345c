"""
The backtest: a history replayed through the core, and what churnwatch would have done with it.

One `Replay` (the code the workers run) goes over the whole history, in file order; it gives
the alerts (precision, recall, lead time, volume), the model's progressive quality, the
training examples of the batch baseline and every customer's score trajectory (for the
threshold sweep). The ranking is measured at a cut-off T on a second replay that holds
exactly what was known at T: the records with `ts <= T`, in file order, then the sweep up to
T (`replay_as_of`, which `churnwatch score --as-of` runs too). Rather than replay those
records twice, the backtest forks the running replay just before the first record later than
T and feeds the fork the records with `ts <= T` that still come (a deep copy; when the replay
cannot be copied it replays them instead, with the same result).

Ranking at T (every figure says so):

- Every customer seen by T is scored at T from what was known at T: features decayed to T,
  the model checkpoint the scorers would use at T (`Replay.model_for`), no peeking.
- A customer is *lost* when it cancels, or H (the label horizon) after its last activity when
  it goes silent for good (`replay.evaluation`). The population at T is every customer seen by
  T who is not lost by T (nor cancelled by T); the label is *lost within (T, T + H]*. With the
  history's own labels that is: no activity in (T, T + H], or a cancel in it.
- Labels come from a file (`customer_id,churned[,churn_at]`; churn_at is the last activity of
  a churner), or the simulator's ground truth, or the history itself (a customer silent for H
  at the end of the history, or cancelled, churned at its last activity). Without churn_at the
  label is *churned at any time* and lead times are unknown.
"""

from __future__ import annotations

import copy
import csv
import math
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Final

import numpy as np

from churnwatch.core import explain
from churnwatch.core.alerts import AlertRecord, alert_to_json
from churnwatch.core.engine import Policy, Scoring, StepResult, check_time, factors_of, score_at
from churnwatch.core.errors import BadEventError, ChurnwatchError
from churnwatch.core.events import format_ts, parse_event
from churnwatch.core.features import FEATURE_NAMES
from churnwatch.core.feedback import FeedbackTally, RuleFeedback, VerdictRecord
from churnwatch.core.model import Scorer, model_weight
from churnwatch.core.partitioning import DEFAULT_PARTITIONS, partition_of
from churnwatch.core.state import CustomerState
from churnwatch.replay.baselines import BatchOutcome, RankingMeasures, fit_batch, measure, prepare
from churnwatch.replay.engine import Counts, Replay, read_records
from churnwatch.replay.evaluation import AlertLog, ChurnTruth, Evaluation, evaluate
from churnwatch.replay.sweep import Budget, SweepResult, Trajectories, lead_days, sweep_rules
from churnwatch.sim.simulator import Truth

RecordSource = Callable[[], Iterable[bytes]]
"""Gives the records from the start each time it is called (a history is read more than once)."""

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO: Final = timedelta(microseconds=1)
_NO_TIME: Final = -(2**63)
_WEEK: Final = timedelta(days=7)
AUC_SLACK: Final = 0.01
"""The online model may trail the batch model's ROC AUC by at most this much."""
SCORE_BINS: Final = 20
"""Bins of the engagement score (0..100) in the score-distribution plot."""


def file_source(path: Path) -> RecordSource:
    """The records of a JSONL file, read afresh at each call."""
    return lambda: read_records(str(path))


def event_time(raw: bytes, policy: Policy) -> datetime | None:
    """The `ts` of a record, or None when the record is not a valid event."""
    try:
        return parse_event(raw, max_bytes=policy.config.max_event_bytes).ts
    except BadEventError:
        return None


def parse_as_of(text: str) -> datetime:
    """
    A cut-off time from the command line: ISO 8601 with a time zone, or a date (midnight UTC).

    Raises:
        ChurnwatchError: naming what was expected and what arrived.
    """
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        msg = f"--as-of: expected an ISO 8601 time such as 2026-05-31T00:00:00Z, got {text!r}"
        raise ChurnwatchError(msg) from None
    if at.tzinfo is None:
        if len(text) == 10:  # a date alone: midnight UTC
            return at.replace(tzinfo=UTC)
        msg = f"--as-of: expected a time zone (such as Z or +02:00), got {text!r}"
        raise ChurnwatchError(msg)
    return at.astimezone(UTC)


# -- the history ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HistoryScan:
    """One pass over the records before the replay: their event times and the span."""

    records: int
    first_at: datetime
    last_at: datetime
    """The latest event time the replay accepts (records it would reject do not count)."""
    times: array[int]
    """Per record, its event time in microseconds since the epoch (`_NO_TIME` if invalid)."""
    logins: int = 0
    """Valid login events."""


def scan_history(source: RecordSource, policy: Policy, *, partitions: int) -> HistoryScan:
    """
    Read every record's event time and the span of the history, with the replay's own time
    checks (`core.engine.check_time` per partition), so that a record the replay would
    dead-letter (far in the future, say) does not move the end of the history.

    Raises:
        ChurnwatchError: no valid event in the records.
    """
    times: array[int] = array("q")
    high: dict[int, datetime] = {}
    first: datetime | None = None
    last: datetime | None = None
    logins = 0
    cfg = policy.config
    for raw in source():
        try:
            event = parse_event(raw, max_bytes=cfg.max_event_bytes)
        except BadEventError:
            times.append(_NO_TIME)
            continue
        logins += event.type == "login"
        ts = event.ts
        times.append((ts - _EPOCH) // _MICRO)
        if check_time(ts, None, cfg, latest=last) is not None:
            continue
        pid = partition_of(event.customer_id, partitions)
        if check_time(ts, high.get(pid), cfg) is not None:
            continue
        if pid not in high or ts > high[pid]:
            high[pid] = ts
        first = ts if first is None or ts < first else first
        last = ts if last is None or ts > last else last
    if first is None or last is None:
        msg = f"expected at least one valid event in the history, got none in {len(times)} records"
        raise ChurnwatchError(msg)
    return HistoryScan(len(times), first, last, times, logins)


# -- labels ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Labels:
    """What happened to each customer, and where that knowledge comes from."""

    source: str
    churned: Mapping[str, bool]
    churn_at: Mapping[str, datetime | None]
    """A churner's last activity (its cancellation, if it cancelled); None if unknown."""
    timed: bool
    """Whether churn times are known (they place a churn in time: lead, ranking window)."""
    from_history: bool = False
    """Read from the history itself: a customer silent for H at T counts as lost by T."""


_TRUE: Final = frozenset({"1", "true", "yes", "y", "t"})
_FALSE: Final = frozenset({"0", "false", "no", "n", "f"})


def read_labels(path: Path) -> Labels:
    """
    Read a labels CSV: a header with `customer_id` and `churned` (0/1 or true/false), and
    optionally `churn_at` (ISO 8601 with a time zone, empty for a stayer). Other columns are
    ignored, so the simulator's labels.csv is read as it is.

    Raises:
        ChurnwatchError: naming the file, the line and the field.
    """
    churned: dict[str, bool] = {}
    churn_at: dict[str, datetime | None] = {}
    try:
        handle = path.open(encoding="utf-8", newline="")
    except OSError as exc:
        msg = f"{path}: cannot read the labels: {exc}"
        raise ChurnwatchError(msg) from exc
    with handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [name for name in ("customer_id", "churned") if name not in header]
        if missing:
            msg = (
                f"{path}:1: expected a header with customer_id and churned "
                f"(and optionally churn_at), got {','.join(header) or 'nothing'}"
            )
            raise ChurnwatchError(msg)
        timed = "churn_at" in header
        for line, row in enumerate(reader, start=2):
            customer_id = (row.get("customer_id") or "").strip()
            if not customer_id:
                raise ChurnwatchError(f"{path}:{line}: customer_id: expected an id, got nothing")
            flag = (row.get("churned") or "").strip().lower()
            if flag not in _TRUE | _FALSE:
                msg = f"{path}:{line}: churned: expected 0 or 1 (or true/false), got {flag!r}"
                raise ChurnwatchError(msg)
            churned[customer_id] = flag in _TRUE
            text = (row.get("churn_at") or "").strip() if timed else ""
            at: datetime | None = None
            if text:
                try:
                    at = datetime.fromisoformat(text.replace("Z", "+00:00"))
                except ValueError:
                    msg = f"{path}:{line}: churn_at: expected ISO 8601 or empty, got {text!r}"
                    raise ChurnwatchError(msg) from None
                if at.tzinfo is None:
                    msg = f"{path}:{line}: churn_at: expected a time zone, got {text!r}"
                    raise ChurnwatchError(msg)
                at = at.astimezone(UTC)
            churn_at[customer_id] = at if churned[customer_id] else None
    return Labels(f"labels file {path}", churned, churn_at, timed)


def labels_from_truths(truths: Iterable[Truth], source: str = "simulator ground truth") -> Labels:
    """Labels from the simulator's truth (what labels.csv holds)."""
    churned: dict[str, bool] = {}
    churn_at: dict[str, datetime | None] = {}
    for truth in truths:
        churned[truth.customer_id] = truth.churned
        churn_at[truth.customer_id] = truth.churn_at
    return Labels(source, churned, churn_at, True)


def history_labels(
    states: Mapping[str, CustomerState], *, end_at: datetime, horizon: timedelta
) -> Labels:
    """
    Labels from the history itself (the inactivity definition): a customer who cancelled, or
    whose last activity is H or more before the end of the history, churned at that moment;
    a customer active within the last H counts as staying (its outcome is not known yet).
    """
    churned: dict[str, bool] = {}
    churn_at: dict[str, datetime | None] = {}
    for customer_id, state in states.items():
        at: datetime | None = None
        if state.cancelled_at is not None:
            at = state.cancelled_at
        elif state.last_activity_at is not None and state.last_activity_at <= end_at - horizon:
            at = state.last_activity_at
        churned[customer_id] = at is not None
        churn_at[customer_id] = at
    source = (
        f"the history itself: silent for {horizon / timedelta(days=1):g} days before its end "
        "(or cancelled)"
    )
    return Labels(source, churned, churn_at, True, from_history=True)


def truths_for(labels: Labels, states: Mapping[str, CustomerState]) -> dict[str, ChurnTruth]:
    """The truth per labelled customer, as the demo builds it (cancellations from the replay)."""
    return {
        customer_id: ChurnTruth(
            churned=churned,
            churn_at=labels.churn_at.get(customer_id),
            cancelled=(state := states.get(customer_id)) is not None
            and state.cancelled_at is not None,
        )
        for customer_id, churned in labels.churned.items()
    }


def lost_at(truth: ChurnTruth, horizon: timedelta) -> datetime | None:
    """When a churner is lost (`replay.evaluation`): when it cancelled, or H after it went
    silent; None for a stayer or an unknown time."""
    if not truth.churned or truth.churn_at is None:
        return None
    return truth.churn_at if truth.cancelled else truth.churn_at + horizon


# -- scoring as of a time -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CustomerScore:
    """One customer scored at one time, from what was known then."""

    customer_id: str
    x: Mapping[str, float]
    scoring: Scoring
    model_probability: float
    """The learned model alone (0.5 before it has learned anything)."""
    top_reason: str
    cancelled: bool
    last_activity_at: datetime | None


def replay_as_of(
    source: RecordSource,
    policy: Policy,
    as_of: datetime,
    *,
    partitions: int = DEFAULT_PARTITIONS,
    progress: Callable[[int], None] | None = None,
) -> Replay:
    """
    The replay of what was known at `as_of`: the records with `ts <= as_of`, in their order
    (records that are not valid events are left out: they change no state), then every
    partition's sweep up to `as_of`.
    """
    replay = Replay(policy, partitions=partitions)
    for i, raw in enumerate(source(), 1):
        ts = event_time(raw, policy)
        if ts is not None and ts <= as_of:
            replay.feed(raw)
        if progress is not None and i % 20_000 == 0:
            progress(i)
    replay.finish(until=as_of)
    return replay


def regime_note(replay: Replay, at: datetime) -> str:
    """
    One sentence: what kind of history the replay saw (logins or purchases alone) and the label
    horizon the model used at `at` (fixed, or learned from the gaps between activities).
    """
    states = replay.states.values()
    customers = len(replay.states)
    logins = sum(1 for s in states if s.features.last_login_day is not None)
    buyers = sum(1 for s in states if s.features.last_purchase_day is not None)
    if customers == 0:
        kind = "no customers"
    elif logins == 0 and buyers:
        kind = f"purchases without logins (a shop): {buyers:,} of {customers:,} customers bought"
    elif 2 * logins >= customers:
        kind = f"logins (an app or a subscription): {logins:,} of {customers:,} customers log in"
    else:
        kind = f"mostly purchases: {logins:,} of {customers:,} customers log in"
    plan = replay.policy.plan
    model = replay.model_for(at)
    if plan.fixed_horizon is not None:
        days = plan.fixed_horizon / timedelta(days=1)
        horizon = f"label horizon {days:g} days, fixed by the settings or the rules file"
    else:
        days = model.horizon_days(plan.horizon_floor_days)
        population = model.population if isinstance(model, Scorer) else None
        median = None if population is None else population.gap_quantile(0.5)
        if population is None or median is None:
            horizon = (
                f"label horizon {days:g} days (too few gaps between activities yet to learn "
                "it from)"
            )
        else:
            horizon = (
                f"label horizon {days:g} days, learned from {population.gaps:,} gaps between "
                f"activities (median {median:.1f} days; the horizon is their 90th percentile, "
                f"at least {plan.horizon_floor_days:g} days)"
            )
    return f"History: {kind}; {horizon}."


def score_all(replay: Replay, at: datetime) -> list[CustomerScore]:
    """
    Every customer of a replay scored at `at` (features decayed to it) with the model the
    scorers would use at `at`; ordered by customer id.
    """
    policy = replay.policy
    model = replay.model_for(at)
    out: list[CustomerScore] = []
    for customer_id in sorted(replay.states):
        state = replay.states[customer_id]
        x, scoring = score_at(state.features, at=at, model=model, policy=policy)
        factors = factors_of(scoring, x, model)
        items = explain.reasons(factors, None, change=0.0, x=x, top=1)
        out.append(
            CustomerScore(
                customer_id=customer_id,
                x=x,
                scoring=scoring,
                model_probability=model.score_one(x),
                top_reason=items[0].text if items else "",
                cancelled=state.cancelled_at is not None and state.cancelled_at <= at,
                last_activity_at=state.last_activity_at,
            )
        )
    return out


SCORES_HEADER: Final = (
    "customer_id",
    "churn_probability",
    "engagement_score",
    "segment",
    "top_reason",
)


def write_scores(handle: IO[str], scores: Iterable[CustomerScore]) -> None:
    """The scores as CSV: `customer_id,churn_probability,engagement_score,segment,top_reason`."""
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(SCORES_HEADER)
    for item in scores:
        s = item.scoring
        writer.writerow(
            (
                item.customer_id,
                f"{s.churn_probability:.6f}",
                f"{s.score:.2f}",
                s.segment,
                item.top_reason,
            )
        )


# -- what the replay records ----------------------------------------------------------------


class _Recorder:
    """Collects, from the main replay's callbacks, what the measures need."""

    def __init__(
        self,
        *,
        cutoff_at: datetime | None,
        alerts_out: IO[bytes] | None,
        trajectories: Trajectories | None,
        inputs: tuple[str, ...] = FEATURE_NAMES,
    ) -> None:
        self.cutoff_at = cutoff_at
        self.inputs = inputs
        """The model's inputs, the columns of `rows` (`RulesFile.model_inputs`)."""
        self.alerts_out = alerts_out
        self.trajectories = trajectories
        self.log = AlertLog()
        self.by_rule_action: Counter[tuple[str, str]] = Counter()
        self.examples: dict[str, list[AlertRecord]] = {}
        self.rows: array[float] = array("d")
        self.labels: array[int] = array("b")
        self.muted = False
        self.feedback: FeedbackTally | None = None

    def muted_twin(self) -> _Recorder:
        """A recorder that records nothing: the fork's callbacks (bound to it) do nothing."""
        twin = _Recorder(cutoff_at=None, alerts_out=None, trajectories=None)
        twin.muted = True
        return twin

    def on_alert(self, alert: AlertRecord) -> None:
        if self.muted:
            return
        self.log.add(alert.customer_id, alert.rule, alert.action, alert.event_ts)
        self.by_rule_action[alert.rule, alert.action] += 1
        if self.feedback is not None:
            self.feedback.add(alert)
        kept = self.examples.setdefault(alert.rule, [])
        if len(kept) < 3 and alert.reasons:
            kept.append(alert)
        if self.alerts_out is not None:
            self.alerts_out.write(alert_to_json(alert) + b"\n")

    def on_step(self, step: StepResult) -> None:
        if self.muted:
            return
        scoring = step.scoring
        if scoring is not None and self.trajectories is not None:
            customer_id = step.state.customer_id
            for earlier in step.caught_up:
                self.trajectories.add(customer_id, earlier.at, earlier.score, earlier.segment)
            self.trajectories.add(customer_id, scoring.at, scoring.score, scoring.segment)
        if self.cutoff_at is not None:
            for example in step.examples:
                if example.resolved_at <= self.cutoff_at:
                    self.rows.extend(prepare(example.x, self.inputs))
                    self.labels.append(1 if example.churned else 0)


def _fork(replay: Replay, recorder: _Recorder) -> Replay | None:
    """
    A copy of the replay that goes on independently, or None when it cannot be copied.

    States are immutable and shared; so is the policy; the callbacks are the recorder's methods,
    and the copy's are bound to a muted twin of it.
    """
    memo: dict[int, Any] = {id(replay.policy): replay.policy, id(recorder): recorder.muted_twin()}
    for state in replay.states.values():
        memo[id(state)] = state
    try:
        return copy.deepcopy(replay, memo)
    except (TypeError, copy.Error, AttributeError, RecursionError):
        return None


# -- the result -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bar:
    """One quality bar of the model: whether it holds, with the figures."""

    name: str
    passed: bool | None
    """None when it cannot be measured (say, no batch model)."""
    detail: str


@dataclass(frozen=True, slots=True)
class Ranking:
    """The customer-level ranking at the cut-off."""

    cutoff_at: datetime
    horizon: timedelta
    population: int
    positives: int
    excluded: dict[str, int]
    measures: tuple[RankingMeasures, ...]
    score_bins: dict[str, list[int]]
    """`churners` / `stayers` -> customers per engagement-score bin (0-5, 5-10, ... 95-100)."""
    onboarding: int
    """Customers in the population scored by the onboarding profile."""
    definition: str
    window_beyond_history_days: float
    """How far T + H lies past the end of the history (0 when the window is observed)."""

    def get(self, name: str) -> RankingMeasures | None:
        return next((m for m in self.measures if m.name == name), None)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    version: str
    labels: int
    weight: float
    """The model's weight in the blend (0 below `min_labels`: the prior alone)."""


@dataclass(frozen=True, slots=True)
class AlertSummary:
    log: AlertLog
    evaluation: Evaluation
    leads: list[float]
    per_1000_per_week: float
    by_rule_action: dict[tuple[str, str], int]
    weekly: dict[str, dict[int, int]]
    """Per rule, alerts per week number (week 0 starts at the first event)."""
    examples: dict[str, list[AlertRecord]]


@dataclass(frozen=True, slots=True)
class CompareExample:
    customer_id: str
    rule: str
    first_at: datetime
    churned: bool | None


@dataclass(frozen=True, slots=True)
class CompareRow:
    rule: str
    alerts_a: int
    alerts_b: int
    customers_a: int
    customers_b: int
    only_a: int
    only_b: int
    both: int


@dataclass(frozen=True, slots=True)
class CompareSide:
    source: str
    rules_version: str
    alerts: int
    customers_alerted: int
    evaluation: Evaluation


@dataclass(frozen=True, slots=True)
class CompareResult:
    """Two rule files on the same history: what each alerts on that the other does not."""

    a: CompareSide
    b: CompareSide
    rows: tuple[CompareRow, ...]
    only_a: tuple[CompareExample, ...]
    only_b: tuple[CompareExample, ...]


@dataclass(frozen=True, slots=True)
class BacktestResult:
    events: str
    rules_source: str
    rules_version: str
    partitions: int
    records: int
    counts: Counts
    customers: int
    first_at: datetime
    last_at: datetime
    weeks: float
    horizon: timedelta
    cutoff_at: datetime
    cutoff_method: str
    """`fork` (the running replay copied at T) or `replay` (the records up to T replayed)."""
    labels_source: str
    labels_timed: bool
    truths: dict[str, ChurnTruth]
    model_at_cutoff: ModelInfo
    model_at_end: ModelInfo
    progressive: dict[str, float | None]
    """The replay's progressive validation (predict before learn): model, prior, blended."""
    alerts: AlertSummary
    ranking: Ranking
    batch: BatchOutcome
    scores: list[CustomerScore]
    bars: tuple[Bar, ...]
    sweep: SweepResult | None = None
    compare: CompareResult | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    feedback: tuple[list[RuleFeedback], int] | None = None
    """The false-alarm rate per rule from CSMs' verdicts, and the verdicts that matched no
    alert of this backtest; None when no verdicts were given."""


# -- measures -------------------------------------------------------------------------------


def _alert_evaluation(
    log: AlertLog,
    truths: Mapping[str, ChurnTruth],
    *,
    timed: bool,
    horizon: timedelta,
    seen: Iterable[str],
) -> Evaluation:
    """`replay.evaluation.evaluate`, or without churn times: alerted churners, no lead time."""
    population = set(seen) & set(truths)
    if timed:
        return evaluate(log, truths, horizon=horizon, seen=population)
    churners = {c for c in population if truths[c].churned}
    alerted = {c for c in log.first_by_customer if c in population}
    hit = churners & alerted
    timely_by_rule: Counter[str] = Counter()
    for customer_id, rule, _ in log.alerts:
        if customer_id in churners:
            timely_by_rule[rule] += 1
    return Evaluation(
        customers=len(population),
        churners=len(churners),
        alerted=len(alerted),
        timely=len(hit),
        precision=len(hit) / len(alerted) if alerted else None,
        recall=len(hit) / len(churners) if churners else None,
        lead_days_p10=None,
        lead_days_p50=None,
        lead_days_p90=None,
        timely_by_rule=dict(timely_by_rule),
    )


NAMES: Final = {
    "online_model": "online model (River, learned as the workers learn; checkpoint at T)",
    "churnwatch_score": "churnwatch score (the blend of prior and model the alerts act on)",
    "prior": "prior only (the rules file's points, core.rules.prior_points)",
    "recency": "recency only (days since the last event)",
    "batch_model": "batch model (scikit-learn logistic regression fitted offline before T)",
}


def _ranking(
    scores: Sequence[CustomerScore],
    truths: Mapping[str, ChurnTruth],
    *,
    timed: bool,
    from_history: bool,
    cutoff_at: datetime,
    horizon: timedelta,
    last_at: datetime,
    batch: BatchOutcome,
    labels_source: str,
    inputs: tuple[str, ...] = FEATURE_NAMES,
) -> Ranking:
    excluded: Counter[str] = Counter()
    chosen: list[CustomerScore] = []
    positive: list[bool] = []
    for item in scores:
        truth = truths.get(item.customer_id)
        if truth is None:
            excluded["no label"] += 1
            continue
        if item.cancelled:
            excluded["cancelled by T"] += 1
            continue
        if timed:
            if truth.churned and truth.churn_at is None:
                excluded["churned, time unknown"] += 1
                continue
            lost = lost_at(truth, horizon)
            silent = item.last_activity_at is None or item.last_activity_at <= cutoff_at - horizon
            if (lost is not None and lost <= cutoff_at) or (from_history and silent):
                excluded["lost by T"] += 1
                continue
            positive.append(lost is not None and lost <= cutoff_at + horizon)
        else:
            positive.append(truth.churned)
        chosen.append(item)
    columns: dict[str, list[float]] = {
        "online_model": [c.model_probability for c in chosen],
        "churnwatch_score": [c.scoring.churn_probability for c in chosen],
        "prior": [c.scoring.prior_probability for c in chosen],
        "recency": [c.x["days_since_event"] for c in chosen],
    }
    if batch.model is not None:
        rows = np.array([prepare(c.x, inputs) for c in chosen], dtype=np.float64).reshape(
            len(chosen), len(inputs)
        )
        columns["batch_model"] = [float(p) for p in batch.model.predict(rows)]
    measures = tuple(
        measure(name, NAMES[name], positive, values, probability=name != "recency")
        for name, values in columns.items()
    )
    bins: dict[str, list[int]] = {"churners": [0] * SCORE_BINS, "stayers": [0] * SCORE_BINS}
    for item, y in zip(chosen, positive, strict=True):
        b = min(int(item.scoring.score // (100 / SCORE_BINS)), SCORE_BINS - 1)
        bins["churners" if y else "stayers"][b] += 1
    days = horizon / timedelta(days=1)
    if timed:
        definition = (
            f"Every customer seen by T = {format_ts(cutoff_at)} is scored at T from what was "
            f"known at T (events with ts <= T, the sweep up to T, the model checkpoint of T). "
            f"Population: customers not lost by T (a customer is lost when it cancels, or "
            f"{days:g} days after its last activity when it goes silent). Label: lost within "
            f"(T, T + {days:g} days]; labels from {labels_source}."
        )
    else:
        definition = (
            f"Every customer seen by T = {format_ts(cutoff_at)} is scored at T from what was "
            f"known at T. The labels ({labels_source}) carry no churn time: label = churned at "
            "any time; population: customers not cancelled by T."
        )
    beyond = max((cutoff_at + horizon - last_at) / timedelta(days=1), 0.0) if timed else 0.0
    return Ranking(
        cutoff_at=cutoff_at,
        horizon=horizon,
        population=len(chosen),
        positives=sum(positive),
        excluded=dict(sorted(excluded.items())),
        measures=measures,
        score_bins=bins,
        onboarding=sum(1 for c in chosen if c.scoring.onboarding),
        definition=definition,
        window_beyond_history_days=beyond,
    )


def auc_noise(auc: float, positives: int, negatives: int) -> float | None:
    """
    The standard error of a ROC AUC measured on `positives` churners and `negatives` stayers
    (Hanley and McNeil, 1982), or None without both: how far apart two AUCs of one ranking can
    be by the luck of the sample alone.
    """
    if positives < 1 or negatives < 1 or not 0.0 <= auc <= 1.0:
        return None
    q1 = auc / (2.0 - auc)
    q2 = 2.0 * auc * auc / (1.0 + auc)
    var = (
        auc * (1.0 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)
    ) / (positives * negatives)
    return math.sqrt(max(var, 0.0))


def quality_bars(ranking: Ranking) -> tuple[Bar, ...]:
    """The model quality bars: the online model against recency, the prior and the batch."""
    online = ranking.get("online_model")
    auc = online.roc_auc if online else None
    bars: list[Bar] = []
    for name, label in (("recency", "recency baseline"), ("prior", "prior-only score")):
        other = ranking.get(name)
        theirs = other.roc_auc if other else None
        if auc is None or theirs is None:
            bars.append(Bar(f"online model AUC above the {label}", None, "not measurable"))
        else:
            bars.append(
                Bar(
                    f"online model AUC above the {label}",
                    auc > theirs,
                    f"{auc:.4f} vs. {theirs:.4f}",
                )
            )
    batch = ranking.get("batch_model")
    if auc is None or batch is None or batch.roc_auc is None:
        bars.append(
            Bar(
                f"online model AUC within {AUC_SLACK} of the batch model or above",
                None,
                "batch model skipped",
            )
        )
    else:
        bars.append(
            Bar(
                f"online model AUC within {AUC_SLACK} of the batch model or above",
                auc >= batch.roc_auc - AUC_SLACK,
                f"{auc:.4f} vs. {batch.roc_auc:.4f}",
            )
        )
    return tuple(bars)


def _compare(
    source: RecordSource,
    a_log: AlertLog,
    a_side: CompareSide,
    other: Policy,
    other_source: str,
    *,
    partitions: int,
    truths_of: Callable[[Mapping[str, CustomerState]], dict[str, ChurnTruth]],
    timed: bool,
    horizon: timedelta,
) -> CompareResult:
    b_log = AlertLog()
    replay = Replay(
        other,
        partitions=partitions,
        on_alert=lambda a: b_log.add(a.customer_id, a.rule, a.action, a.event_ts),
    )
    replay.run(source())
    truths = truths_of(replay.states)
    b_eval = _alert_evaluation(
        b_log, truths, timed=timed, horizon=horizon, seen=replay.states.keys()
    )
    b_side = CompareSide(
        other_source,
        other.rules_version,
        b_log.total,
        len(b_log.first_by_customer),
        b_eval,
    )

    def firsts(log: AlertLog) -> dict[tuple[str, str], datetime]:
        out: dict[tuple[str, str], datetime] = {}
        for customer_id, rule, at in log.alerts:
            key = (customer_id, rule)
            if key not in out or at < out[key]:
                out[key] = at
        return out

    fa, fb = firsts(a_log), firsts(b_log)
    rows = []
    for rule in sorted({r for _, r in fa} | {r for _, r in fb}):
        ca = {c for c, r in fa if r == rule}
        cb = {c for c, r in fb if r == rule}
        rows.append(
            CompareRow(
                rule=rule,
                alerts_a=a_log.by_rule.get(rule, 0),
                alerts_b=b_log.by_rule.get(rule, 0),
                customers_a=len(ca),
                customers_b=len(cb),
                only_a=len(ca - cb),
                only_b=len(cb - ca),
                both=len(ca & cb),
            )
        )

    def examples(
        mine: dict[tuple[str, str], datetime], theirs: set[tuple[str, str]]
    ) -> tuple[CompareExample, ...]:
        picked: list[CompareExample] = []
        per_rule: Counter[str] = Counter()
        for (customer_id, rule), at in sorted(mine.items(), key=lambda kv: (kv[1], kv[0])):
            if (customer_id, rule) in theirs or per_rule[rule] >= 5:
                continue
            per_rule[rule] += 1
            truth = truths.get(customer_id)
            picked.append(
                CompareExample(customer_id, rule, at, None if truth is None else truth.churned)
            )
        return tuple(picked)

    return CompareResult(a_side, b_side, tuple(rows), examples(fa, set(fb)), examples(fb, set(fa)))


# -- the backtest ---------------------------------------------------------------------------


def run_backtest(
    source: RecordSource,
    policy: Policy,
    *,
    labels: Labels | None = None,
    cutoff_at: datetime | None = None,
    partitions: int = DEFAULT_PARTITIONS,
    alerts_out: IO[bytes] | None = None,
    budget: Budget | None = None,
    rules_text: str = "",
    rules_source: str = "rules",
    compare: tuple[Policy, str] | None = None,
    events_name: str = "events",
    progress: Callable[[int], None] | None = None,
    verdicts: Mapping[str, VerdictRecord] | None = None,
) -> BacktestResult:
    """
    Replay a history through the core and measure it.

    Args:
        source: the records (called once per pass over them).
        policy: the rules and engine config (what the workers run with).
        labels: what happened to the customers; None derives them from the history itself.
        cutoff_at: T for the ranking; default H before the end of the history.
        partitions: partitions to mirror (one watermark each), as the workers run.
        alerts_out: where to write every alert as the workers would publish it (JSONL).
        budget: the alert budget of the threshold sweep; None skips the sweep.
        rules_text: the rules file's text, for the sweep's patch.
        rules_source: the rules file's name, for the report and the patch.
        compare: another policy and its name: replayed over the same history, alerts compared.
        events_name: the history's name, for the report.
        progress: called now and then with the records replayed so far.
        verdicts: CSMs' verdicts on production alerts (`churnwatch feedback --export`), joined
            to this backtest's alerts by alert id for the false-alarm rate per rule.

    Raises:
        ChurnwatchError: no valid event, or a cut-off outside the history.
    """
    started = time.perf_counter()
    horizon = policy.config.horizon
    scan = scan_history(source, policy, partitions=partitions)
    at = cutoff_at if cutoff_at is not None else scan.last_at - horizon
    if at <= scan.first_at:
        msg = (
            f"cut-off: expected a time after the first event ({format_ts(scan.first_at)}), "
            f"got {format_ts(at)} (the history is shorter than the horizon of "
            f"{horizon / timedelta(days=1):g} days?)"
        )
        raise ChurnwatchError(msg)
    at_micros = (at - _EPOCH) // _MICRO
    trajectories = Trajectories() if budget is not None and policy.rules.score_rules else None
    inputs = policy.rules.model_inputs
    recorder = _Recorder(
        cutoff_at=at, alerts_out=alerts_out, trajectories=trajectories, inputs=inputs
    )
    if verdicts is not None:
        recorder.feedback = FeedbackTally(verdicts)
    main = Replay(
        policy, partitions=partitions, on_alert=recorder.on_alert, on_step=recorder.on_step
    )
    cut: Replay | None = None
    forked = False
    unforkable = False
    for i, raw in enumerate(source()):
        micros = scan.times[i]
        late = micros != _NO_TIME and micros > at_micros
        if late and cut is None and not unforkable:
            cut = _fork(main, recorder)
            forked = cut is not None
            unforkable = not forked
        main.feed(raw)
        if cut is not None and micros != _NO_TIME and not late:
            cut.feed(raw)
        if progress is not None and (i + 1) % 20_000 == 0:
            progress(i + 1)
    if cut is None and not unforkable:
        cut = _fork(main, recorder)
        forked = cut is not None
    main.finish()
    if progress is not None:
        progress(scan.records)
    if cut is None:
        cut = replay_as_of(source, policy, at, partitions=partitions)
    else:
        cut.finish(until=at)

    notes: list[str] = []
    if labels is None:
        labels = history_labels(main.states, end_at=scan.last_at, horizon=horizon)
        notes.append(
            "No labels were given: churn is read from the history itself, so customers who "
            "churned in its last "
            f"{horizon / timedelta(days=1):g} days count as staying."
        )
    notes.append(regime_note(cut, at))
    truths = truths_for(labels, main.states)
    unlabelled = sum(1 for c in main.states if c not in labels.churned)
    if unlabelled:
        notes.append(f"{unlabelled} customers of the history have no label: left out.")
    evaluation = _alert_evaluation(
        recorder.log, truths, timed=labels.timed, horizon=horizon, seen=main.states.keys()
    )
    leads = lead_days(recorder.log, truths, horizon=horizon, seen=main.states.keys())
    weeks = max((scan.last_at - scan.first_at) / _WEEK, 1e-9)
    customers = len(main.states)
    per_1000 = recorder.log.total / max(customers / 1000, 1e-9) / weeks
    weekly: dict[str, dict[int, int]] = {}
    for _, rule, when in recorder.log.alerts:
        counter = weekly.setdefault(rule, {})
        week = int((when - scan.first_at) // _WEEK)
        counter[week] = counter.get(week, 0) + 1
    alerts = AlertSummary(
        log=recorder.log,
        evaluation=evaluation,
        leads=leads,
        per_1000_per_week=per_1000,
        by_rule_action=dict(recorder.by_rule_action),
        weekly=weekly,
        examples=recorder.examples,
    )

    scores = score_all(cut, at)
    rows = np.frombuffer(recorder.rows, dtype=np.float64).reshape(-1, len(inputs))
    batch = fit_batch(rows, np.frombuffer(recorder.labels, dtype=np.int8).astype(bool))
    ranking = _ranking(
        scores,
        truths,
        timed=labels.timed,
        from_history=labels.from_history,
        cutoff_at=at,
        horizon=horizon,
        last_at=scan.last_at,
        batch=batch,
        labels_source=labels.source,
        inputs=inputs,
    )
    if ranking.window_beyond_history_days > 0:
        notes.append(
            f"T + H lies {ranking.window_beyond_history_days:.1f} days past the end of the "
            "history: churn in that part of the window is not seen."
        )
    cut_model = cut.model_for(at)
    model_cfg = policy.config.model
    model_at_cutoff = ModelInfo(
        cut_model.version, cut_model.n_labels, model_weight(cut_model.n_labels, model_cfg)
    )
    model_at_end = ModelInfo(
        main.learner.version,
        main.learner.n_labels,
        model_weight(main.learner.n_labels, model_cfg),
    )
    if model_at_cutoff.weight < 0.5:
        notes.append(
            f"Cold start: at T the model had learned {model_at_cutoff.labels} resolved labels, "
            f"so its weight in the churnwatch score was {model_at_cutoff.weight:.2f}: "
            "the prior dominates."
        )
    q = main.quality
    progressive = {"model": q.model.auc, "prior": q.prior.auc, "blended": q.blended.auc}

    sweep = None
    if trajectories is not None and budget is not None:
        counted_by_rule: dict[str, float] = {}
        for (rule, action), n in recorder.by_rule_action.items():
            if budget.counts == "all" or action == "csm_task":
                counted_by_rule[rule] = counted_by_rule.get(rule, 0.0) + n / weeks
        actual: dict[str, set[tuple[str, datetime]]] = {}
        for customer_id, rule, when in recorder.log.alerts:
            actual.setdefault(rule, set()).add((customer_id, when))
        sweep = sweep_rules(
            trajectories,
            policy.rules,
            truths=truths,
            horizon=horizon,
            seen=main.states.keys(),
            weeks=weeks,
            budget=budget,
            other_per_week=counted_by_rule,
            actual_alerts=actual,
            rules_text=rules_text,
            rules_source=rules_source,
        )

    compared = None
    if compare is not None:
        other, other_source = compare
        a_side = CompareSide(
            rules_source,
            policy.rules_version,
            recorder.log.total,
            len(recorder.log.first_by_customer),
            evaluation,
        )
        given = labels

        def truths_of(states: Mapping[str, CustomerState]) -> dict[str, ChurnTruth]:
            return truths_for(given, states)

        compared = _compare(
            source,
            recorder.log,
            a_side,
            other,
            other_source,
            partitions=partitions,
            truths_of=truths_of,
            timed=labels.timed,
            horizon=horizon,
        )

    return BacktestResult(
        events=events_name,
        rules_source=rules_source,
        rules_version=policy.rules_version,
        partitions=partitions,
        records=scan.records,
        counts=main.counts,
        customers=customers,
        first_at=scan.first_at,
        last_at=scan.last_at,
        weeks=weeks,
        horizon=horizon,
        cutoff_at=at,
        cutoff_method="fork" if forked else "replay",
        labels_source=labels.source,
        labels_timed=labels.timed,
        truths=truths,
        model_at_cutoff=model_at_cutoff,
        model_at_end=model_at_end,
        progressive=progressive,
        alerts=alerts,
        ranking=ranking,
        batch=batch,
        scores=scores,
        bars=quality_bars(ranking),
        sweep=sweep,
        compare=compared,
        seconds=time.perf_counter() - started,
        notes=notes,
        feedback=None if recorder.feedback is None else recorder.feedback.result(),
    )
