"""
Threshold sweeps of the score rules, from one replay.

The replay records every scoring of every customer (`Trajectories`, fed from `Replay`'s
`on_step`). A score rule's alerts at other thresholds are then recomputed from the recorded
scores with the core's own lifecycle, `core.alerts.evaluate_score` (hysteresis, cooldown), one
rule at a time: no replay per threshold. The scores themselves do not depend on the thresholds
(a rule decides alerts, never the score), so this is exact; the scorings made inside a catch-up
(an event whose customer's silence checkpoints were not swept yet) come with the event's step
(`StepResult.caught_up`). `reproduced` says how many of the rule's real alerts the
recomputation at the rule's own thresholds gives back.

For each rule: alert volume, precision, recall and lead time per threshold, overall and per
segment; and the per-segment thresholds that fit an alert budget (alerts that reach a CSM per
week), written as a patch of the rules file's `thresholds:` maps for review.
"""

from __future__ import annotations

import difflib
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

import yaml

from churnwatch.core.alerts import RuleState, evaluate_score
from churnwatch.core.rules import CATCH_ALL_SEGMENT, RulesFile, ScoreRule, parse_rules, route
from churnwatch.replay.evaluation import AlertLog, ChurnTruth, evaluate

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO: Final = timedelta(microseconds=1)
GRID: Final = tuple(float(t) for t in range(5, 100, 5))
"""Thresholds tried for every rule (those that leave room for the margin), plus its own."""

BudgetCounts = Literal["csm_task", "all"]


def _micros(at: datetime) -> int:
    return (at - _EPOCH) // _MICRO


