"""
The per-customer step: one event in, the new state, alerts and training examples out.

This is the function the streaming workers, the replay and the demo all call. It reads no
clock: the event's `ts`, the watermark and the sweep's due time are the only times it knows.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, Literal, Protocol

from churnwatch.core import alerts as al
from churnwatch.core import explain
from churnwatch.core import features as feats
from churnwatch.core.errors import BadEventError
from churnwatch.core.events import DEFAULT_MAX_EVENT_BYTES, EPOCH, Event
from churnwatch.core.labels import (
    Example,
    Snapshot,
    horizon_of,
    is_lost,
    resolve_on_activity,
    resolve_on_cancel,
    resolve_on_silence,
)
from churnwatch.core.model import ModelConfig, blend, engagement_score, model_weight
from churnwatch.core.rules import (
    PRIOR_INPUT,
    EventRule,
    PriorPlan,
    RulesFile,
    prior_logit,
    route,
    rules_fingerprint,
)
from churnwatch.core.slots import fast_init
from churnwatch.core.state import Anchor, CustomerState

_DAY: Final = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """
    The knobs of the core; built from settings by the shell, never read from the environment.
    """

    horizon: timedelta = timedelta(days=30)
    """Label horizon H: silent this long after a snapshot means churned. With `learn_horizon`
    the least H can be: the horizon is learned from the stream (`core.population`)."""
    learn_horizon: bool = True
    """Whether H is learned from the gaps between activities (the model checkpoint's counts,
    so a function of the event-time history), or fixed at `horizon`."""
    lateness: timedelta = timedelta(hours=1)
    """Allowed lateness: the watermark is the largest event time seen less this."""
    max_future: timedelta = timedelta(days=7)
    """Events later than the largest event time seen plus this are rejected."""
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    snapshot_every: timedelta = timedelta(days=7)
    """At most one periodic training snapshot per customer per this long."""
    silence_checkpoints: tuple[timedelta, ...] = tuple(
        timedelta(days=d) for d in (7, 14, 30, 60, 90, 180, 365)
    )
    """Times into a silence at which the sweep re-scores the customer and takes a snapshot
    (one within `checkpoint_reach` horizons: a ladder that fits a daily app and a yearly shop)."""
    checkpoint_reach: float = 2.0
    """Training snapshots are taken at the silence checkpoints up to this many label horizons
    (H as in force at the checkpoint); later ones only re-score."""
    anchor_every: timedelta = timedelta(days=7)
    """Changes are explained against a score one to two of these back."""
    model_epoch: timedelta = timedelta(days=1)
    """Scorers use the model as learned up to the start of the current epoch (event time)."""
    top_reasons: int = 3
    features: feats.FeatureConfig = field(default_factory=feats.FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)


@dataclass(frozen=True, slots=True)
class _Plan:
    """What the per-event path reads of the rules and the config, read once per policy."""

    prior: PriorPlan
    checkpoints: tuple[timedelta, ...]
    horizon: timedelta
    inactivity_days: float
    gap_multiple: float
    inactivity_after: timedelta
    """`timedelta(days=inactivity.days)`: the inactivity rule's time for most customers."""
    label_gap_multiple: float = 0.0
    """The rules file's `labels.gap_multiple`: a snapshot's horizon is max(H, k x its gap)."""
    fixed_horizon: timedelta | None = None
    """H when it is not learned (the rules file's `labels.horizon_days`, or the config's)."""
    horizon_floor_days: float = 30.0
    """The least a learned H can be, in days."""
    snapshot_reach: float | None = None
    """Snapshots at the checkpoints up to this many horizons; None: at every checkpoint."""
    event_rules: Mapping[str, EventRule] = field(default_factory=dict)
    """The rules file's event rules by name: their alerts' first reason is the event."""
    prior_input: bool = False
    """The rules file's `model.prior_input`: the vector carries the prior's logit."""

    @classmethod
    def build(cls, rules: RulesFile, config: EngineConfig) -> _Plan:
        inactivity = rules.inactivity
        labels = rules.labels
        checkpoints = tuple(config.silence_checkpoints)
        reach: float | None = config.checkpoint_reach
        if labels is not None and labels.silence_checkpoints_days is not None:
            checkpoints = tuple(timedelta(days=d) for d in labels.silence_checkpoints_days)
            reach = None
        fixed = None if config.learn_horizon else config.horizon
        if labels is not None and labels.horizon_days is not None:
            fixed = timedelta(days=labels.horizon_days)
        return cls(
            prior=PriorPlan.build(rules),
            checkpoints=checkpoints,
            horizon=config.horizon,
            inactivity_days=inactivity.days,
            gap_multiple=inactivity.gap_multiple,
            inactivity_after=timedelta(days=inactivity.days),
            label_gap_multiple=0.0 if labels is None else labels.gap_multiple,
            prior_input=rules.model is not None and rules.model.prior_input,
            fixed_horizon=fixed,
            horizon_floor_days=config.horizon / _DAY,
            snapshot_reach=reach,
            event_rules={rule.name: rule for rule in rules.event_rules},
        )

    def label_horizon(self, model: ModelView) -> timedelta:
        """H for a snapshot taken while scoring with `model`: fixed, or learned by it."""
        if self.fixed_horizon is not None:
            return self.fixed_horizon
        return timedelta(days=model.horizon_days(self.horizon_floor_days))


