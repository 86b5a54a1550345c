"""
The alert lifecycle: hysteresis, cooldown, event rules, inactivity, deterministic ids.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from churnwatch.core import alerts as al
from churnwatch.core.events import TicketEvent
from churnwatch.core.rules import parse_rules

# The tests' own rules, so that tuning the default file does not move these tables.
RULES = parse_rules(
    """
version: "test"
segments:
  - {name: enterprise, min_ltv: 2000}
  - {name: starter, min_ltv: 0}
prior: {base: 80, points: []}
onboarding: {max_tenure_days: 14, min_events: 5, base: 70, points: []}
score_rules:
  - name: low_engagement
    thresholds: {enterprise: 45, starter: 35, default: 35}
    margin: 10
    cooldown_days: 14
    severity: high
decline_rules:
  - {name: sharp_decline, drop: 25, within_days: 14, cooldown_days: 14, severity: medium}
  - {name: deep_decline, drop: 10, within_days: 14, below: 30, cooldown_days: 14, severity: high}
event_rules:
  - {name: return_after_purchase, event: return, severity: low, cooldown_days: 7}
  - name: urgent_ticket
    event: ticket
    where: {severity: [urgent], status: [open]}
    severity: medium
    cooldown_days: 7
  - name: ticket_burst
    event: ticket
    where: {status: [open]}
    count: 3
    within_days: 14
    severity: medium
    cooldown_days: 14
inactivity: {name: gone_quiet, days: 21, gap_multiple: 3.0, severity: high, cooldown_days: 30}
routing:
  - {when: {}, action: email}
