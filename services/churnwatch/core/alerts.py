"""
Alerts: the record on the workflow topic and the lifecycle that decides when one fires.

Every rule keeps a small per-customer `RuleState`: whether it is armed (hysteresis), when it
last fired (cooldown), and for counting event rules the times of recent hits. The functions
here take the state and the time and return the new state and the decisions; they never look
at a clock.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Annotated, Any, Final, Literal

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from churnwatch.core.events import Event, format_ts
from churnwatch.core.rules import EventRule, RulesFile
from churnwatch.core.slots import fast_init

ALERT_SCHEMA_VERSION: Final = 1
AlertSeverity = Literal["low", "medium", "high"]
Action = Literal["email", "csm_task"]

Rounded = Annotated[float, Field(allow_inf_nan=False)]


class Reason(BaseModel):
    """One factor behind the score's change, with its signed share of the change."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    factor: str = Field(description="The feature behind this reason, e.g. login_trend.")
    contribution: Rounded = Field(
        description="Signed share of the change in churn probability (+ means more risk)."
    )
    text: str = Field(description="Plain words with numbers, e.g. 'logins down 60% ...'.")


class AlertRecord(BaseModel):
    """
    An alert as published on the workflow topic (JSON, keyed by `customer_id`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = ALERT_SCHEMA_VERSION
    alert_id: str = Field(
        min_length=1, description="Deterministic: the same events give the same id."
    )
    customer_id: str = Field(min_length=1)
    rule: str = Field(min_length=1, description="The name of the rule that fired.")
    severity: AlertSeverity
    action: Action
    score: Rounded = Field(
        ge=0, le=100, description="Engagement score 0..100, higher is healthier."
    )
    previous_score: Rounded | None = Field(
        description="The score the change is measured from (one to two weeks earlier)."
    )
    threshold: Rounded | None = Field(description="The rule's threshold, where it has one.")
    churn_probability: Rounded = Field(ge=0, le=1)
    reasons: list[Reason]
    summary: str = Field(description="One sentence: the change and its main factors.")
    segment: str
    event_ts: AwareDatetime = Field(
        description="Event time of the event (or sweep) that triggered it."
    )
    emitted_at: AwareDatetime = Field(
        description="The event-time watermark at which it was decided (not the wall clock)."
    )
    model_version: str
    rules_version: str


def alert_to_dict(alert: AlertRecord) -> dict[str, Any]:
    """
    The JSON form of an alert, times in the one format we write (`format_ts`).
    """
    data = alert.model_dump(mode="python")
    data["event_ts"] = format_ts(alert.event_ts)
    data["emitted_at"] = format_ts(alert.emitted_at)
    data["reasons"] = [reason.model_dump() for reason in alert.reasons]
    return data


def alert_to_json(alert: AlertRecord) -> bytes:
    """
    The wire form of an alert: compact JSON, fields in schema order, the same bytes in a replay.
    """
    return orjson.dumps(alert_to_dict(alert))


def alert_id_for(customer_id: str, rule: str, decided_at: datetime) -> str:
    """
    A deterministic alert id: one customer, one rule, one decision time.

    A rule fires at most once per customer at a given event time (it disarms or cools down
    when it fires), so these three name the alert; a redelivered event gives the same id.
    """
    key = f"{customer_id}\x1f{rule}\x1f{format_ts(decided_at)}".encode()
    return hashlib.sha256(key).hexdigest()[:32]


@fast_init
@dataclass(frozen=True, slots=True)
class RuleState:
    """One rule's memory for one customer."""

    armed: bool = True
    last_fired_at: datetime | None = None
    hits: tuple[datetime, ...] = ()


@dataclass(frozen=True, slots=True)
class Decision:
    """A rule decided to alert; the engine turns it into an `AlertRecord`."""

    rule: str
    severity: AlertSeverity
    threshold: float | None
    decided_at: datetime


RuleStates = Mapping[str, RuleState]
_IDLE: Final = RuleState()


@functools.lru_cache(maxsize=256)
def _days(days: float) -> timedelta:
    """`timedelta(days=days)`, built once per value (the rules' windows and cooldowns)."""
    return timedelta(days=days)


def _cooling(state: RuleState, *, at: datetime, cooldown_days: float) -> bool:
    return state.last_fired_at is not None and at - state.last_fired_at < _days(cooldown_days)


def _fire(state: RuleState, at: datetime) -> RuleState:
    return replace(state, armed=False, last_fired_at=at)