@dataclass(frozen=True, slots=True)
class Policy:
    """The rules, their version and the engine config: everything a decision depends on."""

    rules: RulesFile
    rules_version: str
    config: EngineConfig
    plan: _Plan = field(init=False, repr=False, compare=False)
    """Derived from `rules` and `config` when the policy is built; read by the hot path."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "plan", _Plan.build(self.rules, self.config))

    @classmethod
    def build(cls, rules: RulesFile, config: EngineConfig | None = None) -> Policy:
        """
        The policy of `rules` and `config`; the rules file's `model` section, where it sets
        `learning_rate` or `l2`, overrides `config.model`'s.
        """
        config = config or EngineConfig()
        section = rules.model
        if section is not None:
            changes: dict[str, object] = {}
            if section.learning_rate is not None:
                changes["learning_rate"] = section.learning_rate
            if section.l2 is not None:
                changes["l2"] = section.l2
            if section.optimizer is not None:
                changes["optimizer"] = section.optimizer
            if changes:
                model = dataclasses.replace(config.model, **changes)  # type: ignore[arg-type]
                config = dataclasses.replace(config, model=model)
        return cls(rules, rules_fingerprint(rules), config)


class ModelView(Protocol):
    """What scoring needs of a model (the `Scorer` of core.model satisfies it)."""

    @property
    def version(self) -> str: ...

    @property
    def n_labels(self) -> int: ...

    def evidence(self, x: Mapping[str, float]) -> int: ...

    def horizon_days(self, floor_days: float) -> float: ...

    def predict_one(self, x: Mapping[str, float]) -> float: ...

    def score_one(self, x: Mapping[str, float]) -> float: ...

    def contributions(self, x: Mapping[str, float]) -> dict[str, float]: ...

    def explain_one(self, x: Mapping[str, float]) -> tuple[float, dict[str, float]]: ...


ModelFor = Callable[[datetime], ModelView]
"""The model to score with at a given event time (scorers switch models per epoch)."""


@fast_init
@dataclass(frozen=True, slots=True)
class Scoring:
    """One scoring of one customer."""

    at: datetime
    churn_probability: float
    score: float
    prior_probability: float
    model_probability: float | None
    model_weight: float
    onboarding: bool
    segment: str
    prior_factors: Mapping[str, float]
    """The prior's share of the probability per feature (its matched point rules)."""
    model_version: str


@fast_init
@dataclass(frozen=True, slots=True)
class StepResult:
    """What one step produced: the new state and the effects for the shell to carry out."""

    state: CustomerState
    outcome: Literal["processed", "duplicate", "idle"]
    alerts: tuple[al.AlertRecord, ...] = ()
    examples: tuple[Example, ...] = ()
    scoring: Scoring | None = None
    due_at: datetime | None = field(default=None, kw_only=True)
    """`next_due_at(state, policy)` of the new state, computed once by the step."""
    caught_up: tuple[Scoring, ...] = field(default=(), kw_only=True)
    """The scorings of the silence checkpoints an event caught up on before its own (a
    checkpoint the sweep had not reached yet), in time order; `scoring` is the event's."""


