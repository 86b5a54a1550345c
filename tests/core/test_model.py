"""
Tests of churnwatch.core.model: learning, blending, the score, live quality, checkpoints.
"""

from __future__ import annotations

import hashlib
import math
import random
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from churnwatch.core.errors import ConfigError, ModelFormatError
from churnwatch.core.model import (
    FORMAT_VERSION,
    KINDS,
    MAGIC,
    ModelConfig,
    ProgressiveValidation,
    Scorer,
    blend,
    engagement_score,
    model_weight,
)


def separable_stream(n: int, seed: int = 1) -> list[tuple[dict[str, float], bool]]:
    """
    Churners log in rarely and open tickets; scales differ wildly, as the real features do.
    """
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        churned = rng.random() < 0.3
        x = {
            "login_rate_short": rng.expovariate(8.0 if churned else 1.0),
            "ticket_load": rng.expovariate(0.5 if churned else 3.0),
            "days_since_login": min(365.0, rng.expovariate(1 / 40 if churned else 1 / 3)),
            "ltv": rng.lognormvariate(6.0, 1.5),
            "return_ratio": rng.random(),
        }
        out.append((x, churned))
    return out


def brute_force_auc(pairs: list[tuple[float, bool]]) -> float:
    positives = [p for p, y in pairs if y]
    negatives = [p for p, y in pairs if not y]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in positives for q in negatives)
    return wins / (len(positives) * len(negatives))


@pytest.mark.parametrize("kind", KINDS)
def test_learning_on_a_separable_stream_ranks_churners_first(kind: str) -> None:
    """
    After learning a separable stream, every kind ranks held-out churners above the others.
    """
    scorer = Scorer(ModelConfig(kind=kind))  # type: ignore[arg-type]
    for x, churned in separable_stream(1200, seed=1):
        scorer.learn_one(x, churned)
    held_out = [(scorer.predict_one(x), y) for x, y in separable_stream(400, seed=2)]

    assert brute_force_auc(held_out) > 0.8


def test_progressive_validation_of_logreg_climbs_above_point_eight() -> None:
    """
    Predict-before-learn AUC of the default model on a separable stream ends above 0.8.
    """
    scorer = Scorer()
    quality = ProgressiveValidation(window=500)
    for x, churned in separable_stream(1500):
        quality.update(churned, scorer.predict_one(x))
        scorer.learn_one(x, churned)

    assert quality.auc is not None
    assert quality.auc > 0.8
    expected_count = 1500
    assert expected_count == quality.count


def test_logreg_contributions_add_up_to_the_logit() -> None:
    """
    For logreg, the intercept (logit of the empty input) plus the contributions is the logit.
    """
    scorer = Scorer()
    for x, churned in separable_stream(300):
        scorer.learn_one(x, churned)
    x = {"login_rate_short": 0.05, "ticket_load": 2.0, "days_since_login": 30.0, "ltv": 900.0}

    contributions = scorer.contributions(x)
    p = scorer.predict_one(x)
    intercept = scorer.predict_one({})

    assert math.log(p / (1 - p)) == pytest.approx(
        math.log(intercept / (1 - intercept)) + sum(contributions.values()), abs=1e-9
    )
    assert set(x) == set(contributions)
    assert contributions["ticket_load"] > 0
    assert contributions["login_rate_short"] > 0  # a low login rate raises the risk


def test_contributions_are_zero_for_unknown_and_non_finite_features() -> None:
    """
    Names the model never learned and NaN values contribute nothing, and are still listed.
    """
    scorer = Scorer()
    for x, churned in separable_stream(100):
        scorer.learn_one(x, churned)

    contributions = scorer.contributions({"brand_new": 3.0, "ticket_load": math.nan})

    expected = {"brand_new": 0.0, "ticket_load": 0.0}
    assert expected == contributions


