"""
Explanations: factors add up to the change, come in plain words with numbers, largest first.
"""

from __future__ import annotations

import math
import re

from hypothesis import given
from hypothesis import strategies as st

from churnwatch.core import explain

NAMES = ["login_trend", "open_urgent_tickets", "return_rate", "days_since_event"]


def test_reasons_are_signed_shares_of_the_change() -> None:
    """
    The shares of all factors add up to the change; the top ones push in its direction.
    """
    before = {"login_trend": 0.01, "open_urgent_tickets": 0.0}
    now = {"login_trend": 0.10, "open_urgent_tickets": 0.06, "return_rate": 0.03}
    x = {"login_trend": 0.4, "open_urgent_tickets": 2.0, "return_rate": 1 / 30}
    items = explain.reasons(now, before, change=0.18, x=x, top=3)
    assert ["login_trend", "open_urgent_tickets", "return_rate"] == [r.factor for r in items]
    assert math.isclose(0.18, sum(r.contribution for r in items), abs_tol=1e-3)
    assert "logins down 60% vs. the 30-day average" == items[0].text
    assert "2 urgent tickets open" == items[1].text


def test_summary_reads_like_the_design() -> None:
    """
    The summary gives the change and each reason with its share.
    """
    now = {"login_trend": 0.09, "open_urgent_tickets": 0.06, "return_rate": 0.03}
    x = {"login_trend": 0.4, "open_urgent_tickets": 2.0, "return_rate": 1 / 30}
    items = explain.reasons(now, {}, change=0.18, x=x)
    expected = (
        "risk +0.18: logins down 60% vs. the 30-day average (+0.09), "
        "2 urgent tickets open (+0.06), 1.0 returns a month lately (+0.03)"
    )
    assert expected == explain.summary(0.18, items, level=0.4)


@given(
    now=st.dictionaries(st.sampled_from(NAMES), st.floats(-1, 1), min_size=1),
    before=st.dictionaries(st.sampled_from(NAMES), st.floats(-1, 1)),
    change=st.floats(-1, 1),
)
def test_reasons_push_in_the_direction_of_the_change(
    now: dict[str, float], before: dict[str, float], change: float
) -> None:
    """
    Every reason raises the risk, and when the risk rose, the listed reasons together cover
    at least the whole rise (the factors pushing the other way are left out), short only of
    the shares too small to list (under 0.005 each).
    """
    items = explain.reasons(now, before, change=change, x=dict.fromkeys(NAMES, 2.0), top=len(NAMES))
    assert all(r.contribution > 0 for r in items)
    moved = sum(now.get(n, 0) - before.get(n, 0) for n in NAMES)
    if change >= explain.MIN_CHANGE and moved > 1e-6:
        covered = sum(r.contribution for r in items)
        assert covered >= change - 0.005 * len(NAMES)


def test_without_a_rise_the_level_is_explained() -> None:
    """
    An event alert with a held or fallen score lists what raises the risk now.
    """
    now = {"open_urgent_tickets": 0.2, "days_since_event": -0.1, "login_trend": 0.05}
    x = {"open_urgent_tickets": 2.0, "login_trend": 0.5}
    items = explain.reasons(now, now, change=-0.03, x=x)
    assert ["open_urgent_tickets", "login_trend"] == [r.factor for r in items]
    expected = (
        "risk 0.42 (change -0.03): 2 urgent tickets open (+0.20), "
        "logins down 50% vs. the 30-day average (+0.05)"
    )
    assert expected == explain.summary(-0.03, items, level=0.42)
    assert explain.summary(None, items, level=0.42).startswith("risk 0.42: 2 urgent")


def test_model_factors_split_the_probability_above_baseline() -> None:
    """
    The model's factors add up to its probability minus the probability at the bias alone.
    """
    bias = -2.0
    contributions = {"a": 1.0, "b": 0.5, "c": -0.5}
    p = 1 / (1 + math.exp(-(bias + 1.0)))
    factors = explain.model_factors(p, contributions)
    base = 1 / (1 + math.exp(-bias))
    assert math.isclose(p - base, sum(factors.values()))
    assert factors["a"] > factors["b"] > 0 > factors["c"]