def check_time(
    ts: datetime,
    high_water: datetime | None,
    config: EngineConfig,
    *,
    latest: datetime | None = None,
) -> BadEventError | None:
    """
    Whether an event's time fits: not older than its partition's watermark (the largest event
    time seen in the partition less the allowed lateness), and not later than `latest` (the
    largest event time seen anywhere, or the time the record was received) plus `max_future`.

    The future check is not made against the partition alone: a partition that was quiet for
    longer than `max_future` would otherwise reject every event after its silence.

    Returns:
        None when it fits, else the error to dead-letter it with (`too_late` or
        `future_timestamp`).
    """
    if high_water is not None and ts < high_water - config.lateness:
        msg = (
            f"ts: {ts.isoformat()} is {high_water - ts} behind the partition, "
            f"more than the allowed lateness {config.lateness}"
        )
        return BadEventError(msg, reason="too_late", field="ts")
    if latest is not None and ts > latest + config.max_future:
        msg = (
            f"ts: {ts.isoformat()} is {ts - latest} ahead of the latest event time seen, "
            f"more than the allowed {config.max_future}"
        )
        return BadEventError(msg, reason="future_timestamp", field="ts")
    return None


def _days(at: datetime) -> float:
    return (at - EPOCH) / _DAY


def check_reuse(state: CustomerState | None, event: Event) -> BadEventError | None:
    """
    Whether an event reuses the `event_id` of another event of the same customer: an id the
    customer's state remembers (within the allowed lateness) with another event time. A
    redelivery carries the same time and is a duplicate (`process_event`); a different event
    under a known id would be silently dropped as one, so it is dead-lettered instead.
    """
    if state is None:
        return None
    seen = state.seen.get(event.event_id)
    if seen is None or seen == _days(event.ts):
        return None
    first = EPOCH + seen * _DAY
    msg = (
        f"event_id: {event.event_id!r} already names an event of customer "
        f"{event.customer_id!r} at {first.isoformat()}; this one is at {event.ts.isoformat()} "
        "(an id must name one event)"
    )
    return BadEventError(msg, reason="reused_event_id", field="event_id")


def score_at(
    features: feats.Features, *, at: datetime, model: ModelView, policy: Policy
) -> tuple[dict[str, float], Scoring]:
    """
    Score a customer's features as of `at`: the prior's points blended with the model.

    Args:
        features: the customer's features.
        at: the event time to score at (features are decayed to it).
        model: the learned model for this epoch.
        policy: rules and config.

    Returns:
        The feature vector (the model's inputs: with the rules file's `model.prior_input`,
        the prior's logit besides the features) and the scoring. The prior is the onboarding
        profile for customers the rules call onboarding (rules file, `onboarding`), the points
        otherwise; the model's weight in the blend grows with the labels it learned from the
        customer's cohort (`ModelView.evidence`): cold start by evidence.
    """
    x, scoring, _ = _score(features, at, model, policy, explained=False)
    return x, scoring


_Explained = tuple[float, dict[str, float]]
"""`ModelView.explain_one(x)`: the model's probability and the features' contributions."""


def _score(
    features: feats.Features, at: datetime, model: ModelView, policy: Policy, *, explained: bool
) -> tuple[dict[str, float], Scoring, _Explained | None]:
    """
    `score_at`; with `explained`, the model's part comes from `explain_one` (the same
    probability as `score_one`, with the contributions that `factors_of` needs besides).
    """
    cfg = policy.config
    prior = policy.plan.prior
    x = feats.vector(features, at=at, config=cfg.features)
    # The plan's prior is `prior_points(rules, x, texts=False)`, with the prior's factors
    # (`-points / 100` per matched feature) summed in the same order.
    prior_p, onboarding, prior_factors = prior.evaluate(x)
    if policy.plan.prior_input:
        x[PRIOR_INPUT] = prior_logit(prior_p)
    # Cold start by evidence: the model's weight grows with the labels it learned from
    # customers like this one (its cohort of event count and tenure), whatever profile the
    # prior used; the onboarding profile fades as the model learns about new customers.
    n_labels = model.evidence(x)
    weight = model_weight(n_labels, cfg.model)
    model_p: float | None = None
    p = prior_p
    parts: _Explained | None = None
    if weight > 0.0:
        if explained:
            parts = model.explain_one(x)
            model_p = parts[0]
        else:
            model_p = model.score_one(x)
        if 0.0 <= model_p <= 1.0:
            # `blend` inlined (the prior is in [0, 1] by construction): the same expression
            # with the same weight.
            p = (1.0 - weight) * prior_p + weight * model_p
        else:
            p = blend(prior_p, model_p, n_labels=n_labels, config=cfg.model)  # raises
    scoring = Scoring(
        at=at,
        churn_probability=p,
        score=round(100.0 * (1.0 - p), 2) if 0.0 <= p <= 1.0 else engagement_score(p),
        prior_probability=prior_p,
        model_probability=model_p,
        model_weight=weight,
        onboarding=onboarding,
        segment=prior.segment_of(x["ltv"]),
        prior_factors=prior_factors,
        model_version=model.version,
    )
    return x, scoring, parts


