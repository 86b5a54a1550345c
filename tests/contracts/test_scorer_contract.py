"""
The check suite every Scorer kind must pass (after river/checks): purity, order, robustness,
checkpoints, determinism, copies and versions.
"""

from __future__ import annotations

import functools
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from churnwatch.core.model import KINDS, ModelConfig, ModelKind, Scorer

NAMES = tuple(f"feature_{i:02d}" for i in range(29))
"""As many features as the real vector, with scales as different as theirs."""


def example(rng: random.Random) -> tuple[dict[str, float], bool]:
    churned = rng.random() < 0.3
    x: dict[str, float] = {}
    for i, name in enumerate(NAMES):
        scale = 10.0 ** (i % 5 - 1)  # 0.1 .. 1000
        shift = 1.5 if churned and i % 3 == 0 else 0.0
        x[name] = scale * rng.lognormvariate(shift, 1.0)
    return x, churned


def stream(n: int, seed: int) -> list[tuple[dict[str, float], bool]]:
    rng = random.Random(seed)
    return [example(rng) for _ in range(n)]


def trained(kind: ModelKind, n: int = 300, seed: int = 5) -> Scorer:
    scorer = Scorer(ModelConfig(kind=kind))
    for x, churned in stream(n, seed):
        scorer.learn_one(x, churned)
    return scorer


@functools.cache
def _trained_bytes(kind: ModelKind) -> bytes:
    return trained(kind).to_bytes()


def fresh_trained(kind: ModelKind) -> Scorer:
    """
    A scorer that has learned 300 examples, built once per kind and restored for each test.
    """
    return Scorer.from_bytes(_trained_bytes(kind))


@functools.cache
def read_only(kind: ModelKind) -> Scorer:
    """
    One trained scorer per kind for tests that only predict (which the suite shows is pure).
    """
    return fresh_trained(kind)


PROBES = stream(20, seed=99)

kinds = pytest.mark.parametrize("kind", KINDS)


@kinds
def test_predict_one_does_not_change_its_input(kind: ModelKind) -> None:
    """
    Scoring (and explaining, and learning) leaves the caller's dict as it was.
    """
    scorer = fresh_trained(kind)
    for x, churned in PROBES:
        before = dict(x)
        scorer.predict_one(x)
        scorer.contributions(x)
        scorer.learn_one(x, churned)
        assert before == x


@kinds
def test_predict_one_does_not_change_the_scorer(kind: ModelKind) -> None:
    """
    Predicting and explaining are read-only: the checkpoint bytes stay the same, fresh or trained.
    """
    half_known = fresh_trained(kind)
    half_known.learn_one({**PROBES[0][0], "late_feature": math.nan}, True)  # name, no value
    for scorer in (Scorer(ModelConfig(kind=kind)), fresh_trained(kind), half_known):
        before = scorer.to_bytes()
        for x, _ in PROBES:
            scorer.predict_one(x)
            scorer.predict_one({**x, "never_seen": 1.0, "late_feature": 1.0})
            scorer.contributions({**x, "late_feature": 2.0})
        assert before == scorer.to_bytes()


@kinds
@given(data=st.data())
def test_feature_order_makes_no_difference(kind: ModelKind, data: st.DataObject) -> None:
    """
    The same features in another order give bit-identical probabilities and contributions.
    """
    scorer = read_only(kind)
    x, _ = PROBES[data.draw(st.integers(0, len(PROBES) - 1))]
    order = data.draw(st.permutations(list(x)))
    shuffled = {name: x[name] for name in order}

    assert scorer.predict_one(x) == scorer.predict_one(shuffled)
    assert scorer.contributions(x) == scorer.contributions(shuffled)


@kinds
def test_feature_order_makes_no_difference_to_learning(kind: ModelKind) -> None:
    """
    Learning the same examples with their keys in another order gives the same bytes.
    """
    forward = Scorer(ModelConfig(kind=kind))
    backward = Scorer(ModelConfig(kind=kind))
    for x, churned in stream(80, seed=3):
        forward.learn_one(x, churned)
        backward.learn_one(dict(reversed(x.items())), churned)

    assert forward.to_bytes() == backward.to_bytes()


@kinds
def test_missing_or_new_features_do_not_crash(kind: ModelKind) -> None:
    """
    Empty, partial, extra and non-finite inputs give a probability in (0, 1), learn and explain.
    """
    scorer = fresh_trained(kind)
    x, _ = PROBES[0]
    odd_inputs: list[dict[str, float]] = [
        {},
        {NAMES[0]: x[NAMES[0]]},
        {**x, "brand_new": 7.0},
        {"only_new": 1.0},
        {**x, NAMES[1]: math.nan, NAMES[2]: math.inf, NAMES[3]: -math.inf},
        {name: -value for name, value in x.items()},
    ]
    for odd in odd_inputs:
        p = scorer.predict_one(odd)
        assert 0.0 < p < 1.0
        assert set(odd) == set(scorer.contributions(odd))
        scorer.learn_one(odd, True)
    assert 0.0 < scorer.predict_one({**x, "brand_new": 7.0}) < 1.0