@pytest.mark.parametrize(
    ("n_labels", "expected"),
    [
        (0, 0.0),
        (49, 0.0),
        (50, 50 / 550),
        (500, 0.5),
        (1500, 0.75),
    ],
)
def test_model_weight_table(n_labels: int, expected: float) -> None:
    """
    The model's weight is 0 below min_labels, then n / (n + half_life).
    """
    config = ModelConfig(min_labels=50, prior_weight_half_life=500)

    assert expected == pytest.approx(model_weight(n_labels, config))


@given(a=st.integers(0, 10**7), b=st.integers(0, 10**7))
def test_model_weight_is_monotone_and_below_one(a: int, b: int) -> None:
    """
    More labels never lower the model's weight, which stays in [0, 1).
    """
    config = ModelConfig()
    low, high = sorted((a, b))

    assert model_weight(low, config) <= model_weight(high, config)
    assert 0.0 <= model_weight(high, config) < 1.0


def test_model_weight_tends_to_one() -> None:
    """
    With very many labels the learned model all but decides alone.
    """
    assert model_weight(10**9, ModelConfig()) > 0.999


@given(
    prior=st.floats(0.0, 1.0),
    model=st.floats(0.0, 1.0),
    n_labels=st.integers(0, 10**6),
)
def test_blend_lies_between_prior_and_model(prior: float, model: float, n_labels: int) -> None:
    """
    The blend is a weighted mean: between the prior and the model, the prior alone early on.
    """
    config = ModelConfig()
    blended = blend(prior, model, n_labels=n_labels, config=config)

    assert min(prior, model) - 1e-12 <= blended <= max(prior, model) + 1e-12
    if n_labels < config.min_labels:
        assert prior == blended


def test_blend_table() -> None:
    """
    Half way (n = half_life) the blend is the plain mean of prior and model.
    """
    config = ModelConfig(min_labels=10, prior_weight_half_life=100)

    prior_alone, half_way = 0.2, 0.5
    assert prior_alone == blend(0.2, 0.8, n_labels=9, config=config)
    assert half_way == pytest.approx(blend(0.2, 0.8, n_labels=100, config=config))


def test_blend_rejects_probabilities_outside_zero_one() -> None:
    """
    A probability outside [0, 1] is a caller's bug and says which argument it was.
    """
    with pytest.raises(ValueError, match=r"model_probability must be in \[0, 1\], got 1.5"):
        blend(0.2, 1.5, n_labels=10, config=ModelConfig())


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        (0.0, 100.0),
        (1.0, 0.0),
        (0.5, 50.0),
        (0.25, 75.0),
        (0.123456, 87.65),
        (1 / 3, 66.67),
        (0.999999, 0.0),
    ],
)
def test_engagement_score_table(p: float, expected: float) -> None:
    """
    The engagement score is 100 * (1 - p), rounded to two decimals.
    """
    assert expected == engagement_score(p)


@pytest.mark.parametrize("p", [-0.1, 1.01, math.nan])
def test_engagement_score_rejects_non_probabilities(p: float) -> None:
    """
    Values outside [0, 1] (or NaN) are refused with the value in the message.
    """
    with pytest.raises(ValueError, match="churn_probability must be in"):
        engagement_score(p)


examples = st.lists(
    st.tuples(
        st.one_of(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]), st.floats(0.0, 1.0)),
        st.booleans(),
    ),
    max_size=60,
)


@given(pairs=examples)
def test_progressive_validation_auc_equals_brute_force(pairs: list[tuple[float, bool]]) -> None:
    """
    The windowed AUC equals counting every positive-negative pair (ties count one half).
    """
    quality = ProgressiveValidation(window=1000)
    for p, y in pairs:
        quality.update(y, p)
    both_classes = any(y for _, y in pairs) and not all(y for _, y in pairs)

    if both_classes:
        assert brute_force_auc(pairs) == pytest.approx(quality.auc)
    else:
        assert quality.auc is None