def factors_of(
    scoring: Scoring,
    x: Mapping[str, float],
    model: ModelView,
    explained: _Explained | None = None,
) -> dict[str, float]:
    """
    Every feature's signed share of the scoring's churn probability: the model's part (its
    contributions to the logit, turned into probability) and the prior's part (its points),
    weighted as the blend weighs them. Computed only where it is shown: alerts and anchors.
    `explained` is `model.explain_one(x)` when the caller has it already.
    """
    model_factors: dict[str, float] = {}
    if scoring.model_weight > 0.0 and scoring.model_probability is not None:
        model_p, contributions = model.explain_one(x) if explained is None else explained
        model_factors = explain.model_factors(model_p, contributions)
    return explain.blend_factors(model_factors, scoring.prior_factors, weight=scoring.model_weight)


def _avg_purchase_gap_days(f: feats.Features) -> float:
    if f.purchase_count < 2 or f.first_purchase_day is None or f.last_purchase_day is None:
        return 0.0
    return (f.last_purchase_day - f.first_purchase_day) / (f.purchase_count - 1)


def _inactive_at(last: datetime, features: feats.Features, plan: _Plan) -> datetime:
    """
    `alerts.inactivity_due_at` for this customer, with the rule's usual delay built once.
    """
    days = plan.gap_multiple * _avg_purchase_gap_days(features)
    # max(rule.days, gap_multiple * gap), as inactivity_due_at takes it: the rule's own days
    # unless the customer's usual gap makes the silence longer.
    if days > plan.inactivity_days:
        return last + timedelta(days=days)
    return last + plan.inactivity_after


def _rescore_points(state: CustomerState, policy: Policy) -> list[datetime]:
    """The sweep's re-scoring times in the current silence: checkpoints and the inactivity rule."""
    last = state.last_activity_at
    if last is None or state.cancelled_at is not None:
        return []
    plan = policy.plan
    points = [last + c for c in plan.checkpoints]
    points.append(_inactive_at(last, state.features, plan))
    return points


def next_due_at(state: CustomerState, policy: Policy) -> datetime | None:
    """
    The next event time at which the sweep has work for this customer (a silence checkpoint,
    the inactivity rule, or a snapshot whose horizon runs out), or None.
    """
    return _next_due(state, policy.plan)


def _next_due(state: CustomerState, plan: _Plan) -> datetime | None:
    # The earliest of the rescore points and the pending snapshots' expiries after `after`;
    # among equal times the first in that order, as min() over them would pick.
    last = state.last_activity_at
    after = state.swept_at
    if after is None:
        if last is None:
            return None
        after = last
    best: datetime | None = None
    if last is not None and state.cancelled_at is None:
        for c in plan.checkpoints:
            t = last + c
            if t > after and (best is None or t < best):
                best = t
        # _inactive_at(last, state.features, plan), inlined: this runs a few times per event.
        f = state.features
        first_purchase, last_purchase = f.first_purchase_day, f.last_purchase_day
        if f.purchase_count < 2 or first_purchase is None or last_purchase is None:
            t = last + plan.inactivity_after
        else:
            days = plan.gap_multiple * ((last_purchase - first_purchase) / (f.purchase_count - 1))
            if days > plan.inactivity_days:
                t = last + timedelta(days=days)
            else:
                t = last + plan.inactivity_after
        if t > after and (best is None or t < best):
            best = t
    pending = state.pending
    if pending:
        horizon = plan.horizon
        k = plan.label_gap_multiple
        for snap in pending:
            t = snap.taken_at + horizon_of(snap, horizon, k)
            if t > after and (best is None or t < best):
                best = t
    return best


