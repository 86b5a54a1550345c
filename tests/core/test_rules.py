"""
Tests of the rules file: loading, validation errors with file and line, and the pure helpers.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from churnwatch.core.errors import ConfigError
from churnwatch.core.features import FEATURE_NAMES
from churnwatch.core.rules import (
    KNOWN_FEATURES,
    PRIOR_INPUT,
    PointHit,
    PriorPlan,
    PriorResult,
    RulesFile,
    default_rules,
    is_onboarding,
    load_rules,
    parse_rules,
    prior_logit,
    prior_points,
    route,
    rules_fingerprint,
    segment_of,
)

ROOT = Path(__file__).resolve().parents[2]
RULES_FILES = [
    ROOT / "rules" / "default.yaml",
    ROOT / "rules" / "examples" / "strict.yaml",
    ROOT / "rules" / "examples" / "ecommerce.yaml",
]

# A small valid file; the broken files below change one or two of its lines, so the line
# numbers in their expected messages are the line numbers here.
BASE = """\
version: "t1"
segments:
  - {name: big, min_ltv: 1000}
  - {name: small, min_ltv: 0}
prior:
  base: 80
  points:
    - {feature: days_since_event, above: 14, points: -25, label: "no activity for {value:.0f} days"}
    - {feature: login_trend, below: 0.5, points: -15, label: "logins down {pct_down:.0f}%"}
    - {feature: login_trend, above: 1.2, points: 5, label: "logins up {pct_up:.0f}%"}
    - {feature: return_ratio, above: 0.3, points: -10, label: "{pct:.0f}% returned"}
onboarding:
  max_tenure_days: 14
  min_events: 5
  base: 70
  points:
    - {feature: open_urgent_tickets, above: 0, points: -20, label: "{value:.0f} urgent"}
score_rules:
  - name: low_engagement
    thresholds: {big: 45, default: 35}
    margin: 10
    cooldown_days: 14
    severity: high
decline_rules:
  - {name: sharp_decline, drop: 25, within_days: 14, cooldown_days: 14, severity: medium}
event_rules:
  - {name: urgent, event: ticket, where: {severity: [urgent]}, severity: medium, cooldown_days: 7}
  - {name: burst, event: ticket, count: 3, within_days: 14, severity: medium, cooldown_days: 14}
inactivity: {name: gone_quiet, days: 21, gap_multiple: 3.0, severity: high, cooldown_days: 30}
routing:
  - {when: {segment: [big]}, action: csm_task}
  - {when: {severity: [high], rule: [gone_quiet]}, action: csm_task}
  - {when: {}, action: email}