@given(pairs=examples, window=st.integers(1, 20))
def test_progressive_validation_only_sees_the_window(
    pairs: list[tuple[float, bool]], window: int
) -> None:
    """
    AUC and log loss use only the last `window` examples; `count` counts them all.
    """
    quality = ProgressiveValidation(window=window)
    reference = ProgressiveValidation(window=window)
    for p, y in pairs:
        quality.update(y, p)
    for p, y in pairs[-window:]:
        reference.update(y, p)

    assert reference.auc == quality.auc
    assert reference.log_loss == quality.log_loss
    assert len(pairs) == quality.count


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ([(0.5, True)], math.log(2)),
        ([(0.5, False), (0.5, True)], math.log(2)),
        ([(0.9, True), (0.1, False)], -math.log(0.9)),
        ([(0.8, False)], -math.log(0.2)),
        ([(1.0, False)], -math.log(1.0 - (1.0 - 1e-15))),
        ([(1.0, True), (0.0, False)], -math.log(1.0 - 1e-15)),
    ],
)
def test_progressive_validation_log_loss_table(
    pairs: list[tuple[float, bool]], expected: float
) -> None:
    """
    Log loss is the mean of -log(p) for churners and -log(1 - p) otherwise, p clipped to 1e-15.
    """
    quality = ProgressiveValidation()
    for p, y in pairs:
        quality.update(y, p)

    assert expected == pytest.approx(quality.log_loss)


def test_progressive_validation_starts_empty() -> None:
    """
    Before any example there is no AUC and no log loss, and to_dict says so.
    """
    expected = {"count": 0, "window": 0, "auc": None, "log_loss": None}
    assert expected == ProgressiveValidation().to_dict()


def test_progressive_validation_auc_waits_for_both_classes() -> None:
    """
    AUC stays None while only one class has been seen.
    """
    quality = ProgressiveValidation()
    quality.update(False, 0.2)
    quality.update(False, 0.4)

    assert quality.auc is None
    quality.update(True, 0.3)
    expected = 0.5  # the positive (0.3) beats one negative (0.2) and loses to the other
    assert expected == quality.auc


def checkpoint() -> bytes:
    scorer = Scorer()
    for x, churned in separable_stream(60):
        scorer.learn_one(x, churned)
    return scorer.to_bytes()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", r"expected a model checkpoint of at least 42 bytes .*got 0 bytes"),
        (b"garbage", r"expected a model checkpoint of at least 42 bytes .*got 7 bytes: b'garbage'"),
        (
            b"X" * 100,
            r"expected a churnwatch model checkpoint starting with b'CWMODEL\\x00', "
            r"got b'XXXXXXXX'",
        ),
        (
            MAGIC + struct.pack(">H", FORMAT_VERSION + 1) + bytes(32) + b"payload",
            rf"expected model format version {FORMAT_VERSION}, got version {FORMAT_VERSION + 1}",
        ),
    ],
)
def test_from_bytes_rejects_what_is_not_a_checkpoint(data: bytes, message: str) -> None:
    """
    Garbage, a wrong magic or an unknown version raise ModelFormatError saying what was expected.
    """
    with pytest.raises(ModelFormatError, match=message):
        Scorer.from_bytes(data)


def test_from_bytes_rejects_a_truncated_checkpoint() -> None:
    """
    A checkpoint cut short fails its checksum, and the message says so.
    """
    data = checkpoint()

    with pytest.raises(ModelFormatError, match=r"expected a payload with sha256 .* corrupt"):
        Scorer.from_bytes(data[:-10])


def test_from_bytes_rejects_a_payload_that_is_not_a_model() -> None:
    """
    A well-formed header over a payload that is not a pickled model state is refused.
    """
    payload = b"not a pickle at all"
    data = MAGIC + struct.pack(">H", FORMAT_VERSION) + hashlib.sha256(payload).digest() + payload

    with pytest.raises(ModelFormatError, match="expected a pickled churnwatch model state"):
        Scorer.from_bytes(data)


