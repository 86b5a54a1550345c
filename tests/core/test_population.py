"""
What the learner knows of the population: evidence per cohort (cold start by evidence) and the
gaps between activities (the learned label horizon), and how the engine uses them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from churnwatch.core import state as st
from churnwatch.core.engine import EngineConfig, Policy, Scoring, process_event
from churnwatch.core.events import LoginEvent
from churnwatch.core.features import FEATURE_NAMES, empty_features, from_dict, to_dict, update_one
from churnwatch.core.labels import Snapshot, resolve_on_activity, resolve_on_silence
from churnwatch.core.model import Scorer
from churnwatch.core.population import MAX_HORIZON_DAYS, MIN_GAPS, Population, cohort_of
from churnwatch.core.rules import LabelRules, default_rules
from churnwatch.replay.backtest import regime_note, replay_as_of
from churnwatch.sim import Regime
from churnwatch.sim.simulator import SimConfig, Simulation

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def x_of(**values: float) -> dict[str, float]:
    x = dict.fromkeys(FEATURE_NAMES, 0.0)
    x.update(values)
    return x


def gap_example(gap: float) -> dict[str, float]:
    """The features of a snapshot taken at an activity that ended a gap of `gap` days."""
    return x_of(last_gap_days=gap, days_since_event=0.0, event_count=3.0, tenure_days=40.0)


@pytest.mark.parametrize(
    ("events", "tenure", "expected"),
    [
        (1, 0.0, 0),
        (1, 6.9, 0),
        (1, 7.0, 1),
        (1, 200.0, 2),
        (2, 200.0, 5),
        (4, 10.0, 7),
        (5, 10.0, 10),
        (17, 400.0, 17),
        (1000, 400.0, 17),
    ],
)
def test_cohorts_bucket_event_count_and_tenure(events: int, tenure: float, expected: int) -> None:
    """
    A cohort is the bucket of the event count (1, 2, 3-4, 5-8, 9-16, 17+) times three tenure
    buckets (under 7 days, under 30, a month or more).
    """
    assert expected == cohort_of(x_of(event_count=float(events), tenure_days=tenure))


def test_the_horizon_is_the_ninetieth_percentile_of_the_gaps_rounded_up() -> None:
    """
    With 100 gaps of 1..100 days, H is about 90 days (within the 9% width of a log bucket),
    a whole number of days; below MIN_GAPS gaps it is the floor.
    """
    population = Population()
    for gap in range(1, MIN_GAPS):
        population.observe(gap_example(float(gap)))
    assert 30.0 == population.horizon_days(30.0)
    assert population.gap_quantile() is None
    population.observe(gap_example(100.0))
    days = population.horizon_days(30.0)
    assert days == int(days)
    assert 86.0 <= days <= 95.0


def test_the_horizon_stays_within_the_floor_and_a_year() -> None:
    """
    Short gaps (a daily app) give the floor; gaps of years give MAX_HORIZON_DAYS.
    """
    daily, yearly = Population(), Population()
    for _ in range(MIN_GAPS):
        daily.observe(gap_example(1.0))
        yearly.observe(gap_example(900.0))
    assert 30.0 == daily.horizon_days(30.0)
    assert 7.0 == daily.horizon_days(7.0)
    assert MAX_HORIZON_DAYS == yearly.horizon_days(30.0)


def test_only_snapshots_taken_at_an_activity_count_their_gap() -> None:
    """
    A snapshot taken in a silence (days_since_event > 0) or without a gap (a first event)
    counts as evidence for its cohort but adds no gap.
    """
    population = Population()
    population.observe(x_of(last_gap_days=20.0, days_since_event=14.0, event_count=3.0))
    population.observe(x_of(last_gap_days=0.0, days_since_event=0.0, event_count=1.0))
    assert 0 == population.gaps
    assert 1 == population.evidence(x_of(event_count=3.0))
    assert 1 == population.evidence(x_of(event_count=1.0))
    assert 0 == population.evidence(x_of(event_count=9.0))


def test_the_counts_travel_in_the_checkpoint() -> None:
    """
    A scorer's checkpoint and its copy carry the counts; a copy learns on its own; a checkpoint
    written before the counts existed reads as empty.
    """
    scorer = Scorer()
    for gap in range(1, 2 * MIN_GAPS):
        scorer.learn_one(gap_example(float(gap % 50 + 1)), gap % 3 == 0)
    restored = Scorer.from_bytes(scorer.to_bytes())
    assert scorer.population == restored.population
    assert scorer.horizon_days(10.0) == restored.horizon_days(10.0)
    twin = scorer.copy()
    twin.learn_one(gap_example(3.0), True)
    assert twin.population != scorer.population
    assert Population() == Population.from_state(None)
    with pytest.raises(ValueError, match="gap buckets"):
        Population.from_state({"evidence": [], "gaps": [1, 2]})


def test_a_snapshot_resolves_by_its_own_horizon() -> None:
    """
    A snapshot taken with a 90-day horizon is still pending after 60 quiet days and turns
    negative at activity on day 80, where the caller's 30 days would have called it churn.
    """
    snap = Snapshot(T0, "sample", x_of(), timedelta(days=90))
    pending, resolved = resolve_on_silence(
        "c1", (snap,), watermark=T0 + timedelta(days=60), horizon=timedelta(days=30)
    )
    assert ((snap,), []) == (pending, resolved)
    _, (example,) = resolve_on_activity(
        "c1", (snap,), at=T0 + timedelta(days=80), horizon=timedelta(days=30)
    )
    assert example.churned is False


def test_a_snapshot_round_trips_with_its_horizon_and_old_rows_read_without() -> None:
    """
    The stored state keeps each snapshot's horizon; a row written before it had one reads as
    None (the caller's H).
    """
    snap = Snapshot(T0, "sample", x_of(), timedelta(days=93))
    state = st.CustomerState("c1", pending=(snap,))
    assert state == st.from_dict(st.to_dict(state))
    old = st.to_dict(st.CustomerState("c1", pending=(Snapshot(T0, "event", x_of()),)))
    assert None is st.from_dict(old).pending[0].horizon


def test_features_written_before_prev_day_read_back() -> None:
    """
    A stored feature hash without `f.prev_day` (written before it existed) reads with no
    previous activity.
    """
    event = LoginEvent(event_id="e1", type="login", customer_id="c1", ts=T0)
    features = update_one(empty_features(), event)
    data = to_dict(features)
    del data["f.prev_day"]
    assert features == from_dict(data)


class _Model:
    """A model with a fixed prediction and evidence for one cohort only."""

    version = "fixed-1"
    n_labels = 10_000

    def __init__(self, cohort: int, horizon: float = 55.0) -> None:
        self.cohort = cohort
        self.horizon = horizon

    def evidence(self, x: dict[str, float]) -> int:
        return 10_000 if cohort_of(x) == self.cohort else 0

    def horizon_days(self, floor_days: float) -> float:
        return max(self.horizon, floor_days)

    def predict_one(self, x: dict[str, float]) -> float:
        return 0.9

    def score_one(self, x: dict[str, float]) -> float:
        return 0.9

    def contributions(self, x: dict[str, float]) -> dict[str, float]:
        return dict.fromkeys(x, 0.0)

    def explain_one(self, x: dict[str, float]) -> tuple[float, dict[str, float]]:
        return 0.9, self.contributions(x)


def _first_login(model: _Model, policy: Policy) -> tuple[float, Scoring, Snapshot]:
    event = LoginEvent(event_id="e1", type="login", customer_id="c1", ts=T0)
    step = process_event(
        None, event, watermark=T0 - timedelta(hours=1), model_for=lambda _: model, policy=policy
    )
    assert step.scoring is not None
    return step.scoring.model_weight, step.scoring, step.state.pending[-1]


def test_the_model_weight_follows_the_evidence_for_the_customers_cohort() -> None:
    """
    A first-day customer (onboarding by the rules) gets the model's full weight when the model
    learned much of its cohort, and none when it learned only of another cohort.
    """
    policy = Policy.build(default_rules(), EngineConfig())
    new = cohort_of(x_of(event_count=1.0, tenure_days=0.0))
    weight, scoring, _ = _first_login(_Model(new), policy)
    assert scoring.onboarding
    assert weight > 0.95
    expected = (1.0 - weight) * scoring.prior_probability + weight * 0.9
    assert expected == scoring.churn_probability
    weight, _, _ = _first_login(_Model(new + 1), policy)
    assert 0.0 == weight


def test_a_snapshot_takes_the_horizon_in_force_unless_the_rules_fix_it() -> None:
    """
    The engine's snapshot carries the model's learned horizon (at least the config's H); a rules
    file's `labels.horizon_days` fixes it, and so does `learn_horizon=False`.
    """
    learned = Policy.build(default_rules(), EngineConfig())
    assert timedelta(days=55) == _first_login(_Model(0), learned)[2].horizon
    rules = default_rules().model_copy(update={"labels": LabelRules(horizon_days=12.0)})
    assert timedelta(days=12) == _first_login(_Model(0), Policy.build(rules))[2].horizon
    fixed = Policy.build(default_rules(), EngineConfig(learn_horizon=False))
    assert timedelta(days=30) == _first_login(_Model(0), fixed)[2].horizon


@pytest.mark.parametrize(
    ("regime", "customers", "days", "kind", "learned"),
    [
        ("shop", 1000, 365, "purchases without logins (a shop)", True),
        ("subscription", 500, 120, "logins (an app or a subscription)", False),
        ("b2b", 30, 120, "logins (an app or a subscription)", False),
    ],
)
def test_each_regime_gets_a_horizon_that_fits_its_rhythm(
    regime: Regime, customers: int, days: int, kind: str, *, learned: bool
) -> None:
    """
    With the default rules, a simulated shop (customers buy once or twice a year) learns a
    label horizon longer than 30 days; a daily app and a B2B product with heavy accounts keep
    the 30-day floor; the replay names each kind of history.
    """
    sim = Simulation(SimConfig(customers=customers, days=days, seed=7, regime=regime))
    records = list(sim.records())
    end = T0 + timedelta(days=days)
    replay = replay_as_of(lambda: records, Policy.build(default_rules()), end)
    model = replay.model_for(end)
    horizon = model.horizon_days(30.0)
    note = regime_note(replay, end)
    assert kind in note
    if learned:
        assert 45.0 <= horizon <= 365.0, note
    else:
        assert 30.0 == horizon, note
        assert isinstance(model, Scorer)
        assert model.population.gaps >= MIN_GAPS


@pytest.mark.parametrize("field", ["[1, 2, 3]", '"text"', "7", "null"])
def test_a_state_field_that_is_not_a_json_object_is_a_value_error(field: str) -> None:
    """
    A stored state whose `s` field is JSON but not an object fails as every malformed state
    does (ValueError naming the field), not with an AttributeError.
    """
    with pytest.raises(ValueError, match="is not a JSON object"):
        st.from_dict({"s": field})