def evaluate_score(
    states: RuleStates,
    *,
    score: float,
    segment: str,
    at: datetime,
    rules: RulesFile,
) -> tuple[dict[str, RuleState], list[Decision]]:
    """
    Threshold rules with hysteresis: fire below T, re-arm only above T + margin, and never
    twice within the cooldown.

    Args:
        states: the customer's rule states by rule name.
        score: the engagement score now (0..100, higher is healthier).
        segment: the customer's segment, which picks the threshold.
        at: the event time of this score.
        rules: the rules file.

    Returns:
        The updated states (only those that changed) and the decisions to alert.
    """
    changed: dict[str, RuleState] = {}
    decisions: list[Decision] = []
    for rule in rules.score_rules:
        threshold = rule.threshold_for(segment)
        state = states.get(rule.name, _IDLE)
        if not state.armed:
            if score > threshold + rule.margin:
                changed[rule.name] = replace(state, armed=True)
            continue
        if score < threshold and not _cooling(state, at=at, cooldown_days=rule.cooldown_days):
            changed[rule.name] = _fire(state, at)
            decisions.append(Decision(rule.name, rule.severity, threshold, at))
    return changed, decisions


def evaluate_decline(
    states: RuleStates,
    *,
    score: float,
    anchor_score: float | None,
    anchor_at: datetime | None,
    at: datetime,
    rules: RulesFile,
) -> tuple[dict[str, RuleState], list[Decision]]:
    """
    Sharp-decline rules: the score fell by at least `drop` points since the anchor, and the
    anchor lies within the rule's window.

    Returns:
        The updated states (only those that changed) and the decisions to alert.
    """
    changed: dict[str, RuleState] = {}
    decisions: list[Decision] = []
    if anchor_score is None or anchor_at is None:
        return changed, decisions
    for rule in rules.decline_rules:
        if at - anchor_at > _days(rule.within_days):
            continue
        if rule.below is not None and score >= rule.below:
            continue
        state = states.get(rule.name, _IDLE)
        if anchor_score - score >= rule.drop and not _cooling(
            state, at=at, cooldown_days=rule.cooldown_days
        ):
            changed[rule.name] = _fire(state, at)
            decisions.append(Decision(rule.name, rule.severity, anchor_score - rule.drop, at))
    return changed, decisions


def _matches(rule: EventRule, event: Event) -> bool:
    if event.type != rule.event:
        return False
    return all(str(getattr(event, name, None)) in allowed for name, allowed in rule.where.items())


def evaluate_event(
    states: RuleStates, event: Event, *, rules: RulesFile
) -> tuple[dict[str, RuleState], list[Decision]]:
    """
    Event rules: a matching event (or `count` of them within `within_days`) fires the rule,
    outside its cooldown.

    Returns:
        The updated states (only those that changed) and the decisions to alert.
    """
    changed: dict[str, RuleState] = {}
    decisions: list[Decision] = []
    at = event.ts
    for rule in rules.event_rules:
        if not _matches(rule, event):
            continue
        state = states.get(rule.name, _IDLE)
        hits = state.hits
        if rule.count > 1 and rule.within_days is not None:
            window = _days(rule.within_days)
            hits = tuple(sorted(h for h in (*hits, at) if at - window < h <= at + window))
            hits = hits[-rule.count :]
            recent = [h for h in hits if at - window < h <= at]
            due = len(recent) >= rule.count
        else:
            hits = ()
            due = True
        state = replace(state, hits=hits)
        if due and not _cooling(state, at=at, cooldown_days=rule.cooldown_days):
            state = replace(_fire(state, at), hits=())
            decisions.append(Decision(rule.name, rule.severity, None, at))
        changed[rule.name] = state
    return changed, decisions


def inactivity_due_at(
    last_activity_at: datetime, *, avg_purchase_gap_days: float, rules: RulesFile
) -> datetime:
    """
    When the inactivity rule fires if the customer stays silent: after `days`, or after
    `gap_multiple` times the customer's own usual gap between purchases, whichever is later.
    """
    rule = rules.inactivity
    days = max(rule.days, rule.gap_multiple * avg_purchase_gap_days)
    return last_activity_at + timedelta(days=days)


def evaluate_inactivity(
    states: RuleStates, *, at: datetime, rules: RulesFile
) -> tuple[dict[str, RuleState], list[Decision]]:
    """
    The inactivity rule, called by the sweep at the moment the silence became long enough.
    It fires once per silence (activity re-arms it) and respects its cooldown.
    """
    rule = rules.inactivity
    state = states.get(rule.name, _IDLE)
    if not state.armed or _cooling(state, at=at, cooldown_days=rule.cooldown_days):
        return {}, []
    return {rule.name: _fire(state, at)}, [Decision(rule.name, rule.severity, None, at)]


def rearm_inactivity(states: RuleStates, *, rules: RulesFile) -> dict[str, RuleState]:
    """
    Activity re-arms the inactivity rule (its cooldown still holds).
    """
    name = rules.inactivity.name
    state = states.get(name)
    if state is None or state.armed:
        return {}
    return {name: replace(state, armed=True)}