def _decide(
    customer_id: str,
    rule_states: dict[str, al.RuleState],
    anchor: Anchor | None,
    next_anchor: Anchor | None,
    scoring: Scoring,
    x: Mapping[str, float],
    extra: list[al.Decision],
    extra_states: Mapping[str, al.RuleState],
    *,
    model: ModelView,
    explained: _Explained | None,
    emitted_at: datetime,
    policy: Policy,
    event: Event | None = None,
) -> tuple[list[al.AlertRecord], Anchor | None, Anchor | None]:
    """
    Apply a scoring: score and decline rules, the given extra decisions, anchors, alerts.

    `rule_states` (the caller's own copy of the customer's) is updated in place; returns the
    alerts and the new anchors. An event rule's alert (the `event` that fired it) names the
    event first among its reasons.
    """
    rules = policy.rules
    at = scoring.at
    ref = anchor if anchor is not None else next_anchor
    rule_states.update(extra_states)
    changed, decisions = al.evaluate_score(
        rule_states, score=scoring.score, segment=scoring.segment, at=at, rules=rules
    )
    rule_states.update(changed)
    changed, declines = al.evaluate_decline(
        rule_states,
        score=scoring.score,
        anchor_score=None if ref is None else ref.score,
        anchor_at=None if ref is None else ref.at,
        at=at,
        rules=rules,
    )
    rule_states.update(changed)
    records: list[al.AlertRecord] = []
    fired = [*extra, *decisions, *declines]
    capture = _captures(next_anchor, at, policy)
    if not (fired or capture):
        return records, anchor, next_anchor
    factors = factors_of(scoring, x, model, explained)
    change = None if ref is None else round(scoring.churn_probability - ref.churn_probability, 4)
    top = policy.config.top_reasons
    for decision in fired:
        items = explain.reasons(
            factors,
            None if ref is None else ref.factors,
            change=0.0 if change is None else change,
            x=x,
            top=top,
        )
        trigger = None if event is None else policy.plan.event_rules.get(decision.rule)
        if trigger is not None and event is not None:
            first = explain.trigger_reason(trigger, event, factors)
            items = [first, *(r for r in items if r.factor != first.factor)][:top]
        records.append(
            al.AlertRecord(
                alert_id=al.alert_id_for(customer_id, decision.rule, decision.decided_at),
                customer_id=customer_id,
                rule=decision.rule,
                severity=decision.severity,
                action=route(
                    rules, segment=scoring.segment, severity=decision.severity, rule=decision.rule
                ),
                score=round(scoring.score, 2),
                previous_score=None if ref is None else round(ref.score, 2),
                threshold=None if decision.threshold is None else round(decision.threshold, 2),
                churn_probability=round(scoring.churn_probability, 4),
                reasons=items,
                summary=explain.summary(change, items, level=round(scoring.churn_probability, 4)),
                segment=scoring.segment,
                event_ts=decision.decided_at,
                emitted_at=emitted_at,
                model_version=scoring.model_version,
                rules_version=policy.rules_version,
            )
        )
    if capture:
        current = Anchor(scoring.at, scoring.score, scoring.churn_probability, factors)
        anchor, next_anchor = (anchor, current) if next_anchor is None else (next_anchor, current)
    return records, anchor, next_anchor


def _captures(next_anchor: Anchor | None, at: datetime, policy: Policy) -> bool:
    """Whether a scoring at `at` becomes the next anchor (and so needs its factors)."""
    return next_anchor is None or at - next_anchor.at >= policy.config.anchor_every


class _Unknown(enum.Enum):
    """The `due_at` of `process_event` and `sweep_one` when the caller does not know it."""

    UNKNOWN = enum.auto()


def sweep_one(
    state: CustomerState,
    *,
    until: datetime,
    model_for: ModelFor,
    policy: Policy,
    inclusive: bool = True,
    due_at: datetime | _Unknown | None = _Unknown.UNKNOWN,
) -> StepResult:
    """
    Carry a quiet customer forward to `until` in event time.

    Every checkpoint of the current silence that falls before `until` is handled at its own
    time: snapshots whose horizon ran out become positive examples, the customer is re-scored
    at the silence checkpoints (with a training snapshot) and at the inactivity rule's time
    (which may fire). Alerts decided here carry the checkpoint as `event_ts` and `emitted_at`,
    so the result does not depend on how often the sweep runs.

    Args:
        state: the customer's state.
        until: handle checkpoints up to this event time (the watermark, or the time of the
            customer's next event).
        model_for: the model per event time.
        policy: rules and config.
        inclusive: whether a checkpoint exactly at `until` is handled.
        due_at: `next_due_at(state, policy)` where the caller has it already (the `due_at`
            of the step that made `state`); computed here when not given.
    """
    records: list[al.AlertRecord] = []
    examples: list[Example] = []
    first_due = None if due_at is _Unknown.UNKNOWN else due_at
    if due_at is None:
        # Nothing due: _sweep's own _next_due would say so too.
        return StepResult(state, "idle", due_at=None)
    state, scoring, due_at = _sweep(
        state, until, inclusive, model_for, policy, records, examples, first_due
    )
    outcome: Literal["processed", "idle"] = "processed" if records or examples else "idle"
    return StepResult(state, outcome, tuple(records), tuple(examples), scoring, due_at=due_at)