"""


def _edit(*changes: tuple[str, str]) -> str:
    text = BASE
    for old, new in changes:
        count = text.count(old)
        assert count == 1, f"{old!r} occurs {count} times"
        text = text.replace(old, new)
    return text


def _errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_rules(text, source="x.yaml")
    return str(info.value).splitlines()


def test_base_is_valid() -> None:
    """
    The small file the broken cases start from is itself valid.
    """
    rules = parse_rules(BASE)
    expected = (
        "low_engagement",
        "sharp_decline",
        "urgent",
        "burst",
        "gone_quiet",
    )
    assert expected == rules.rule_names


@pytest.mark.parametrize("path", RULES_FILES, ids=lambda p: p.name)
def test_shipped_rules_files_load(path: Path) -> None:
    """
    The default rules and every example validate.
    """
    rules = load_rules(path)
    assert isinstance(rules, RulesFile)


def test_default_rules_are_the_packaged_copy() -> None:
    """
    rules/default.yaml and the packaged churnwatch/data/default.yaml are identical.
    """
    packaged = ROOT / "services" / "churnwatch" / "data" / "default.yaml"
    assert (ROOT / "rules" / "default.yaml").read_bytes() == packaged.read_bytes()
    assert load_rules(ROOT / "rules" / "default.yaml") == default_rules()


def test_examples_are_the_two_documented_ones() -> None:
    """
    The examples folder holds the strict and the e-commerce example.
    """
    expected = ["ecommerce.yaml", "strict.yaml"]
    assert expected == sorted(p.name for p in (ROOT / "rules" / "examples").glob("*.yaml"))


BROKEN = [
    pytest.param(
        _edit(("base: 80", "base: eighty")),
        ["x.yaml:6: prior.base: must be a valid number, got 'eighty'"],
        id="wrong-type",
    ),
    pytest.param(
        _edit(("feature: login_trend, below", "feature: login_trnd, below")),
        [
            "x.yaml:9: prior.points[1].feature: unknown feature 'login_trnd'"
            " (did you mean 'login_trend'?)"
        ],
        id="unknown-feature",
    ),
    pytest.param(
        _edit(("{big: 45, default: 35}", "{big: 45, small: 35}")),
        ["x.yaml:20: score_rules[0].thresholds.default: field required"],
        id="missing-default-threshold",
    ),
    pytest.param(
        _edit(("above: 0.3, points", "above: 0.3, below: 0.1, points")),
        [
            "x.yaml:11: prior.points[3]: set exactly one of `above` or `below`,"
            " got both (above 0.3, below 0.1)"
        ],
        id="above-and-below",
    ),
    pytest.param(
        _edit(("name: burst", "name: low_engagement")),
        [
            "x.yaml:28: event_rules[1].name: duplicate rule name 'low_engagement'"
            " (also used by score_rules[0])"
        ],
        id="duplicate-rule-name",
    ),
    pytest.param(
        _edit(("  - {when: {}, action: email}\n", "")),
        [
            "x.yaml:32: routing[1].when: the last route must match every alert (an empty"
            " `when: {}`) so each alert gets an action, got conditions on severity, rule"
        ],
        id="no-catch-all-route",
    ),
    pytest.param(
        _edit(("  margin: 10", "  margn: 10")),
        [
            "x.yaml:19: score_rules[0].margin: field required",
            "x.yaml:21: score_rules[0].margn: unknown key 'margn' (did you mean 'margin'?)",
        ],
        id="unknown-key",
    ),
    pytest.param(
        _edit(("  base: 70", "  base 70")),
        ["x.yaml:16: invalid YAML: could not find expected ':' (while scanning a simple key)"],
        id="yaml-syntax",
    ),
    pytest.param(
        _edit(("  min_events: 5", "  base: 5")),
        [
            "x.yaml:12: onboarding.min_events: field required",
            "x.yaml:15: onboarding.base: duplicate key 'base' (first at line 14)",
        ],
        id="duplicate-key",
    ),
    pytest.param(
        _edit(("where: {severity: [urgent]}", "where: {severity: [urgnt]}")),
        [
            "x.yaml:27: event_rules[0].where.severity[0]: unknown ticket severity 'urgnt'"
            " (did you mean 'urgent'?)"
        ],
        id="bad-where-value",
    ),
    pytest.param(
        _edit(("where: {severity: [urgent]}", "where: {priority: [urgent]}")),
        [
            "x.yaml:27: event_rules[0].where.priority: unknown ticket field 'priority'"
            " (expected one of: severity, status)"
        ],
        id="bad-where-key",
    ),
    pytest.param(
        _edit(("count: 3, within_days: 14,", "count: 3,")),
        ["x.yaml:28: event_rules[1].within_days: field required when count > 1 (count is 3)"],
        id="count-without-window",
    ),
    pytest.param(
        _edit(("severity: high\n", "severity: hihg\n")),
        [
            "x.yaml:23: score_rules[0].severity: must be 'low', 'medium' or 'high',"
            " got 'hihg' (did you mean 'high'?)"
        ],
        id="bad-literal",
    ),
    pytest.param(
        _edit(('version: "t1"', "version: 2026.11")),
        ["x.yaml:1: version: must be a valid string, got 2026.11 (quote it)"],
        id="unquoted-version",
    ),
    pytest.param(
        _edit(("{name: small, min_ltv: 0}", "{name: small, min_ltv: 50}")),
        [
            "x.yaml:4: segments[1].min_ltv: the last segment must have min_ltv 0"
            " so every customer has one, got 50"
        ],
        id="no-catch-all-segment",
    ),
    pytest.param(
        _edit(("{big: 45, default: 35}", "{bigg: 45, default: 35}")),
        ["x.yaml:20: score_rules[0].thresholds.bigg: unknown segment 'bigg' (did you mean 'big'?)"],
        id="unknown-threshold-segment",
    ),
    pytest.param(
        _edit(("rule: [gone_quiet]", "rule: [gone_quite]")),
        [
            "x.yaml:32: routing[1].when.rule[0]: unknown rule 'gone_quite'"
            " (did you mean 'gone_quiet'?)"
        ],
        id="unknown-route-rule",
    ),
    pytest.param(
        _edit(('label: "{pct:.0f}% returned"', 'label: "{pcnt:.0f}% returned"')),
        [
            "x.yaml:11: prior.points[3].label: unknown placeholder {pcnt} in"
            " '{pcnt:.0f}% returned' (expected one of: value, pct, pct_down, pct_up, threshold)"
        ],
        id="bad-label-placeholder",
    ),
    pytest.param(
        "",
        [
            "x.yaml:1: (top level): the file is empty;"
            " expected a mapping with version, segments, ..."
        ],
        id="empty-file",
    ),
    pytest.param(
        _edit(
            ("base: 80", "base: 180"),
            ("name: burst", "name: urgent"),
            ("    margin: 10\n", "    margin: 10\n    colour: red\n"),
        ),
        [
            "x.yaml:6: prior.base: must be less than or equal to 100, got 180",
            "x.yaml:22: score_rules[0].colour: unknown key 'colour' (expected one of: name,"
            " thresholds, margin, cooldown_days, severity)",
            "x.yaml:29: event_rules[1].name: duplicate rule name 'urgent'"
            " (also used by event_rules[0])",
        ],
        id="every-error-at-once",
    ),
    pytest.param(
        BASE + "labels:\n  gap_multiple: -1\n  silence_checkpoints_days: [14, 7]\n",
        [
            "x.yaml:35: labels.gap_multiple: must be greater than or equal to 0, got -1",
            "x.yaml:36: labels.silence_checkpoints_days: must be strictly increasing, got [14, 7]",
        ],
        id="labels-section",
    ),
    pytest.param(
        BASE + "model:\n  prior_input: yes please\n  learning_rate: 0\n  momentum: 0.9\n",
        [
            "x.yaml:35: model.prior_input: must be a valid boolean, got 'yes please'",
            "x.yaml:36: model.learning_rate: must be greater than 0, got 0",
            "x.yaml:37: model.momentum: unknown key 'momentum' (expected one of: prior_input, "
            "optimizer, learning_rate, l2)",
        ],
        id="model-section",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BROKEN)
def test_broken_files_name_file_line_and_field(text: str, expected: list[str]) -> None:
    """
    Each broken file fails with every problem as `file:line: field: message`.
    """
    assert expected == _errors(text)


def test_load_rules_names_the_path(tmp_path: Path) -> None:
    """
    Errors from a file on disk start with its path, and a missing file is a ConfigError.
    """
    path = tmp_path / "bad.yaml"
    path.write_text(_edit(("base: 80", "base: eighty")), encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(f"{path}:6: prior.base: ")):
        load_rules(path)
    with pytest.raises(ConfigError, match="cannot read the rules file"):
        load_rules(tmp_path / "missing.yaml")


def test_known_features_are_the_feature_contract() -> None:
    """
    KNOWN_FEATURES lists the 31 feature names of the feature vector, each once.
    """
    assert 31 == len(set(KNOWN_FEATURES)) == len(KNOWN_FEATURES)


@pytest.mark.parametrize(
    ("ltv", "expected"),
    [
        (5000.0, "big"),
        (1000.0, "big"),
        (999.99, "small"),
        (0.0, "small"),
        (-5.0, "small"),
        (float("nan"), "small"),
    ],
)
def test_segment_of(ltv: float, expected: str) -> None:
    """
    The first segment from the top whose min_ltv is reached wins; anything else is the last.
    """
    assert expected == segment_of(parse_rules(BASE), ltv)


@pytest.mark.parametrize(
    ("x", "expected"),
    [
        ({"tenure_days": 30.0, "event_count": 50.0}, False),
        ({"tenure_days": 13.9, "event_count": 50.0}, True),
        ({"tenure_days": 14.0, "event_count": 5.0}, False),
        ({"tenure_days": 400.0, "event_count": 4.0}, True),
        ({}, True),
    ],
)
def test_is_onboarding(x: dict[str, float], expected: bool) -> None:
    """
    A customer is onboarding while young or with few events; no history counts as none.
    """
    assert expected == is_onboarding(parse_rules(BASE), x)


SETTLED = {"tenure_days": 100.0, "event_count": 100.0}


@pytest.mark.parametrize(
    ("x", "expected"),
    [
        pytest.param(
            {**SETTLED, "days_since_event": 1.0, "login_trend": 1.0},
            PriorResult(80.0, 0.2, False, ()),
            id="steady",
        ),
        pytest.param(
            {**SETTLED, "days_since_event": 20.0, "login_trend": 0.4},
            PriorResult(
                40.0,
                0.6,
                False,
                (
                    PointHit("days_since_event", -25.0, "no activity for 20 days", 20.0),
                    PointHit("login_trend", -15.0, "logins down 60%", 0.4),
                ),
            ),
            id="quiet-and-declining",
        ),
        pytest.param(
            {**SETTLED, "login_trend": 1.5, "return_ratio": 0.5},
            PriorResult(
                75.0,
                0.25,
                False,
                (
                    PointHit("login_trend", 5.0, "logins up 50%", 1.5),
                    PointHit("return_ratio", -10.0, "50% returned", 0.5),
                ),
            ),
            id="up-and-returning",
        ),
        pytest.param(
            {**SETTLED, "days_since_event": 14.0, "login_trend": 0.5},
            PriorResult(80.0, 0.2, False, ()),
            id="thresholds-are-strict",
        ),
        pytest.param(
            {**SETTLED, "days_since_event": float("nan")},
            PriorResult(80.0, 0.2, False, ()),
            id="nan-never-matches",
        ),
        pytest.param(
            {"tenure_days": 3.0, "event_count": 2.0, "open_urgent_tickets": 2.0},
            PriorResult(
                50.0, 0.5, True, (PointHit("open_urgent_tickets", -20.0, "2 urgent", 2.0),)
            ),
            id="onboarding-profile",
        ),
    ],
)
def test_prior_points(x: dict[str, float], expected: PriorResult) -> None:
    """
    The prior adds the points of every matching rule to the base, with labels filled in.
    """
    assert expected == prior_points(parse_rules(BASE), x)


def test_prior_clamps_to_zero() -> None:
    """
    A total below zero is a score of 0 and a churn probability of 1.
    """
    rules = parse_rules(_edit(("base: 80", "base: 20")))
    x = {**SETTLED, "days_since_event": 30.0, "login_trend": 0.1}
    result = prior_points(rules, x)
    expected = (0.0, 1.0)
    assert expected == (result.score, result.churn_probability)


@given(
    x=st.dictionaries(
        st.sampled_from(KNOWN_FEATURES),
        st.floats(allow_nan=True, allow_infinity=True),
        max_size=len(KNOWN_FEATURES),
    )
)
def test_prior_is_a_probability_for_any_features(x: dict[str, float]) -> None:
    """
    For any feature vector, the default prior's score is in [0, 100] and matches its probability.
    """
    result = prior_points(default_rules(), x)
    assert 0.0 <= result.score <= 100.0
    assert pytest.approx(1.0 - result.score / 100.0) == result.churn_probability


def test_default_prior_is_plausible() -> None:
    """
    The default prior scores a healthy active customer 80+, a silent one with an urgent ticket < 40.
    """
    rules = default_rules()
    healthy = {
        **SETTLED,
        "days_since_event": 1.0,
        "login_trend": 1.1,
        "open_tickets": 0.0,
        "open_urgent_tickets": 0.0,
        "return_ratio": 0.05,
    }
    silent = {
        **SETTLED,
        "days_since_event": 22.0,
        "login_trend": 1.0,
        "open_tickets": 1.0,
        "open_urgent_tickets": 1.0,
        "oldest_open_ticket_days": 3.0,
    }
    assert 80.0 <= prior_points(rules, healthy).score <= 100.0
    assert prior_points(rules, silent).score < 40.0


@pytest.mark.parametrize(
    ("segment", "severity", "rule", "expected"),
    [
        ("big", "low", "urgent_ticket", "csm_task"),
        ("small", "high", "gone_quiet", "csm_task"),
        ("small", "high", "low_engagement", "email"),
        ("small", "medium", "gone_quiet", "email"),
        ("unknown", "low", "anything", "email"),
    ],
)
def test_route(segment: str, severity: str, rule: str, expected: str) -> None:
    """
    The first route whose every condition matches decides the action.
    """
    assert expected == route(parse_rules(BASE), segment=segment, severity=severity, rule=rule)


def test_fingerprint_is_stable_across_formatting() -> None:
    """
    Comments, key order and number spelling do not change the fingerprint.
    """
    reformatted = _edit(
        ("base: 80", "base: 80.0  # the same"),
        ("{big: 45, default: 35}", "{default: 35, big: 45}"),
    )
    fingerprint = rules_fingerprint(parse_rules(BASE))
    assert re.fullmatch(r"t1\+[0-9a-f]{8}", fingerprint)
    assert fingerprint == rules_fingerprint(parse_rules(BASE))
    assert fingerprint == rules_fingerprint(parse_rules(reformatted))


def test_fingerprint_changes_with_content() -> None:
    """
    Any changed value gives another fingerprint even when the version stays the same.
    """
    changed = _edit(("margin: 10", "margin: 12"))
    assert rules_fingerprint(parse_rules(BASE)) != rules_fingerprint(parse_rules(changed))


def test_rules_are_frozen() -> None:
    """
    A validated rules file cannot be changed in place.
    """
    rules = parse_rules(BASE)
    with pytest.raises(ValueError, match="frozen"):
        rules.version = "t2"


def test_labels_section_is_optional_and_leaves_the_fingerprint_alone() -> None:
    """
    Without a `labels` section the rules carry none and keep the fingerprint they had before
    the section existed; with one, its values are read and the fingerprint changes.
    """
    plain = parse_rules(BASE)
    labelled = parse_rules(BASE + "labels: {gap_multiple: 3, silence_checkpoints_days: [7, 30]}\n")
    assert plain.labels is None
    assert "t1+96996799" == rules_fingerprint(plain)
    assert labelled.labels is not None
    assert (3.0, (7.0, 30.0)) == (
        labelled.labels.gap_multiple,
        labelled.labels.silence_checkpoints_days,
    )
    assert rules_fingerprint(plain) != rules_fingerprint(labelled)


def test_model_section_is_optional_and_names_the_model_inputs() -> None:
    """
    Without a `model` section the model's inputs are the features and the fingerprint is the
    one from before the section existed; `prior_input: true` adds the prior's logit.
    """
    plain = parse_rules(BASE)
    stacked = parse_rules(BASE + "model: {prior_input: true, learning_rate: 0.001, l2: 0}\n")
    assert plain.model is None
    assert "t1+96996799" == rules_fingerprint(plain)
    assert FEATURE_NAMES == plain.model_inputs
    assert stacked.model is not None
    assert (True, 0.001, 0.0) == (
        stacked.model.prior_input,
        stacked.model.learning_rate,
        stacked.model.l2,
    )
    assert (*FEATURE_NAMES, PRIOR_INPUT) == stacked.model_inputs
    assert rules_fingerprint(plain) != rules_fingerprint(stacked)


def test_prior_logit_is_bounded() -> None:
    """
    The prior's logit is log(p / (1 - p)), with p taken within [0.01, 0.99].
    """
    expected = [math.log(0.01 / 0.99), 0.0, math.log(0.25 / 0.75), math.log(0.99 / 0.01)]
    assert pytest.approx(expected) == [prior_logit(p) for p in (0.0, 0.5, 0.25, 1.0)]


_VALUES = st.one_of(
    st.floats(min_value=-10.0, max_value=1000.0, allow_nan=False),
    st.sampled_from([0.0, 1.0, 2.0, 3.0, 5.0, 7.0, 14.0, 20.0, 21.0, 30.0, 365.0, 0.5, 1.25]),
    st.just(math.nan),
)


@pytest.mark.parametrize("path", RULES_FILES, ids=lambda p: p.name)
@given(data=st.data())
def test_the_priors_three_readings_agree(path: Path, data: st.DataObject) -> None:
    """
    `prior_points`, `PriorPlan.evaluate` and `PriorPlan.churn_probability` give the same
    probability, the same onboarding flag, and factors that are the matched rules' -points/100
    summed per feature, for any feature values (missing and NaN ones included).
    """
    rules = load_rules(path)
    names = data.draw(st.lists(st.sampled_from(KNOWN_FEATURES), unique=True))
    x = {name: data.draw(_VALUES) for name in names}
    plan = PriorPlan.build(rules)
    result = prior_points(rules, x)
    p, onboarding, factors = plan.evaluate(x)
    expected: dict[str, float] = {}
    for hit in result.hits:
        expected[hit.feature] = expected.get(hit.feature, 0.0) - hit.points / 100.0
    assert (result.churn_probability, result.onboarding, expected) == (p, onboarding, factors)
    assert p == plan.churn_probability(x)
