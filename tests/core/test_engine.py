"""
The per-customer step: dedup, scoring, the sweep in event time, labels and alerts.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from churnwatch.core import state as st
from churnwatch.core.engine import (
    EngineConfig,
    Policy,
    StepResult,
    next_due_at,
    process_event,
    sweep_one,
)
from churnwatch.core.events import Event, LoginEvent, PurchaseEvent, TicketEvent
from churnwatch.core.features import FEATURE_NAMES
from churnwatch.core.model import ModelConfig, Scorer
from churnwatch.core.rules import PRIOR_INPUT, LabelRules, ModelRules, default_rules, prior_logit

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = Policy.build(default_rules(), EngineConfig())
MODEL = Scorer()


def model_for(_: datetime) -> Scorer:
    return MODEL


def at(day: float) -> datetime:
    return T0 + timedelta(days=day)


def login(day: float, n: int = 0, customer: str = "c1") -> LoginEvent:
    return LoginEvent(event_id=f"l{day}-{n}", type="login", customer_id=customer, ts=at(day))


def purchase(day: float, amount: float = 50.0) -> PurchaseEvent:
    return PurchaseEvent(
        event_id=f"p{day}",
        type="purchase",
        customer_id="c1",
        ts=at(day),
        amount=amount,
        currency="EUR",
        order_id=f"o{day}",
    )


def run(events: list[Event]) -> tuple[st.CustomerState, list[StepResult]]:
    state = None
    steps = []
    for event in events:
        step = process_event(
            state,
            event,
            watermark=event.ts - timedelta(hours=1),
            model_for=model_for,
            policy=POLICY,
        )
        steps.append(step)
        state = step.state
    assert state is not None
    return state, steps


def active_history(days: int = 30) -> list[Event]:
    return [login(d) for d in range(days)] + [purchase(d + 0.5) for d in range(0, days, 7)]


def sorted_events(events: list[Event]) -> list[Event]:
    return sorted(events, key=lambda e: e.ts)


def test_a_redelivered_event_changes_nothing() -> None:
    """
    The same event_id twice: the second is a duplicate and the state stays as it was.
    """
    state, _ = run([login(0), login(1)])
    again = process_event(state, login(1), watermark=at(1), model_for=model_for, policy=POLICY)
    assert "duplicate" == again.outcome
    assert state == again.state
    assert () == again.alerts


def test_an_active_customer_scores_healthy_and_raises_no_alert() -> None:
    """
    Daily logins and weekly purchases keep the score high and quiet.
    """
    state, steps = run(sorted_events(active_history()))
    assert state.score is not None
    assert state.score > 60
    assert [] == [a for s in steps for a in s.alerts]


def test_the_sweep_fires_inactivity_at_its_own_time() -> None:
    """
    Silent after day 29, the customer gets gone_quiet decided at day 50, whenever the sweep runs.
    """
    state, _ = run(sorted_events(active_history()))
    result = sweep_one(state, until=at(80), model_for=model_for, policy=POLICY)
    quiet = [a for a in result.alerts if a.rule == "gone_quiet"]
    assert 1 == len(quiet)
    assert at(29 + 21) == quiet[0].event_ts == quiet[0].emitted_at
    assert quiet[0].reasons, "every alert is explained"


def test_the_sweep_does_not_depend_on_how_often_it_runs() -> None:
    """
    One sweep to day 80 and a sweep every few hours to day 80 give the same state and alerts.
    """
    state, _ = run(sorted_events(active_history()))
    once = sweep_one(state, until=at(80), model_for=model_for, policy=POLICY)
    stepped = state
    alerts = []
    examples = []
    t = at(29)
    while t < at(80):
        t = min(t + timedelta(hours=7), at(80))
        r = sweep_one(stepped, until=t, model_for=model_for, policy=POLICY)
        stepped = r.state
        alerts += r.alerts
        examples += r.examples
    assert once.state == stepped
    assert list(once.alerts) == alerts
    assert list(once.examples) == examples


def test_silence_past_the_horizon_gives_positive_examples() -> None:
    """
    Thirty days of silence after the last event turn the pending snapshots into churn labels.
    """
    state, _ = run(sorted_events(active_history()))
    result = sweep_one(state, until=at(29 + 31), model_for=model_for, policy=POLICY)
    assert result.examples
    assert all(e.churned for e in result.examples)
    assert all(e.resolved_at <= at(60) for e in result.examples)


def test_a_late_event_catches_up_the_silence_first() -> None:
    """
    An event after a long silence first lets the sweep decide what the silence meant.
    """
    state, _ = run(sorted_events(active_history()))
    back = process_event(state, login(70), watermark=at(70), model_for=model_for, policy=POLICY)
    assert "gone_quiet" in [a.rule for a in back.alerts]
    assert any(e.churned for e in back.examples)
    assert at(70) == back.state.last_activity_at


def test_periodic_samples_become_negative_examples() -> None:
    """
    A steadily active customer yields negative examples, about one per week.
    """
    _, steps = run(sorted_events(active_history(60)))
    examples = [e for s in steps for e in s.examples]
    assert 6 <= len(examples) <= 9
    assert not any(e.churned for e in examples)


def test_urgent_ticket_alert_is_explained_and_routed() -> None:
    """
    An open urgent ticket raises urgent_ticket with a route and reasons.
    """
    events: list[Event] = sorted_events(active_history(20))
    events.append(
        TicketEvent(
            event_id="t1",
            type="ticket",
            customer_id="c1",
            ts=at(20.2),
            ticket_id="k1",
            severity="urgent",
            status="open",
        )
    )
    _, steps = run(events)
    alerts = steps[-1].alerts
    assert ["urgent_ticket"] == [a.rule for a in alerts]
    assert alerts[0].action in ("email", "csm_task")
    assert POLICY.rules_version == alerts[0].rules_version
    assert MODEL.version == alerts[0].model_version


def test_state_round_trips_through_a_flat_dict() -> None:
    """
    After scoring, sweeping and alerting, the state survives to_dict/from_dict unchanged.
    """
    state, _ = run(sorted_events(active_history()))
    state = sweep_one(state, until=at(55), model_for=model_for, policy=POLICY).state
    flat = st.to_dict(state)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in flat.items())
    assert state == st.from_dict(flat)


def test_next_due_is_the_first_silence_checkpoint() -> None:
    """
    After the last event, the sweep's next work is at the first silence checkpoint.
    """
    state, _ = run(sorted_events(active_history()))
    assert at(29 + 7) == next_due_at(state, POLICY)


def test_a_labels_section_sets_the_silence_checkpoints_and_skips_lost_customers() -> None:
    """
    With `labels` in the rules, the sweep takes snapshots at its checkpoints (3 and 40 days)
    instead of the engine's, resolves them after max(H, k x gap) of silence in all, and takes
    none once the silence is that long already.
    """
    rules = default_rules().model_copy(
        update={"labels": LabelRules(gap_multiple=1.0, silence_checkpoints_days=(3.0, 40.0))}
    )
    policy = Policy.build(rules, EngineConfig())
    state = None
    for event in sorted_events(active_history()):
        step = process_event(state, event, watermark=event.ts, model_for=model_for, policy=policy)
        state = step.state
    assert state is not None
    assert at(29 + 3) == next_due_at(state, policy)
    step = sweep_one(state, until=at(29 + 41), model_for=model_for, policy=policy)
    # Silent since day 29, buying every 7 days: lost after max(30, 1 x 7) = 30 days, on day 59,
    # when the last event's snapshot and the one 3 days into the silence both resolve positive;
    # at 40 days into the silence the customer is lost already, and no snapshot is taken.
    examples = [(e.taken_at, e.resolved_at, e.churned) for e in step.examples]
    assert [(at(29), at(59), True), (at(32), at(59), True)] == examples
    assert () == step.state.pending


def test_a_model_section_gives_the_model_the_prior_and_its_learning_rate() -> None:
    """
    With `model: {prior_input: true, learning_rate: 0.002}` every vector (scoring and training
    snapshots) carries the prior's logit besides the features, and the policy's model learns
    at 0.002 with the engine's other settings; without the section neither changes.
    """
    rules = default_rules().model_copy(
        update={"model": ModelRules(prior_input=True, learning_rate=0.002)}
    )
    config = EngineConfig(model=ModelConfig(l2=0.005, min_labels=7))
    policy = Policy.build(rules, config)
    assert ModelConfig(learning_rate=0.002, l2=0.005, min_labels=7) == policy.config.model
    assert config == Policy.build(default_rules(), config).config
    state = None
    for event in sorted_events(active_history()):
        step = process_event(state, event, watermark=event.ts, model_for=model_for, policy=policy)
        state = step.state
        assert step.scoring is not None
        expected = prior_logit(step.scoring.prior_probability)
        assert all(expected == s.x[PRIOR_INPUT] for s in state.pending if s.taken_at == event.ts)
    assert state is not None
    step = sweep_one(state, until=at(29 + 60), model_for=model_for, policy=policy)
    assert step.examples
    assert all((*FEATURE_NAMES, PRIOR_INPUT) == tuple(e.x) for e in step.examples)
    _, steps = run(sorted_events(active_history()))
    assert all(tuple(FEATURE_NAMES) == tuple(s.x) for s in steps[-1].state.pending)


def test_a_step_carries_its_states_next_due_time_and_takes_it_back() -> None:
    """
    A step's `due_at` is `next_due_at` of its new state; passed back, the same step follows.
    """
    state = None
    due: datetime | None = None
    for event in sorted_events(active_history()):
        watermark = event.ts - timedelta(hours=1)
        step = process_event(state, event, watermark=watermark, model_for=model_for, policy=POLICY)
        if state is not None:
            told = process_event(
                state, event, watermark=watermark, model_for=model_for, policy=POLICY, due_at=due
            )
            assert step == told
        assert next_due_at(step.state, POLICY) == step.due_at
        state, due = step.state, step.due_at
    assert state is not None
    swept = sweep_one(state, until=at(80), model_for=model_for, policy=POLICY)
    told = sweep_one(state, until=at(80), model_for=model_for, policy=POLICY, due_at=due)
    assert swept == told
    assert next_due_at(swept.state, POLICY) == swept.due_at