@kinds
def test_checkpoint_round_trip_keeps_predictions_version_and_bytes(kind: ModelKind) -> None:
    """
    to_bytes -> from_bytes gives the same predictions, the same version and the same bytes.
    """
    scorer = trained(kind)
    data = scorer.to_bytes()

    restored = Scorer.from_bytes(data)

    assert scorer.version == restored.version
    assert scorer.n_labels == restored.n_labels
    assert [scorer.predict_one(x) for x, _ in PROBES] == [
        restored.predict_one(x) for x, _ in PROBES
    ]
    assert data == restored.to_bytes()


@kinds
def test_a_restored_scorer_learns_on_exactly_as_the_original(kind: ModelKind) -> None:
    """
    Learning after a restore gives the bytes the original gets from the same examples.
    """
    original = trained(kind, n=100)
    restored = Scorer.from_bytes(original.to_bytes())
    for x, churned in stream(50, seed=8):
        original.learn_one(x, churned)
        restored.learn_one(x, churned)

    assert original.version == restored.version
    assert original.to_bytes() == restored.to_bytes()


@kinds
def test_same_seed_and_data_give_same_scores(kind: ModelKind) -> None:
    """
    Two scorers with the same config and history agree bit for bit: scores, version, bytes.
    """
    first = trained(kind, n=150)
    second = trained(kind, n=150)

    assert [first.predict_one(x) for x, _ in PROBES] == [second.predict_one(x) for x, _ in PROBES]
    assert first.version == second.version
    assert first.to_bytes() == second.to_bytes()


@kinds
def test_copy_is_independent(kind: ModelKind) -> None:
    """
    Learning on a copy changes neither the original's predictions nor its bytes nor its version.
    """
    original = fresh_trained(kind)
    before_bytes = original.to_bytes()
    before_scores = [original.predict_one(x) for x, _ in PROBES]
    before_version = original.version

    twin = original.copy()
    assert before_bytes == twin.to_bytes()
    for x, churned in stream(60, seed=4):
        twin.learn_one(x, not churned)

    assert before_bytes == original.to_bytes()
    assert before_scores == [original.predict_one(x) for x, _ in PROBES]
    assert before_version == original.version
    assert before_version != twin.version


@kinds
def test_version_changes_after_learn_one(kind: ModelKind) -> None:
    """
    Every learn_one gives a new version, and different histories give different versions.
    """
    scorer = Scorer(ModelConfig(kind=kind))
    seen = {scorer.version}
    for x, churned in stream(10, seed=6):
        scorer.learn_one(x, churned)
        assert scorer.version not in seen
        seen.add(scorer.version)

    other = Scorer(ModelConfig(kind=kind))
    for x, churned in stream(10, seed=7):
        other.learn_one(x, churned)
    assert other.n_labels == scorer.n_labels
    assert other.version != scorer.version


@kinds
def test_predictions_are_probabilities_strictly_inside_zero_one(kind: ModelKind) -> None:
    """
    Even for extreme inputs the probability stays strictly between 0 and 1.
    """
    scorer = read_only(kind)
    extremes = [{name: value for name in NAMES} for value in (0.0, 1e12, -1e12, 1e-300)]

    for x in extremes:
        assert 0.0 < scorer.predict_one(x) < 1.0


@pytest.mark.parametrize("kind", KINDS)
def test_explain_one_equals_predict_and_contributions(kind: str) -> None:
    """
    explain_one gives what predict_one and contributions give (to rounding), before and after
    learning.
    """
    scorer = Scorer(ModelConfig(kind=kind))  # type: ignore[arg-type]
    x = {"a": 1.0, "b": 3.0, "c": -2.0}
    assert (scorer.predict_one(x), scorer.contributions(x)) == scorer.explain_one(x)
    for i in range(60):
        scorer.learn_one({"a": float(i % 7), "b": float(i % 3), "c": 1.0}, i % 5 == 0)
    p = scorer.predict_one(x)
    contributions = scorer.contributions(x)
    p2, contributions2 = scorer.explain_one(x)
    assert math.isclose(p, p2, rel_tol=1e-12)
    assert contributions.keys() == contributions2.keys()
    assert all(
        math.isclose(contributions[k], contributions2[k], rel_tol=1e-12, abs_tol=1e-15) for k in x
    )
    assert p2 == scorer.score_one(x)
    assert math.isclose(p2, scorer.predict_one(x), rel_tol=1e-12)