def _sweep(
    state: CustomerState,
    until: datetime,
    inclusive: bool,
    model_for: ModelFor,
    policy: Policy,
    records: list[al.AlertRecord],
    examples: list[Example],
    first_due: datetime | None = None,
    scorings: list[Scoring] | None = None,
) -> tuple[CustomerState, Scoring | None, datetime | None]:
    """
    `sweep_one`, appending its alerts and examples to the caller's lists; `first_due` is
    `_next_due(state)` where the caller has it already. Returns the new state, its last
    scoring and its `_next_due` (the first due time not handled).
    """
    plan = policy.plan
    horizon = plan.horizon
    checkpoints = plan.checkpoints
    scoring: Scoring | None = None
    known_due = first_due
    while True:
        due = _next_due(state, plan) if known_due is None else known_due
        known_due = None
        if due is None or due > until or (due == until and not inclusive):
            return state, scoring, due
        pending, expired = resolve_on_silence(
            state.customer_id,
            state.pending,
            watermark=due,
            horizon=horizon,
            gap_multiple=plan.label_gap_multiple,
        )
        examples.extend(expired)
        last = state.last_activity_at
        # The rescore points of `_rescore_points`: none once cancelled.
        inactive_at = None
        if last is not None and state.cancelled_at is None:
            inactive_at = _inactive_at(last, state.features, plan)
        if (
            last is None
            or inactive_at is None
            or (due != inactive_at and all(due != last + c for c in checkpoints))
        ):
            state = CustomerState(
                customer_id=state.customer_id,
                features=state.features,
                last_activity_at=last,
                swept_at=due,
                scored_at=state.scored_at,
                score=state.score,
                churn_probability=state.churn_probability,
                segment=state.segment,
                anchor=state.anchor,
                next_anchor=state.next_anchor,
                pending=pending,
                last_sample_at=state.last_sample_at,
                rules=state.rules,
                seen=state.seen,
                cancelled_at=state.cancelled_at,
                alerts=state.alerts,
            )
            continue
        model = model_for(due)
        explained = _captures(state.next_anchor, due, policy)
        x, scoring, parts = _score(state.features, due, model, policy, explained=explained)
        if scorings is not None:
            scorings.append(scoring)
        extra: list[al.Decision] = []
        extra_states: dict[str, al.RuleState] = {}
        if due == inactive_at:
            extra_states, extra = al.evaluate_inactivity(state.rules, at=due, rules=policy.rules)
        silence = due - last
        if silence in checkpoints:
            label_horizon = plan.label_horizon(model)
            reach = plan.snapshot_reach
            if (reach is None or silence <= reach * label_horizon) and not is_lost(
                x, label_horizon, plan.label_gap_multiple
            ):
                pending = (*pending, Snapshot(due, "silence", x, label_horizon))
        rule_states = dict(state.rules)
        made, anchor, next_anchor = _decide(
            state.customer_id,
            rule_states,
            state.anchor,
            state.next_anchor,
            scoring,
            x,
            extra,
            extra_states,
            model=model,
            explained=parts,
            emitted_at=due,
            policy=policy,
        )
        records.extend(made)
        state = CustomerState(
            customer_id=state.customer_id,
            features=state.features,
            last_activity_at=last,
            swept_at=due,
            scored_at=due,
            score=scoring.score,
            churn_probability=scoring.churn_probability,
            segment=scoring.segment,
            anchor=anchor,
            next_anchor=next_anchor,
            pending=pending,
            last_sample_at=state.last_sample_at,
            rules=rule_states,
            seen=state.seen,
            cancelled_at=state.cancelled_at,
            alerts=state.alerts + len(made),
        )