def _at(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


class Trajectories:
    """Every scoring of every customer, in the replay's order: time, score and segment."""

    def __init__(self) -> None:
        self._at: dict[str, array[int]] = {}
        self._score: dict[str, array[float]] = {}
        self._segment: dict[str, array[int]] = {}
        self._low: dict[str, float] = {}
        self.segments: list[str] = []
        self._segment_index: dict[str, int] = {}
        self.points = 0

    def add(self, customer_id: str, at: datetime, score: float, segment: str) -> None:
        index = self._segment_index.get(segment)
        if index is None:
            index = self._segment_index[segment] = len(self.segments)
            self.segments.append(segment)
        ats = self._at.get(customer_id)
        if ats is None:
            ats = self._at[customer_id] = array("q")
            self._score[customer_id] = array("d")
            self._segment[customer_id] = array("H")
            self._low[customer_id] = score
        ats.append(_micros(at))
        self._score[customer_id].append(score)
        self._segment[customer_id].append(index)
        if score < self._low[customer_id]:
            self._low[customer_id] = score
        self.points += 1

    def customers(self) -> Iterable[str]:
        return self._at.keys()

    def lowest(self, customer_id: str) -> float:
        return self._low[customer_id]

    def of(self, customer_id: str) -> tuple[array[int], array[float], array[int]]:
        return self._at[customer_id], self._score[customer_id], self._segment[customer_id]


@dataclass(frozen=True, slots=True)
class SimulatedAlert:
    customer_id: str
    at: datetime
    segment: str


def simulate_rule(
    trajectories: Trajectories,
    rule: ScoreRule,
    thresholds: Mapping[str, float],
    rules: RulesFile,
) -> list[SimulatedAlert]:
    """
    The alerts `rule` would have sent with these thresholds, from the recorded scores.

    Args:
        trajectories: the recorded scorings.
        rule: the score rule (its margin, cooldown and severity are kept).
        thresholds: segment -> threshold, with a `default` entry.
        rules: the rules file the rule belongs to.

    Returns:
        The alerts in customer order, then time.
    """
    variant = rule.model_copy(update={"thresholds": dict(thresholds)})
    alone = rules.model_copy(update={"score_rules": (variant,)})
    per_index = [variant.threshold_for(s) for s in trajectories.segments]
    highest = max(per_index, default=0.0)
    margin = rule.margin
    out: list[SimulatedAlert] = []
    for customer_id in trajectories.customers():
        if trajectories.lowest(customer_id) >= highest:
            continue  # never below any threshold: armed all along, nothing fires
        ats, scores, segments = trajectories.of(customer_id)
        states: dict[str, RuleState] = {}
        armed = True
        for k, score in enumerate(scores):
            threshold = per_index[segments[k]]
            # The cases in which evaluate_score changes nothing, skipped for speed.
            if armed:
                if score >= threshold:
                    continue
            elif score <= threshold + margin:
                continue
            segment = trajectories.segments[segments[k]]
            changed, decisions = evaluate_score(
                states, score=score, segment=segment, at=_at(ats[k]), rules=alone
            )
            states.update(changed)
            armed = states[rule.name].armed if rule.name in states else True
            out.extend(SimulatedAlert(customer_id, d.decided_at, segment) for d in decisions)
    return out


@dataclass(frozen=True, slots=True)
class SweepPoint:
    """One rule at one threshold, over one segment (or `all`)."""

    rule: str
    segment: str
    threshold: float
    alerts: int
    alerts_per_week: float
    budget_per_week: float
    """Alerts per week that count against the budget (those routed to a CSM, or all)."""
    customers_alerted: int
    timely: int
    precision: float | None
    recall: float | None
    lead_days_p50: float | None


@dataclass(frozen=True, slots=True)
class Proposal:
    """Per-segment thresholds for one rule that fit the budget, checked by recomputation."""

    rule: str
    thresholds: dict[str, float]
    current: dict[str, float]
    feasible: bool
    note: str
    check: SweepPoint
    """The proposed thresholds recomputed together (not a sum of per-segment estimates)."""


@dataclass(frozen=True, slots=True)
class RuleSweep:
    rule: str
    margin: float
    cooldown_days: float
    current: dict[str, float]
    points: tuple[SweepPoint, ...]
    reproduced: int
    """Real alerts of the rule that the recomputation at its own thresholds gives back."""
    actual: int
    """Real alerts of the rule in the replay."""
    recomputed: int
    """Alerts the recomputation at the rule's own thresholds gives."""
    proposal: Proposal


@dataclass(frozen=True, slots=True)
class Budget:
    csms: int
    alerts_per_csm: float
    counts: BudgetCounts

    @property
    def per_week(self) -> float:
        return self.csms * self.alerts_per_csm


@dataclass(frozen=True, slots=True)
class SweepResult:
    budget: Budget
    weeks: float
    other_per_week: float
    """Alerts per week of the other rules that count against the budget (from the replay)."""
    rules: tuple[RuleSweep, ...]
    patch_yaml: str
    patch_diff: str
    segments: tuple[str, ...] = field(default=())


def _point(
    rule: ScoreRule,
    segment: str,
    threshold: float,
    alerts: Sequence[SimulatedAlert],
    *,
    counted: set[str],
    truths: Mapping[str, ChurnTruth],
    horizon: timedelta,
    seen: Iterable[str],
    weeks: float,
) -> SweepPoint:
    log = AlertLog()
    for alert in alerts:
        log.add(alert.customer_id, rule.name, "", alert.at)
    ev = evaluate(log, truths, horizon=horizon, seen=seen)
    in_budget = sum(1 for a in alerts if a.segment in counted)
    return SweepPoint(
        rule=rule.name,
        segment=segment,
        threshold=threshold,
        alerts=len(alerts),
        alerts_per_week=len(alerts) / weeks,
        budget_per_week=in_budget / weeks,
        customers_alerted=ev.alerted,
        timely=ev.timely,
        precision=ev.precision,
        recall=ev.recall,
        lead_days_p50=ev.lead_days_p50,
    )


def _counted_segments(
    rule: ScoreRule, rules: RulesFile, segments: Iterable[str], counts: BudgetCounts
) -> set[str]:
    """The segments whose alerts of this rule count against the budget."""
    if counts == "all":
        return set(segments)
    return {
        s
        for s in segments
        if route(rules, segment=s, severity=rule.severity, rule=rule.name) == "csm_task"
    }


def _solve(
    curves: Mapping[str, Sequence[SweepPoint]], room: float, counted: set[str]
) -> tuple[dict[str, int], bool]:
    """
    Per budgeted segment, the index into its curve (thresholds ascending): the most churners
    alerted in time whose budgeted volume fits `room`. Greedy: from the lowest thresholds, take
    the jump up (in any segment, by any number of steps) with the most churners gained per
    budgeted alert, while one fits. False when even the lowest thresholds do not fit.
    """
    choice = {s: 0 for s in curves if s in counted}
    used = sum(curves[s][0].budget_per_week for s in choice)
    if used > room:
        return choice, False
    while True:
        best: tuple[float, float, str, int] | None = None
        for s, i in choice.items():
            here = curves[s][i]
            for j in range(i + 1, len(curves[s])):
                there = curves[s][j]
                gain = there.timely - here.timely
                cost = there.budget_per_week - here.budget_per_week
                if gain <= 0 or used + cost > room:
                    continue
                ratio = gain / cost if cost > 0 else float("inf")
                key = (ratio, -cost, s, j)
                if best is None or key[:2] > best[:2]:
                    best = key
        if best is None:
            return choice, True
        _, _, s, j = best
        used += curves[s][j].budget_per_week - curves[s][choice[s]].budget_per_week
        choice[s] = j


def sweep_rules(
    trajectories: Trajectories,
    rules: RulesFile,
    *,
    truths: Mapping[str, ChurnTruth],
    horizon: timedelta,
    seen: Iterable[str],
    weeks: float,
    budget: Budget,
    other_per_week: Mapping[str, float],
    actual_alerts: Mapping[str, set[tuple[str, datetime]]],
    rules_text: str,
    rules_source: str,
    grid: Sequence[float] = GRID,
) -> SweepResult:
    """
    Sweep every score rule and propose thresholds for the budget.

    Args:
        trajectories: the recorded scorings of the replay.
        rules: the rules the replay ran with.
        truths: per customer, what happened (for precision, recall and lead time).
        horizon: the label horizon H.
        seen: the customers of the replay.
        weeks: the length of the history in weeks (volumes are per week).
        budget: the CSMs, their alerts a week, and which alerts count.
        other_per_week: per rule, the real alerts per week that count against the budget.
        actual_alerts: per rule, the (customer, time) of its real alerts.
        rules_text: the rules file's text, for the patch.
        rules_source: its name, for the patch.
        grid: the thresholds to try.
    """
    population = set(seen)
    segments = tuple(s.name for s in rules.segments)
    weeks = max(weeks, 1e-9)
    sweeps: list[RuleSweep] = []
    proposals: dict[str, dict[str, float]] = {}
    score_names = {r.name for r in rules.score_rules}
    other_total = sum(v for k, v in other_per_week.items() if k not in score_names)
    for rule in rules.score_rules:
        counted = _counted_segments(rule, rules, segments, budget.counts)
        current = dict(rule.thresholds)
        tried = sorted({t for t in grid if t + rule.margin <= 100} | set(current.values()))
        points: list[SweepPoint] = []
        curves: dict[str, list[SweepPoint]] = {s: [] for s in segments}

        def point(segment: str, t: float, alerts: Sequence[SimulatedAlert]) -> SweepPoint:
            return _point(
                rule,  # noqa: B023 (called within this iteration only)
                segment,
                t,
                alerts,
                counted=counted,  # noqa: B023
                truths=truths,
                horizon=horizon,
                seen=population,
                weeks=weeks,
            )

        for t in tried:
            uniform = {**dict.fromkeys(segments, t), CATCH_ALL_SEGMENT: t}
            alerts = simulate_rule(trajectories, rule, uniform, rules)
            points.append(point("all", t, alerts))
            for s in segments:
                curves[s].append(point(s, t, [a for a in alerts if a.segment == s]))
                points.append(curves[s][-1])
        at_current = simulate_rule(trajectories, rule, current, rules)
        real = actual_alerts.get(rule.name, set())
        recomputed = {(a.customer_id, a.at) for a in at_current}
        room = budget.per_week - other_total
        choice, feasible = _solve(curves, room, counted)

        def propose(choice: Mapping[str, int]) -> tuple[dict[str, float], SweepPoint]:
            proposed = {s: curves[s][i].threshold for s, i in choice.items()}  # noqa: B023
            for s in segments:
                proposed.setdefault(s, rule.threshold_for(s))  # noqa: B023
            proposed[CATCH_ALL_SEGMENT] = rule.thresholds[CATCH_ALL_SEGMENT]  # noqa: B023
            alerts = simulate_rule(trajectories, rule, proposed, rules)  # noqa: B023
            return proposed, point("all", float("nan"), alerts)

        proposed, check = propose(choice)
        # The segments' curves were solved one by one; recomputed together (a customer that
        # changes segment, one cooldown across segments) the volume can come out higher. Step
        # the segment with the most budgeted alerts down until the recomputation fits.
        while feasible and counted and check.budget_per_week > room:
            raised = [s for s, i in choice.items() if i > 0]
            if not raised:
                feasible = False
                break
            top = max(raised, key=lambda s: (curves[s][choice[s]].budget_per_week, s))
            choice = {**choice, top: choice[top] - 1}
            proposed, check = propose(choice)
        if not counted:
            note = (
                f"none of {rule.name}'s alerts count against the budget (routed to email): "
                "thresholds left as they are"
            )
            proposed = current
        elif feasible:
            total = other_total + check.budget_per_week
            note = (
                f"{total:.1f} budgeted alerts a week with these thresholds "
                f"({other_total:.1f} from other rules), within {budget.per_week:g}"
            )
        else:
            note = (
                f"the budget of {budget.per_week:g} a week cannot be met: the other rules "
                f"already send {other_total:.1f} a week; the lowest thresholds tried are proposed"
            )
        proposal = Proposal(rule.name, proposed, current, feasible or not counted, note, check)
        proposals[rule.name] = proposed
        sweeps.append(
            RuleSweep(
                rule=rule.name,
                margin=rule.margin,
                cooldown_days=rule.cooldown_days,
                current=current,
                points=tuple(points),
                reproduced=len(real & recomputed),
                actual=len(real),
                recomputed=len(recomputed),
                proposal=proposal,
            )
        )
    snippet, diff = thresholds_patch(rules_text, rules_source, proposals, budget=budget)
    return SweepResult(budget, weeks, other_total, tuple(sweeps), snippet, diff, segments)


def _fmt(value: float) -> str:
    return f"{value:g}"


def _flow(thresholds: Mapping[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in thresholds.items()) + "}"


def thresholds_patch(
    text: str,
    source: str,
    proposals: Mapping[str, Mapping[str, float]],
    *,
    budget: Budget,
) -> tuple[str, str]:
    """
    The proposed `thresholds:` maps as a YAML snippet, and as a unified diff of the rules file
    (values edited in place, comments and layout kept; the result is validated).

    Returns:
        (snippet, diff); the diff is empty when nothing changes.
    """
    lines = [
        f"# churnwatch backtest: score-rule thresholds for a budget of {budget.per_week:g} "
        f"alerts a week ({budget.csms} CSMs x {budget.alerts_per_csm:g}, counting "
        f"{'alerts routed to csm_task' if budget.counts == 'csm_task' else 'every alert'})",
        "score_rules:",
    ]
    for name, thresholds in proposals.items():
        lines.append(f"  - name: {name}")
        lines.append(f"    thresholds: {_flow(thresholds)}")
    snippet = "\n".join(lines) + "\n"
    if not text.strip():
        return snippet, ""
    edits: list[tuple[int, int, str]] = []
    root = yaml.compose(text)
    for item in _score_rule_nodes(root):
        rule_name = _scalar(item, "name")
        if rule_name is None or rule_name not in proposals:
            continue
        node = _value(item, "thresholds")
        if not isinstance(node, yaml.MappingNode):
            continue
        wanted = dict(proposals[rule_name])
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value in wanted:
                edits.append(
                    (value.start_mark.index, value.end_mark.index, _fmt(wanted.pop(key.value)))
                )
        if wanted and node.value:
            last_key, last_value = node.value[-1]
            if node.flow_style:
                extra = "".join(f", {k}: {_fmt(v)}" for k, v in wanted.items())
                edits.append((last_value.end_mark.index, last_value.end_mark.index, extra))
            else:
                indent = " " * last_key.start_mark.column
                extra = "".join(f"\n{indent}{k}: {_fmt(v)}" for k, v in wanted.items())
                edits.append((last_value.end_mark.index, last_value.end_mark.index, extra))
    new = text
    for start, end, replacement in sorted(edits, reverse=True):
        new = new[:start] + replacement + new[end:]
    parse_rules(new, source=f"{source} (proposed)")
    diff = "".join(
        difflib.unified_diff(
            text.splitlines(keepends=True),
            new.splitlines(keepends=True),
            fromfile=source,
            tofile=f"{source} (proposed)",
        )
    )
    return snippet, diff


def _value(node: yaml.Node, key: str) -> yaml.Node | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    for k, v in node.value:
        if isinstance(k, yaml.ScalarNode) and k.value == key:
            found: yaml.Node = v
            return found
    return None


def _scalar(node: yaml.Node, key: str) -> str | None:
    value = _value(node, key)
    return value.value if isinstance(value, yaml.ScalarNode) else None


def _score_rule_nodes(root: yaml.Node | None) -> list[yaml.Node]:
    if root is None:
        return []
    seq = _value(root, "score_rules")
    return list(seq.value) if isinstance(seq, yaml.SequenceNode) else []


def lead_days(
    log: AlertLog, truths: Mapping[str, ChurnTruth], *, horizon: timedelta, seen: Iterable[str]
) -> list[float]:
    """
    Every churner's lead time in days, as `replay.evaluation.evaluate` defines it (the time
    from the first timely alert to the moment the customer is lost); for the histogram.
    """
    out: list[float] = []
    for customer_id in set(seen) & set(truths):
        truth = truths[customer_id]
        if not truth.churned or truth.churn_at is None:
            continue
        lost_at = truth.churn_at if truth.cancelled else truth.churn_at + horizon
        start = truth.churn_at - horizon
        times = [t for t in log.times_by_customer.get(customer_id, ()) if start <= t <= lost_at]
        if times:
            out.append((lost_at - min(times)) / timedelta(days=1))
    return sorted(out)