def test_from_bytes_rejects_a_string() -> None:
    """
    Text instead of bytes is refused by name.
    """
    with pytest.raises(ModelFormatError, match="expected a model checkpoint as bytes, got str"):
        Scorer.from_bytes("CWMODEL")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"kind": "svm"}, "model kind must be one of logreg, hat, arf, got 'svm'"),
        ({"learning_rate": 0.0}, "learning_rate must be a finite number > 0, got 0.0"),
        ({"l2": -1.0}, "l2 must be a finite number >= 0, got -1.0"),
        ({"prior_weight_half_life": 0}, "prior_weight_half_life must be >= 1 label, got 0"),
        ({"min_labels": -1}, "min_labels must be >= 0, got -1"),
    ],
)
def test_model_config_rejects_bad_values(changes: dict[str, object], message: str) -> None:
    """
    An impossible model config fails at startup with a ConfigError naming the field.
    """
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**changes)  # type: ignore[arg-type]


def test_version_names_kind_and_labels() -> None:
    """
    The version starts with the kind and the number of labels learned.
    """
    scorer = Scorer(ModelConfig(kind="hat"))
    for x, churned in separable_stream(3):
        scorer.learn_one(x, churned)

    expected = 3
    assert scorer.version.startswith("hat-3-")
    assert expected == scorer.n_labels


def test_logreg_learns_as_rivers_own_pipeline_bit_for_bit() -> None:
    """
    A logreg scorer predicts and learns bit for bit as River's own pipeline on its features.
    """
    from churnwatch.core import model as model_module

    config = ModelConfig()
    reference = model_module._build_pipeline(config)
    scorer = Scorer(config)
    stream = separable_stream(600, seed=3)
    for i, (x, churned) in enumerate(stream):
        if i % 97 == 5:
            x = {**x, "ticket_load": math.nan}
        if i % 89 == 7:
            x = {name: value for name, value in x.items() if name != "ltv"}
        xt = {
            name: math.copysign(math.log1p(abs(value)), value)
            for name, value in sorted(x.items())
            if math.isfinite(value)
        }
        proba = reference.predict_proba_one(xt) if i else {}
        expected_p = proba.get(True, 0.5) / sum(proba.values()) if proba else 0.5
        reference.learn_one(xt, churned)
        if i % 2:
            actual_p = scorer.predict_learn_one(x, churned)
            assert min(max(expected_p, 1e-6), 1 - 1e-6) == actual_p
        else:
            scorer.learn_one(x, churned)
        if i % 150 == 0:
            scorer.copy()  # a checkpoint between examples
    expected = model_module._pickle(reference)
    assert expected == model_module._pickle(scorer.copy()._pipeline)


def test_fast_learning_paths_are_on_with_the_installed_river() -> None:
    """
    The fast learning paths agree with the installed River release, so they are in use.
    """
    from churnwatch.core import model as model_module

    assert model_module._fast_learning_agrees()


def test_a_checkpoint_of_another_river_is_refused() -> None:
    """
    A checkpoint records the River it was written with; one from another River version is
    refused with a message naming both versions, instead of scoring with it.
    """
    import hashlib
    import pickle

    from churnwatch.core import model as m
    from churnwatch.core.errors import ModelFormatError

    scorer = m.Scorer()
    scorer.learn_one({"a": 1.0}, True)
    data = scorer.to_bytes()
    header = m._HEADER.size
    state = pickle.loads(data[header:])
    assert m.RIVER_VERSION == state["river"]
    state["river"] = "0.1.0"
    payload = pickle.dumps(state)
    forged = m._HEADER.pack(m.MAGIC, m.FORMAT_VERSION, hashlib.sha256(payload).digest()) + payload
    with pytest.raises(ModelFormatError, match=r"written with river 0\.1\.0"):
        m.Scorer.from_bytes(forged)
    assert scorer.version == m.Scorer.from_bytes(data).version