def process_event(
    state: CustomerState | None,
    event: Event,
    *,
    watermark: datetime,
    model_for: ModelFor,
    policy: Policy,
    due_at: datetime | _Unknown | None = _Unknown.UNKNOWN,
) -> StepResult:
    """
    Apply one validated event to its customer's state.

    Args:
        state: the customer's state, or None for a customer never seen.
        event: the event (its customer is `state`'s).
        watermark: the partition's watermark after this event (largest event time seen less
            the allowed lateness); the alerts' `emitted_at`, and the bound below which
            remembered event ids are forgotten (older events are rejected before this step).
        model_for: the model per event time.
        policy: rules and config.
        due_at: `next_due_at(state, policy)` where the caller has it already (the
            `due_at` of the step that made `state`); computed here when not given.

    Returns:
        The new state and its effects. A redelivered `event_id` gives outcome `duplicate`
        and the state unchanged.
    """
    if state is None:
        state = CustomerState(event.customer_id)
    if event.event_id in state.seen:
        if due_at is _Unknown.UNKNOWN:
            due_at = _next_due(state, policy.plan)
        return StepResult(state, "duplicate", due_at=due_at)
    cfg = policy.config
    records: list[al.AlertRecord] = []
    examples: list[Example] = []
    ts = event.ts
    previous = state.last_activity_at
    caught_up: list[Scoring] = []
    if previous is not None and ts > previous:
        due = _next_due(state, policy.plan) if due_at is _Unknown.UNKNOWN else due_at
        if due is not None and due < ts:  # the silence before this event has work in it
            state = _sweep(state, ts, False, model_for, policy, records, examples, due, caught_up)[
                0
            ]
            previous = state.last_activity_at

    # max(previous, ts), which keeps `previous` on a tie
    last = ts if previous is None or ts > previous else previous
    features = feats.update_one(state.features, event, config=cfg.features)
    rule_states = dict(state.rules)
    is_cancel = event.type == "cancel"
    if is_cancel:
        examples.extend(resolve_on_cancel(state.customer_id, state.pending, at=ts))
        pending: tuple[Snapshot, ...] = ()
        cancelled_at: datetime | None = ts
    else:
        pending, resolved = resolve_on_activity(
            state.customer_id,
            state.pending,
            at=ts,
            horizon=cfg.horizon,
            gap_multiple=policy.plan.label_gap_multiple,
        )
        examples.extend(resolved)
        cancelled_at = None
        rule_states.update(al.rearm_inactivity(rule_states, rules=policy.rules))

    model = model_for(last)
    explained = _captures(state.next_anchor, last, policy)
    x, scoring, parts = _score(features, last, model, policy, explained=explained)
    extra: list[al.Decision] = []
    extra_states: dict[str, al.RuleState] = {}
    last_sample_at = state.last_sample_at
    if not is_cancel:
        extra_states, extra = al.evaluate_event(rule_states, event, rules=policy.rules)
        kind: Literal["sample", "event"] = "event"
        resampled = any(s.taken_at == last and s.kind == "sample" for s in pending)
        if resampled or last_sample_at is None or last - last_sample_at >= cfg.snapshot_every:
            kind = "sample"
            last_sample_at = last
        kept = tuple(s for s in pending if s.kind != "event" and s.taken_at != last)
        pending = (*kept, Snapshot(last, kind, x, policy.plan.label_horizon(model)))

    seen_floor = _days(watermark)
    seen = {eid: day for eid, day in state.seen.items() if day >= seen_floor}
    seen[event.event_id] = _days(ts)
    if len(seen) > 1:
        seen = dict(sorted(seen.items()))
    made, anchor, next_anchor = _decide(
        state.customer_id,
        rule_states,
        state.anchor,
        state.next_anchor,
        scoring,
        x,
        extra,
        extra_states,
        model=model,
        explained=parts,
        emitted_at=watermark,
        policy=policy,
        event=event,
    )
    records.extend(made)
    state = CustomerState(
        customer_id=state.customer_id,
        features=features,
        last_activity_at=last,
        swept_at=last if previous is None or last > previous else state.swept_at,
        scored_at=scoring.at,
        score=scoring.score,
        churn_probability=scoring.churn_probability,
        segment=scoring.segment,
        anchor=anchor,
        next_anchor=next_anchor,
        pending=pending,
        last_sample_at=last_sample_at,
        rules=rule_states,
        seen=seen,
        cancelled_at=cancelled_at,
        alerts=state.alerts + len(made),
    )
    return StepResult(
        state,
        "processed",
        tuple(records),
        tuple(examples),
        scoring,
        due_at=_next_due(state, policy.plan),
        caught_up=tuple(caught_up),
    )