""",
    source="<test_alerts>",
)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(day: float) -> datetime:
    return T0 + timedelta(days=day)


def run_scores(scores: list[tuple[float, float]], segment: str = "starter") -> list[float]:
    """Feed (day, score) pairs through the score rules; return the days an alert fired."""
    states: dict[str, al.RuleState] = {}
    fired = []
    for day, score in scores:
        changed, decisions = al.evaluate_score(
            states, score=score, segment=segment, at=at(day), rules=RULES
        )
        states.update(changed)
        fired += [day for _ in decisions]
    return fired


def test_score_rule_fires_once_below_threshold_and_rearms_above_margin() -> None:
    """
    Below 35 fires; staying low does not fire again; above 45 re-arms; below 35 fires again.
    """
    fired = run_scores([(0, 60), (1, 30), (2, 20), (3, 40), (20, 30), (21, 46), (40, 30)])
    assert [1, 40] == fired


def test_score_rule_respects_cooldown_after_rearming() -> None:
    """
    Re-armed within the cooldown, a new dip waits until the cooldown has passed.
    """
    fired = run_scores([(0, 30), (2, 60), (5, 30), (13, 30), (14, 30)])
    assert [0, 14] == fired


def test_threshold_depends_on_segment() -> None:
    """
    An enterprise customer at 42 is below its threshold of 45; a starter at 42 is not.
    """
    assert [0] == run_scores([(0, 42)], segment="enterprise")
    assert [] == run_scores([(0, 42)], segment="starter")
    assert [0] == run_scores([(0, 30)], segment="unheard-of")


def test_decline_rule_needs_the_drop_within_the_window() -> None:
    """
    A fall of 25 points against an anchor within 14 days fires; an older anchor does not.
    """
    _, decisions = al.evaluate_decline(
        {}, score=50, anchor_score=76, anchor_at=at(0), at=at(10), rules=RULES
    )
    assert ["sharp_decline"] == [d.rule for d in decisions]
    _, decisions = al.evaluate_decline(
        {}, score=50, anchor_score=76, anchor_at=at(0), at=at(15), rules=RULES
    )
    assert [] == decisions
    _, decisions = al.evaluate_decline(
        {}, score=52, anchor_score=76, anchor_at=at(0), at=at(10), rules=RULES
    )
    assert [] == decisions


def test_decline_rule_with_a_level_needs_the_score_below_it() -> None:
    """
    A fall of 12 points fires deep_decline only when it ends below 30.
    """
    _, decisions = al.evaluate_decline(
        {}, score=28, anchor_score=40, anchor_at=at(0), at=at(5), rules=RULES
    )
    assert ["deep_decline"] == [d.rule for d in decisions]
    _, decisions = al.evaluate_decline(
        {}, score=50, anchor_score=62, anchor_at=at(0), at=at(5), rules=RULES
    )
    assert [] == decisions


def ticket(day: float, severity: str = "urgent", status: str = "open", n: int = 0) -> TicketEvent:
    return TicketEvent(
        event_id=f"t{day}-{n}",
        type="ticket",
        customer_id="c",
        ts=at(day),
        ticket_id=f"k{day}-{n}",
        severity=severity,
        status=status,  # type: ignore[arg-type]
    )


def run_events(events: list[TicketEvent]) -> list[tuple[str, float]]:
    states: dict[str, al.RuleState] = {}
    out = []
    for event in events:
        changed, decisions = al.evaluate_event(states, event, rules=RULES)
        states.update(changed)
        out += [(d.rule, (d.decided_at - T0) / timedelta(days=1)) for d in decisions]
    return out


def test_urgent_ticket_rule_matches_its_where_clause() -> None:
    """
    An open urgent ticket fires urgent_ticket; a solved one or a normal one does not.
    """
    assert [("urgent_ticket", 0.0)] == run_events([ticket(0)])
    assert [] == run_events([ticket(0, status="solved")])
    assert [] == run_events([ticket(0, severity="normal")])


def test_ticket_burst_counts_within_its_window() -> None:
    """
    Three open tickets within 14 days fire ticket_burst; three spread over 30 days do not.
    """
    fired = run_events([ticket(0, "low"), ticket(5, "low"), ticket(9, "low")])
    assert [("ticket_burst", 9.0)] == fired
    assert [] == run_events([ticket(0, "low"), ticket(15, "low"), ticket(30, "low")])


def test_inactivity_fires_once_per_silence() -> None:
    """
    The inactivity rule fires once, re-arms on activity, and then honours its cooldown.
    """
    states: dict[str, al.RuleState] = {}
    changed, decisions = al.evaluate_inactivity(states, at=at(21), rules=RULES)
    states.update(changed)
    assert 1 == len(decisions)
    assert ({}, []) == al.evaluate_inactivity(states, at=at(22), rules=RULES)
    states.update(al.rearm_inactivity(states, rules=RULES))
    assert [] == al.evaluate_inactivity(states, at=at(40), rules=RULES)[1]
    assert 1 == len(al.evaluate_inactivity(states, at=at(52), rules=RULES)[1])


def test_inactivity_waits_for_the_customers_own_rhythm() -> None:
    """
    A customer who buys every 20 days is quiet enough after 3 x 20 = 60 days, not after 21.
    """
    due = al.inactivity_due_at(at(0), avg_purchase_gap_days=20.0, rules=RULES)
    assert at(60) == due
    assert at(21) == al.inactivity_due_at(at(0), avg_purchase_gap_days=2.0, rules=RULES)


def test_alert_ids_are_deterministic_and_distinct() -> None:
    """
    The same customer, rule and time give the same id; any difference gives another.
    """
    a = al.alert_id_for("c1", "low_engagement", at(3))
    assert a == al.alert_id_for("c1", "low_engagement", at(3))
    assert (
        len(
            {
                a,
                al.alert_id_for("c2", "low_engagement", at(3)),
                al.alert_id_for("c1", "sharp_decline", at(3)),
                al.alert_id_for("c1", "low_engagement", at(4)),
            }
        )
        == 4
    )


class ScoreLifecycle(RuleBasedStateMachine):
    """
    Random walks of a customer's score through the threshold rule.
    """

    def __init__(self) -> None:
        super().__init__()
        self.states: dict[str, al.RuleState] = {}
        self.day = 0.0
        self.fired: list[float] = []
        self.low_since_fire = False
        self.rearmed_since_fire = True

    @rule(score=st.floats(0, 100), step=st.floats(0.01, 10))
    def score(self, score: float, step: float) -> None:
        self.day += step
        changed, decisions = al.evaluate_score(
            self.states, score=score, segment="starter", at=at(self.day), rules=RULES
        )
        self.states.update(changed)
        if decisions:
            assert score < 35
            assert self.rearmed_since_fire, "fired again without rising above threshold + margin"
            self.fired.append(self.day)
            self.rearmed_since_fire = False
        elif score > 45:
            self.rearmed_since_fire = True

    @invariant()
    def never_twice_within_cooldown(self) -> None:
        gaps = [b - a for a, b in zip(self.fired, self.fired[1:], strict=False)]
        assert all(g >= 14 for g in gaps)


TestScoreLifecycle = ScoreLifecycle.TestCase