def test_blend_weights_model_and_prior() -> None:
    """
    Blended factors are the weighted sum of the model's and the prior's.
    """
    out = explain.blend_factors({"a": 0.2}, {"a": 0.1, "b": 0.3}, weight=0.25)
    assert math.isclose(0.125, out["a"])
    assert math.isclose(0.225, out["b"])


def test_every_known_feature_has_words() -> None:
    """
    Each feature the rules may name is described in words, not as a raw name.
    """
    from churnwatch.core.rules import KNOWN_FEATURES

    for name in KNOWN_FEATURES:
        assert not explain.describe(name, {name: 1.0}).startswith(name)


def test_the_prior_input_reads_as_the_rules_health_points() -> None:
    """
    The prior's logit as a model input is described as the rules' health points it stands for.
    """
    from churnwatch.core.rules import PRIOR_INPUT, prior_logit

    x = {PRIOR_INPUT: prior_logit(0.25)}
    assert "health points 75 of 100 by the rules" == explain.describe(PRIOR_INPUT, x)


_SOME = [*NAMES, "csat_low", "repeat_buyer", "ltv", "open_tickets"]


@given(
    now=st.dictionaries(st.sampled_from(_SOME), st.floats(0.01, 1), min_size=1),
    zeros=st.sets(st.sampled_from(_SOME)),
)
def test_a_factor_whose_value_is_zero_is_never_a_reason(
    now: dict[str, float], zeros: set[str]
) -> None:
    """
    Whatever its share, a feature whose value is 0 (or reads as 0 in its words: 0.2 days,
    0.3 low ratings) is not given as a reason, unless a zero is news in itself (a one-time
    buyer, logins down 100%).
    """
    x = {name: 0.0 if name in zeros else 3.0 for name in _SOME}
    x["days_since_event"] = 0.0 if "days_since_event" in zeros else 0.2
    items = explain.reasons(now, None, change=0.0, x=x, top=len(_SOME))
    silent = {n for n in zeros if n not in explain._ZERO_SPEAKS} | {"days_since_event"}
    assert set() == {r.factor for r in items} & silent
    for r in items:
        assert not re.fullmatch(r"\D*0\D*", r.text), r.text
    expected = {n for n, share in now.items() if share >= 0.005} - silent
    assert expected == {r.factor for r in items}


def test_the_simulators_alerts_name_their_event_first_and_say_no_zeros() -> None:
    """
    Over a simulated history's alerts: an event rule's alert (urgent ticket, ticket burst,
    repeated returns) gives the event that fired it as its first reason, with the rule's count
    and window where it has them; no reason of any alert reads as a zero.
    """
    from churnwatch.core.engine import EngineConfig, Policy
    from churnwatch.core.rules import default_rules
    from churnwatch.replay.engine import Replay
    from churnwatch.sim.simulator import SimConfig, Simulation

    rules = default_rules()
    alerts = []
    replay = Replay(Policy.build(rules, EngineConfig()), on_alert=alerts.append)
    replay.run(Simulation(SimConfig(customers=600, days=90, seed=11)).records())
    by_name = {rule.name: rule for rule in rules.event_rules}
    fired = [a for a in alerts if a.rule in by_name]
    assert {"urgent_ticket", "ticket_burst", "repeated_returns"} <= {a.rule for a in fired}
    for alert in fired:
        rule = by_name[alert.rule]
        first = alert.reasons[0].text
        assert ("ticket" if rule.event == "ticket" else "return") in first, alert
        if rule.count > 1:
            assert first.startswith(f"{rule.count} "), first
        assert first in alert.summary
        assert not re.search(r"\ba [aeiou]", first), first
    for alert in alerts:
        for reason in alert.reasons:
            assert not re.fullmatch(r"\D*0\D*", reason.text), (alert.rule, reason.text)
