"""
The online-learned churn model: a River pipeline behind a small, deterministic `Scorer`.

`Scorer` is the one mutable object of the core (STYLE.md): `learn_one` changes it in place.
Everything around it is pure: `blend` leans on the rules file's points-based prior while the
model has few resolved labels, `engagement_score` turns a probability into 0..100, and
`ProgressiveValidation` keeps the model's live quality (predict before learn).

Feature preparation, done inside `Scorer` before the River pipeline (so the pickled pipeline
holds only River objects):

- Features are taken in sorted name order, so the order of the caller's dict makes no
  difference, not even to the last bit of a floating-point sum.
- Non-finite values (NaN, +-inf) are treated as missing: one bad value must not poison the
  weights for good.
- Missing features are left out. For `logreg` that is mean imputation (a standardised value of
  0 contributes nothing); the trees follow their most common path.
- Names never learned are ignored by `predict_one` (the model knows nothing about them, and a
  River scaler would otherwise grow an entry for them while predicting). The first
  `learn_one` that carries a new name with a finite value adds it to the model.
- With `ModelConfig.log1p` (the default), every value goes through the signed log transform
  `sign(v) * log1p(|v|)`. The features are counts, decayed rates, days (up to 365), money
  (lifetime value up to ~10^4) and ratios; most are heavy-tailed, and the transform is
  monotone, so contributions keep their sign and the trees are unaffected in substance.
  `benchmarks/model_choice.py` measures it against the raw values.
"""

from __future__ import annotations

import copy as _copy
import copyreg
import dataclasses
import functools
import hashlib
import io
import math
import operator
import pickle
import random
import struct
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

import river
from river import compose, linear_model, optim, preprocessing, proba
from river import utils as river_utils
from river.utils import math as river_math

from churnwatch.core.errors import ConfigError, ModelFormatError
from churnwatch.core.population import Population

__all__ = [
    "DEFAULT_CONFIG",
    "FORMAT_VERSION",
    "KINDS",
    "MAGIC",
    "ModelConfig",
    "ModelKind",
    "ProgressiveValidation",
    "Scorer",
    "blend",
    "engagement_score",
    "model_weight",
]

ModelKind = Literal["logreg", "hat", "arf"]
"""
The pipelines `benchmarks/model_choice.py` compares.

- `logreg`: StandardScaler | LogisticRegression (SGD, intercept at the same rate); the
  default, chosen by measurement.
- `hat`: HoeffdingAdaptiveTreeClassifier.
- `arf`: ARFClassifier (an adaptive random forest of 10 Hoeffding trees).
"""

KINDS: Final[tuple[ModelKind, ...]] = get_args(ModelKind)

Optimizer = Literal["adagrad", "sgd"]
"""
The logistic regression's optimizer. `adagrad` (the default): a step per feature that shrinks
with the squared gradients that feature has seen, so the weights settle instead of following
the latest examples (labels arrive in bursts: every silence that reaches the horizon resolves
at once); on CDNOW at the 1997-09-30 cut it ranks at 0.764 where SGD at 0.01 ranks at 0.749.
`sgd`: a constant step (the engine's model before; rules/examples/ecommerce.yaml asks for it).
"""
OPTIMIZERS: Final[tuple[Optimizer, ...]] = get_args(Optimizer)

MAGIC: Final = b"CWMODEL\x00"
FORMAT_VERSION: Final = 1
_HEADER: Final = struct.Struct(">8sH32s")  # magic, format version, sha256 of the payload
_PICKLE_PROTOCOL: Final = 5
_EPS: Final = 1e-6  # predict_one stays in [_EPS, 1 - _EPS], strictly inside (0, 1)
_ARF_MODELS: Final = 10
RIVER_VERSION: Final[str] = river.__version__
"""The River a checkpoint was written with is part of it: its weights, its arithmetic and its
pickle layout are River's, so a checkpoint of another River is refused (`Scorer.from_bytes`)."""


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """
    How to build a `Scorer`, and how its probability is blended with the prior.

    The defaults (logreg, SGD at 0.01, L2 0.001, log1p) won on the simulator in
    `benchmarks/model_choice.py` (results in benchmarks/results/model_choice.md).
    `learning_rate` and `l2` apply to `logreg` only; the trees ignore them.
    """

    kind: ModelKind = "logreg"
    optimizer: Optimizer = "adagrad"
    seed: int = 42
    learning_rate: float = 0.01
    l2: float = 0.001
    prior_weight_half_life: int = 500
    min_labels: int = 50
    log1p: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            msg = f"model kind must be one of {', '.join(KINDS)}, got {self.kind!r}"
            raise ConfigError(msg)
        if self.optimizer not in OPTIMIZERS:
            msg = f"model optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"
            raise ConfigError(msg)
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            msg = f"learning_rate must be a finite number > 0, got {self.learning_rate}"
            raise ConfigError(msg)
        if not (math.isfinite(self.l2) and self.l2 >= 0):
            msg = f"l2 must be a finite number >= 0, got {self.l2}"
            raise ConfigError(msg)
        if self.prior_weight_half_life < 1:
            msg = f"prior_weight_half_life must be >= 1 label, got {self.prior_weight_half_life}"
            raise ConfigError(msg)
        if self.min_labels < 0:
            msg = f"min_labels must be >= 0, got {self.min_labels}"
            raise ConfigError(msg)


DEFAULT_CONFIG: Final = ModelConfig()


def _build_pipeline(config: ModelConfig) -> Any:
    if config.kind == "logreg":
        return compose.Pipeline(
            ("scale", preprocessing.StandardScaler()),
            (
                "model",
                linear_model.LogisticRegression(
                    optimizer=(
                        optim.AdaGrad(config.learning_rate)
                        if config.optimizer == "adagrad"
                        else optim.SGD(config.learning_rate)
                    ),
                    l2=config.l2,
                    intercept_lr=config.learning_rate,
                ),
            ),
        )
    # The tree kinds are imported only when asked for: river.forest pulls in scipy, which
    # costs more than a second at every start of the command.
    if config.kind == "hat":
        from river import tree

        return compose.Pipeline(("model", tree.HoeffdingAdaptiveTreeClassifier(seed=config.seed)))
    from river import forest

    return compose.Pipeline(("model", forest.ARFClassifier(n_models=_ARF_MODELS, seed=config.seed)))


# River's probability distributions (the Gaussians inside every Hoeffding tree leaf) each carry
# a `random.Random(seed)` that only their `sample()` uses, and the trees give them no seed: an
# OS-seeded state that would make equal histories pickle to different bytes. The checkpoint
# writes this placeholder in its place; the classifiers never draw from it.
_PLACEHOLDER_RNG: Final = random.Random(0)  # noqa: S311 (never drawn from; not for security)


def _reduce_distribution(obj: Any) -> tuple[Any, ...]:
    state = obj.__dict__
    if state.get("seed") is None and "_rng" in state:
        state = {**state, "_rng": _PLACEHOLDER_RNG}
    # copyreg.__newobj__ is what pickle's default reduction of a plain object uses.
    return (copyreg.__newobj__, (type(obj),), state)  # type: ignore[attr-defined]


def _subclasses(cls: type) -> set[type]:
    found: set[type] = set()
    sub: type
    for sub in cls.__subclasses__():
        found |= {sub, *_subclasses(sub)}
    return found


def _pickle(state: object) -> bytes:
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=_PICKLE_PROTOCOL)
    pickler.dispatch_table = {
        **copyreg.dispatch_table,
        **dict.fromkeys(_subclasses(proba.base.Distribution), _reduce_distribution),
    }
    pickler.dump(state)
    return buffer.getvalue()


def _learn_logreg(steps: tuple[Any, Any], xt: dict[str, float], label: bool) -> None:
    """
    `Pipeline.learn_one(xt, label)` of StandardScaler | LogisticRegression in one pass: River's
    own Welford update of the scaler (`StandardScaler.learn_one`, the same operations in the
    same order on the same dicts, so the same bits and the same key order), the scaled values
    as `StandardScaler.transform_one` gives them after it, then the regression's `learn_one`.
    `_fast_learning_agrees` checks it against River itself once per process.
    """
    scaler, model = steps
    counts = scaler.counts
    means = scaler.means
    vars_ = scaler.vars
    scaled: dict[str, float] = {}
    for i, xi in xt.items():
        count = counts[i] + 1  # counts[i] += 1 (a Counter: 0 when missing)
        counts[i] = count
        old_mean = means[i]
        mean = old_mean + (xi - old_mean) / count
        means[i] = mean
        var = vars_[i]
        var = var + ((xi - old_mean) * (xi - mean) - var) / count
        vars_[i] = var
        scaled[i] = (xi - mean) / var**0.5 if var else 0.0
    _learn_regression(model, scaled, label)


def _values_getter(
    names: tuple[str, ...],
) -> Callable[[Mapping[str, float]], tuple[float | None, ...]]:
    """`lambda x: tuple(x[name] for name in names)`, done by operator.itemgetter."""
    if len(names) == 1:
        single = operator.itemgetter(names[0])
        return lambda x: (single(x),)
    if not names:
        return lambda x: ()
    getter: Callable[[Mapping[str, float]], tuple[float | None, ...]] = operator.itemgetter(*names)
    return getter


def _part_at_zero(mean: float, std: float, weight: float) -> float | None:
    """`weight * ((v - mean) / std)` for v = 0.0 (log1p(0.0) is 0.0), if it is the same for -0.0."""
    positive = weight * ((0.0 - mean) / std)
    negative = weight * ((-0.0 - mean) / std)
    if positive == negative and math.copysign(1.0, positive) == math.copysign(1.0, negative):
        return positive
    return None


def _chain(digest: bytes, label: bool, xt: dict[str, float], names: tuple[str, ...]) -> bytes:
    """The version's hash after learning one example: the label and every known feature's
    prepared value (NaN where missing), chained onto the hash so far."""
    if len(xt) == len(names):  # every name, in `names` order (xt is built in it)
        packed = _pack(len(names)).pack(label, *xt.values())
    else:
        values = [xt.get(name, math.nan) for name in names]
        packed = _pack(len(values)).pack(label, *values)
    return hashlib.blake2b(digest + packed, digest_size=16).digest()


def _predict_learn_logreg(
    steps: tuple[Any, Any],
    x: Mapping[str, float],
    names: tuple[str, ...],
    use_log: bool,
    label: bool,
) -> tuple[dict[str, float], dict[bool, float]]:
    """
    `Scorer._prepare(x)`, then the pipeline's `predict_proba_one`, then `_learn_logreg`, in
    one pass over the features: the scaled value for the prediction is taken from the
    scaler's statistics before they are updated, exactly as the separate calls would; the
    regression predicts before it learns. Every known name has statistics in the scaler.

    Returns:
        The prepared features and the prediction made before learning.
    """
    scaler, model = steps
    counts = scaler.counts
    means = scaler.means
    vars_ = scaler.vars
    log1p = math.log1p
    get = x.get
    xt: dict[str, float] = {}
    before: dict[str, float] = {}
    after: dict[str, float] = {}
    for i in names:
        raw = get(i)
        if raw is None:
            continue
        xi = raw if type(raw) is float else float(raw)
        if xi - xi != 0.0:  # not finite
            continue
        if use_log and xi != 0.0:  # log1p(+-0.0) is +-0.0
            xi = log1p(xi) if xi >= 0 else -log1p(-xi)
        xt[i] = xi
        var = vars_[i]
        old_mean = means[i]
        # StandardScaler.transform_one, before learning
        before[i] = (xi - old_mean) / var**0.5 if var else 0.0
        # StandardScaler.learn_one, then transform_one
        count = counts[i] + 1
        counts[i] = count
        mean = old_mean + (xi - old_mean) / count
        means[i] = mean
        var = var + ((xi - old_mean) * (xi - mean) - var) / count
        vars_[i] = var
        after[i] = (xi - mean) / var**0.5 if var else 0.0
    proba = _predict_proba(model, before)
    _learn_regression(model, after, label)
    return xt, proba


def _predict_proba(model: Any, x: dict[str, float]) -> dict[bool, float]:
    """`LogisticRegression.predict_proba_one(x)`: River's own steps, without its dispatch."""
    p = river_math.sigmoid(model._weights.dot(x) + model.intercept)
    return {False: 1.0 - p, True: p}


def _learn_regression(model: Any, x: dict[str, float], label: bool) -> None:
    """
    `LogisticRegression.learn_one(x, label)` (SGD at a constant rate, the log loss, no L1):
    River's own steps in River's order (GLM.learn_one, _fit, _eval_gradient_one and
    SGD.step), on River's own vectors, without the dispatch between them.
    """
    weights = model._weights
    masked: Any = river_utils.VectorDict(weights, model.initializer, x)  # _enter_learn_mode(x)
    model._weights = masked
    try:
        optimizer = model.optimizer
        loss_gradient = model.loss.gradient(y_true=label, y_pred=masked.dot(x) + model.intercept)
        loss_gradient *= 1.0  # the sample weight
        clip = model.clip_gradient
        loss_gradient = float(max(min(loss_gradient, clip), -clip))
        gradient = river_utils.VectorDict.from_scaled(x, loss_gradient)
        if model.l2:
            gradient.iadd_scaled(masked, model.l2)
        model.intercept -= model.intercept_lr.get(optimizer.n_iterations) * loss_gradient
        if type(optimizer) is optim.AdaGrad:
            # AdaGrad has no vector step: River's optimizer.step falls back to this one
            optimizer._step_with_dict(masked, gradient)
        else:
            masked.isub_scaled(gradient, optimizer.lr.get(optimizer.n_iterations))
        optimizer.n_iterations += 1
    finally:
        model._weights = weights  # _exit_learn_mode


class _Flat:
    """
    A `logreg` pipeline's learning state held in flat lists, one entry per known name in
    `names` order: the scaler's counts, means and variances, the regression's weights, its
    intercept and the optimizer's step count. `step` is `_predict_learn_logreg` (or
    `_learn_logreg`) on them: River's operations, in River's order, on the same values, without
    a dict per operation. The River objects are stale while a scorer holds one of these;
    `flush` writes the values back (into the keys that are there already, so their order and
    the pickle stay as River's own steps leave them).

    Built only where the order of every River dict is `names` (then River's dot products sum in
    that order too) and the schedules are constant; an example without every name, or with a
    value that is not finite, goes through River's own steps after a `flush`.
    """

    __slots__ = (
        "clip",
        "counts",
        "eps",
        "g2",
        "gradient",
        "intercept",
        "intercept_lr",
        "l2",
        "lr",
        "means",
        "model",
        "n_iterations",
        "names",
        "scaler",
        "values_of",
        "vars",
        "weights",
    )

    def __init__(self, steps: tuple[Any, Any], names: tuple[str, ...]) -> None:
        scaler, model = steps
        optimizer = model.optimizer
        self.scaler = scaler
        self.model = model
        self.names = names
        self.counts: list[int] = [scaler.counts[name] for name in names]
        self.means: list[float] = [scaler.means[name] for name in names]
        self.vars: list[float] = [scaler.vars[name] for name in names]
        self.weights: list[float] = [model._weights[name] for name in names]
        # AdaGrad's sums of squared gradients, per name (None for SGD)
        self.g2: list[float] | None = None
        self.eps = 0.0
        if type(optimizer) is optim.AdaGrad:
            self.g2 = [optimizer.g2[name] for name in names]
            self.eps = optimizer.eps
        self.intercept: float = model.intercept
        self.n_iterations: int = optimizer.n_iterations
        # Constant schedules (checked by `_logreg_steps`): the same rate at every step.
        self.lr: float = optimizer.lr.get(optimizer.n_iterations)
        self.intercept_lr: float = model.intercept_lr.get(optimizer.n_iterations)
        self.l2: float = model.l2
        self.clip: float = model.clip_gradient
        self.gradient: Callable[..., float] = model.loss.gradient
        self.values_of = _values_getter(names)

    @classmethod
    def build(cls, steps: tuple[Any, Any], names: tuple[str, ...]) -> _Flat | None:
        scaler, model = steps
        order = list(names)
        if (
            not names
            or list(scaler.counts) != order
            or list(scaler.means) != order
            or list(scaler.vars) != order
            or list(model._weights.keys()) != order
            or (type(model.optimizer) is optim.AdaGrad and list(model.optimizer.g2) != order)
        ):
            return None
        return cls(steps, names)

    def prepare(self, x: Mapping[str, float], use_log: bool) -> list[float] | None:
        """`Scorer._prepare(x)`'s values when `x` has every name with a finite value, else None."""
        try:
            raws = self.values_of(x) if type(x) is dict else tuple(x[n] for n in self.names)
        except KeyError:
            return None
        log1p = math.log1p
        out: list[float] = []
        for raw in raws:
            if raw is None:
                return None
            value = raw if type(raw) is float else float(raw)
            if value - value != 0.0:  # not finite
                return None
            if use_log and value != 0.0:  # log1p(+-0.0) is +-0.0
                value = log1p(value) if value >= 0 else -log1p(-value)
            out.append(value)
        return out

    def step(self, xt: list[float], label: bool, predict: bool) -> float:
        """
        Learn one prepared example; with `predict`, first the probability River's
        `predict_proba_one` gives for it (its True entry), else 0.0.
        """
        counts = self.counts
        means = self.means
        vars_ = self.vars
        weights = self.weights
        after: list[float] = []
        z = 0.0  # the dot product of the weights and the values scaled before learning
        for k, xi in enumerate(xt):
            var = vars_[k]
            old_mean = means[k]
            if predict:
                # StandardScaler.transform_one, before learning, times the weight
                z += weights[k] * ((xi - old_mean) / var**0.5 if var else 0.0)
            # StandardScaler.learn_one, then transform_one
            count = counts[k] + 1
            counts[k] = count
            mean = old_mean + (xi - old_mean) / count
            means[k] = mean
            var = var + ((xi - old_mean) * (xi - mean) - var) / count
            vars_[k] = var
            after.append((xi - mean) / var**0.5 if var else 0.0)
        p = river_math.sigmoid(z + self.intercept) if predict else 0.0
        # LogisticRegression.learn_one (`_learn_regression`): the gradient at the scaled values
        dot = 0.0
        for w, xi in zip(weights, after, strict=True):
            dot += w * xi
        loss_gradient = self.gradient(y_true=label, y_pred=dot + self.intercept)
        loss_gradient *= 1.0  # the sample weight
        clip = self.clip
        loss_gradient = float(max(min(loss_gradient, clip), -clip))
        l2 = self.l2
        lr = self.lr
        self.intercept -= self.intercept_lr * loss_gradient
        g2 = self.g2
        if g2 is not None:
            # AdaGrad._step_with_dict over the gradient (x * loss gradient + l2 * w)
            eps = self.eps
            for k, xi in enumerate(after):
                w = weights[k]
                gi = xi * loss_gradient + l2 * w if l2 else xi * loss_gradient
                total = g2[k] + gi**2
                g2[k] = total
                weights[k] = w - lr / (total + eps) ** 0.5 * gi
        elif l2:
            for k, xi in enumerate(after):
                w = weights[k]
                weights[k] = w - lr * (xi * loss_gradient + l2 * w)
        else:
            for k, xi in enumerate(after):
                weights[k] -= lr * (xi * loss_gradient)
        self.n_iterations += 1
        return p

    def flush(self) -> None:
        """Write the values back into River's objects."""
        scaler = self.scaler
        model = self.model
        counts, means, vars_ = scaler.counts, scaler.means, scaler.vars
        weights = model._weights
        for k, name in enumerate(self.names):
            counts[name] = self.counts[k]
            means[name] = self.means[k]
            vars_[name] = self.vars[k]
            weights[name] = self.weights[k]
        if self.g2 is not None:
            g2 = model.optimizer.g2
            for k, name in enumerate(self.names):
                g2[name] = self.g2[k]
        model.intercept = self.intercept
        model.optimizer.n_iterations = self.n_iterations


@functools.cache
def _fast_learning_agrees() -> bool:
    """
    Whether the fast paths (`_learn_logreg`, `_predict_learn_logreg`, `_Flat`, and the River
    steps they call) predict and learn exactly as River's own `Pipeline.predict_proba_one` and
    `Pipeline.learn_one` do: the same probabilities, and the same pickle after learning (so the
    same bits and the same key order). Checked once per process on a few made-up examples; if
    a River release changes its arithmetic or its internals, the fast paths turn off. Both
    optimizers are checked.
    """
    return all(_fast_learning_agrees_for(ModelConfig(optimizer=name)) for name in OPTIMIZERS)


def _fast_learning_agrees_for(config: ModelConfig) -> bool:
    examples = [
        ({"a": 1.5, "b": 0.0, "c": -2.25}, True),
        ({"a": 0.25, "b": 3.0, "c": 0.0}, False),
        ({"a": 1.5, "b": 0.0, "c": 7.0}, True),
        ({"a": -4.0, "b": 0.125, "c": 1.0}, False),
    ]
    reference = _build_pipeline(config)
    fast = _build_pipeline(config)
    fused = _build_pipeline(config)
    flat_pipeline = _build_pipeline(config)
    for pipeline in (reference, fast, fused, flat_pipeline):
        # builds River's plan, as Scorer.learn_one's first call does
        pipeline.learn_one(*examples[0])
    steps = (fast.steps["scale"], fast.steps["model"])
    fused_steps = (fused.steps["scale"], fused.steps["model"])
    names = tuple(sorted(examples[0][0]))
    flat = _Flat.build((flat_pipeline.steps["scale"], flat_pipeline.steps["model"]), names)
    if flat is None:
        return False
    for x, label in examples[1:]:
        expected = reference.predict_proba_one(x)
        reference.learn_one(x, label)
        _learn_logreg(steps, dict(x), label)
        xt, proba = _predict_learn_logreg(fused_steps, x, names, False, label)
        flat_xt = flat.prepare(x, False)
        if flat_xt is None:
            return False
        p = flat.step(flat_xt, label, True)
        if proba != expected or xt != x or {False: 1.0 - p, True: p} != expected:
            return False
    flat.flush()
    reference_bytes = _pickle(reference)
    return (
        _pickle(fast) == reference_bytes
        and _pickle(fused) == reference_bytes
        and _pickle(flat_pipeline) == reference_bytes
    )


@functools.cache
def _pack(n: int) -> struct.Struct:
    """The layout of one learned example in the version's hash: the label, then n values."""
    return struct.Struct(f"<?{n}d")


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _initial_digest(config: ModelConfig) -> bytes:
    text = repr(sorted(dataclasses.asdict(config).items())).encode()
    return hashlib.blake2b(text, digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class _Linear:
    """
    A learned logistic regression frozen into flat tuples: the same arithmetic as River's
    StandardScaler followed by LogisticRegression, in one pass over the features.
    """

    names: tuple[str, ...]
    means: tuple[float, ...]
    stds: tuple[float, ...]
    """0.0 where the variance is 0 (River then maps the feature to 0)."""
    weights: tuple[float, ...]
    intercept: float
    terms: tuple[tuple[str, float, float, float, float | None], ...]
    """(name, mean, std, weight, part at 0) of every feature whose std is not 0, in `names`
    order (a feature with std 0 adds exactly 0.0 to the logit: nothing, but the sign of a
    zero). The part of a value of 0 (the commonest value: no tickets, no returns...) is
    computed once; None where +0.0 and -0.0 would give parts that differ in sign."""
    values_of: Callable[[Mapping[str, float]], tuple[float | None, ...]]
    """The values of the terms' names in a mapping, as a tuple, in their order."""

    @classmethod
    def build(cls, pipeline: Any, names: tuple[str, ...]) -> _Linear:
        scaler = pipeline.steps["scale"]
        model = pipeline.steps["model"]
        weights = model.weights
        means, stds, ws = [], [], []
        for name in names:
            # .get, not [], on River's defaultdicts: reading must not add entries.
            var = scaler.vars.get(name, 0.0)
            means.append(scaler.means.get(name, 0.0))
            stds.append(var**0.5 if var else 0.0)
            ws.append(weights.get(name, 0.0))
        terms = tuple(
            (name, mean, std, weight, _part_at_zero(mean, std, weight))
            for name, mean, std, weight in zip(names, means, stds, ws, strict=True)
            if std
        )
        return cls(
            names,
            tuple(means),
            tuple(stds),
            tuple(ws),
            float(model.intercept),
            terms,
            _values_getter(tuple(term[0] for term in terms)),
        )

    def explain(
        self, x: Mapping[str, float], use_log: bool, *, want: bool
    ) -> tuple[float, dict[str, float]]:
        # The per-event path: every operation below is the one River does, in the same order
        # (`weight * ((value - mean) / std)` summed onto the intercept in `names` order), so
        # the result does not change in the last bit; only the bookkeeping around it is lean.
        parts: dict[str, float] = {}
        z = self.intercept
        log1p = math.log1p
        terms = self.terms
        values: tuple[float | None, ...] | None = None
        if type(x) is dict:  # a plain dict: no __missing__ to call (or to add keys)
            try:
                values = self.values_of(x)  # every name at once; KeyError if one is missing
            except KeyError:
                values = None
        if values is None:
            values = tuple(x.get(term[0]) for term in terms)
        for raw, (name, mean, std, weight, at_zero) in zip(values, terms, strict=True):
            if raw is None:
                continue
            if raw == 0.0 and at_zero is not None:
                part = at_zero  # log1p(0.0) == 0.0: the same operations on the same values
            else:
                value = raw if type(raw) is float else float(raw)
                if value - value != 0.0:  # not finite (NaN or infinite)
                    continue
                if use_log:
                    value = log1p(value) if value >= 0 else -log1p(-value)
                part = weight * ((value - mean) / std)
            z += part
            if want:
                parts[name] = part
        # River's sigmoid saturates outside [-30, 30].
        if z < -30:
            p = 0.0
        elif z > 30:
            p = 1.0
        else:
            p = 1.0 / (1.0 + math.exp(-z))
        return min(max(p, _EPS), 1.0 - _EPS), parts


class Scorer:
    """
    The one mutable object of the core (STYLE.md): learn_one changes it in place.

    The same config and the same sequence of `learn_one` calls give the same predictions, the
    same `version` and the same bytes from `to_bytes`. `predict_one` and `contributions` never
    change the scorer.
    """

    __slots__ = (
        "_compiled",
        "_config",
        "_digest",
        "_flat",
        "_known",
        "_n_labels",
        "_names",
        "_pipeline",
        "_population",
        "_version",
    )

    def __init__(self, config: ModelConfig = DEFAULT_CONFIG) -> None:
        self._config = config
        self._pipeline: Any = _build_pipeline(config)
        self._n_labels = 0
        # Feature names the model has learned from, sorted; the strings are shared with the
        # pipeline's own dicts so a pickle of the scorer is the same whatever objects the
        # caller's keys were.
        self._names: tuple[str, ...] = ()
        self._known: frozenset[str] = frozenset()
        # A chained hash of the config and every learned example: the `version`.
        self._digest = _initial_digest(config)
        self._compiled: _Linear | None = None
        self._version: str | None = None  # `version`, built on first use after each change
        # The learning state in flat lists while the model learns (`_Flat`): the pipeline is
        # stale until `_flush`, which everything that reads the pipeline calls first.
        self._flat: _Flat | None = None
        # What the learner knows of the population (evidence per cohort, gaps): counts over
        # the learned examples, so they follow from the same history as the weights.
        self._population = Population()

    @property
    def config(self) -> ModelConfig:
        """
        The config the scorer was built with.
        """
        return self._config

    @property
    def n_labels(self) -> int:
        """
        Resolved labels learned so far.
        """
        return self._n_labels

    def evidence(self, x: Mapping[str, float]) -> int:
        """
        Labels learned from customers like `x` (its cohort of event count and tenure): what
        the model's weight in the blend grows with (`model_weight`).
        """
        return self._population.evidence(x)

    def horizon_days(self, floor_days: float) -> float:
        """
        The label horizon learned from the gaps between activities in the examples so far
        (`Population.horizon_days`), at least `floor_days`.
        """
        return self._population.horizon_days(floor_days)

    @property
    def population(self) -> Population:
        """The population counts (read-only by convention: the learner owns them)."""
        return self._population

    @property
    def version(self) -> str:
        """
        `{kind}-{n_labels}-{hash}`: changes with every `learn_one`, equal for equal histories.

        The hash chains the config and every learned example, so two scorers that forked from
        one checkpoint and then learned different examples have different versions.
        """
        version = self._version
        if version is None:
            version = f"{self._config.kind}-{self._n_labels}-{self._digest.hex()[:12]}"
            self._version = version
        return version

    def _prepare(self, x: Mapping[str, float]) -> dict[str, float]:
        """
        The known features of `x`, in sorted order, non-finite values dropped, transformed.
        """
        get = x.get
        out: dict[str, float] = {}
        if self._config.log1p:
            log1p = math.log1p
            for name in self._names:
                raw = get(name)
                if raw is None:
                    continue
                value = raw if type(raw) is float else float(raw)
                if value == 0.0:
                    out[name] = value  # log1p(+-0.0) is +-0.0
                elif value - value == 0.0:  # finite
                    out[name] = log1p(value) if value >= 0 else -log1p(-value)
            return out
        for name in self._names:
            raw = get(name)
            if raw is None:
                continue
            value = raw if type(raw) is float else float(raw)
            if value - value == 0.0:  # finite
                out[name] = value
        return out

    def predict_one(self, x: Mapping[str, float]) -> float:
        """
        P(churn | x) of the learned model alone, in (0, 1).

        Args:
            x: feature name -> value. Missing names, names never learned and non-finite
                values are all fine (see the module docstring); `x` is not changed.

        Returns:
            The probability, clipped to [1e-6, 1 - 1e-6]; 0.5 before the first `learn_one`.
        """
        return self._predict_prepared(self._prepare(x))

    def score_one(self, x: Mapping[str, float]) -> float:
        """
        `predict_one` for a model that scores many events between learning (a checkpoint):
        the logistic regression frozen into flat arrays, built on first use. It agrees with
        `predict_one` to rounding (about 1e-15) and, like it, gives the same answer for the
        same history whatever was asked before.
        """
        linear = self._linear()
        if linear is None:
            return self.predict_one(x)
        return linear.explain(x, self._config.log1p, want=False)[0]

    def _linear(self) -> _Linear | None:
        """The logistic regression as flat arrays (the per-event path), built once per state."""
        if self._config.kind != "logreg" or self._n_labels == 0:
            return None
        if self._compiled is None:
            self._flush()
            self._compiled = _Linear.build(self._pipeline, self._names)
        return self._compiled

    def _predict_prepared(self, xt: dict[str, float]) -> float:
        if self._n_labels == 0:
            # Nothing learned: no opinion. River's ARF builds its ensemble on the first
            # predict_proba_one (sizing its feature subspaces from that input), so a predict
            # before any learn would change the model; this keeps predicting read-only.
            return 0.5
        self._flush()
        steps = self._logreg_steps()
        if steps is None:
            proba = self._pipeline.predict_proba_one(xt)
        else:
            # What Pipeline.predict_proba_one does (no learning during predict), minus its
            # dispatch.
            proba = _predict_proba(steps[1], steps[0].transform_one(xt))
        total = sum(proba.values())
        p = proba.get(True, 0.0) / total if total > 0 else 0.5
        return min(max(p, _EPS), 1.0 - _EPS)

    def _logreg_steps(self) -> tuple[Any, Any] | None:
        """
        The scaler and the logistic regression of a `logreg` pipeline that has learned (so
        River has built its execution plan, which is part of the pickled state), for the
        fast path of `_learn_logreg`; None wherever the pipeline must run itself.
        """
        pipeline = self._pipeline
        if (
            self._config.kind != "logreg"
            or pipeline._plan is None
            or compose.Pipeline._LEARN_UNSUPERVISED_DURING_PREDICT
            or not _fast_learning_agrees()
        ):
            return None
        steps = pipeline.steps
        scaler = steps["scale"]
        model = steps["model"]
        if (
            not scaler.with_std
            or scaler.window_size is not None
            or type(model.optimizer) not in (optim.SGD, optim.AdaGrad)
            or type(model.optimizer.lr) is not optim.schedulers.Constant
            or type(model.intercept_lr) is not optim.schedulers.Constant
            or type(model.loss) is not optim.losses.Log
            or model.l1 != 0
        ):
            return None
        return scaler, model

    def learn_one(self, x: Mapping[str, float], churned: bool) -> None:
        """
        Learn one resolved label.

        Args:
            x: the features of the snapshot the label belongs to; `x` is not changed.
            churned: True when the customer churned within the label horizon.
        """
        self._population.observe(x)
        if self._learn_flat(x, churned, predict=False) is None:
            self._learn_prepared(x, None, churned)

    def _flush(self) -> None:
        """Bring the River pipeline up to date with the flat learning state, and drop it."""
        flat = self._flat
        if flat is not None:
            self._flat = None
            flat.flush()

    def _learn_flat(self, x: Mapping[str, float], churned: bool, *, predict: bool) -> float | None:
        """
        `learn_one` (with `predict`, `predict_learn_one`) on the flat learning state, where it
        applies: a `logreg` model that has learned, and `x` with exactly the known names, every
        value finite. Returns the prediction made before learning (0.0 without `predict`), or
        None, having done nothing, where it does not apply.
        """
        flat = self._flat
        if flat is None:
            steps = self._logreg_steps() if self._n_labels else None
            if steps is None:
                return None
            flat = _Flat.build(steps, self._names)
            if flat is None:
                return None
            self._flat = flat
        if len(x) != len(flat.names):
            return None
        xt = flat.prepare(x, self._config.log1p)
        if xt is None:
            return None
        label = bool(churned)
        p = flat.step(xt, label, predict)
        self._compiled = None
        self._version = None
        self._n_labels += 1
        # `_chain`, with every name present
        packed = _pack(len(xt)).pack(label, *xt)
        self._digest = hashlib.blake2b(self._digest + packed, digest_size=16).digest()
        if not predict:
            return 0.0
        # `_predict_prepared`'s arithmetic on River's {False: 1 - p, True: p}
        total = (1.0 - p) + p
        p = p / total if total > 0 else 0.5
        return min(max(p, _EPS), 1.0 - _EPS)

    def predict_learn_one(self, x: Mapping[str, float], churned: bool) -> float:
        """
        `predict_one(x)`, then `learn_one(x, churned)`: progressive validation's step (predict
        before learn), preparing the features once where the model's names do not change.

        Returns:
            The prediction made before learning.
        """
        self._population.observe(x)
        p_flat = self._learn_flat(x, churned, predict=True)
        if p_flat is not None:
            return p_flat
        self._flush()
        steps = self._logreg_steps() if self._n_labels else None
        if steps is None or not self._known.issuperset(x):
            xt = self._prepare(x)
            p = self._predict_prepared(xt)
            self._learn_prepared(x, xt, churned)
            return p
        # The names stay as they are: prepare, predict and learn in one pass.
        label = bool(churned)
        xt, proba = _predict_learn_logreg(steps, x, self._names, self._config.log1p, label)
        self._compiled = None
        self._version = None
        self._n_labels += 1
        self._digest = _chain(self._digest, label, xt, self._names)
        total = sum(proba.values())
        p = proba.get(True, 0.0) / total if total > 0 else 0.5
        return min(max(p, _EPS), 1.0 - _EPS)

    def _learn_prepared(
        self, x: Mapping[str, float], xt: dict[str, float] | None, churned: bool
    ) -> None:
        self._flush()
        known = self._known
        # A name joins the model with its first finite value, so every known name has
        # statistics in the scaler (whose dicts would otherwise grow while predicting).
        if not known.issuperset(x):
            new = [name for name, value in x.items() if name not in known and math.isfinite(value)]
            if new:
                self._names = tuple(sorted({*self._names, *new}))
                self._known = frozenset(self._names)
                self._digest = hashlib.blake2b(
                    self._digest + "\x1f".join(self._names).encode(), digest_size=16
                ).digest()
                xt = None  # prepared with the old names
        if xt is None:
            xt = self._prepare(x)
        label = bool(churned)
        self._compiled = None
        self._version = None
        steps = self._logreg_steps()
        if steps is None:
            self._pipeline.learn_one(xt, label)
        else:
            _learn_logreg(steps, xt, label)
        self._n_labels += 1
        self._digest = _chain(self._digest, label, xt, self._names)

    def contributions(self, x: Mapping[str, float]) -> dict[str, float]:
        """
        The signed contribution of each feature of `x` to the logit of `predict_one(x)`.

        For `logreg` this is exact: weight * standardised (transformed) value, and
        `logit(predict_one(x)) == logit(predict_one({})) + sum(contributions(x))` (the
        intercept is the logit of the empty input), up to the clipping of `predict_one`.
        For the trees it is an occlusion approximation: `logit(p(x)) - logit(p(x without
        the feature))`, the feature being treated as missing (the tree's most common path);
        the parts need not add up to the whole.

        Args:
            x: as for `predict_one`.

        Returns:
            One entry per key of `x`; names the model has not learned and non-finite values
            contribute 0.0.
        """
        linear = self._linear()
        if linear is not None:
            result = dict.fromkeys(x, 0.0)
            result.update(linear.explain(x, self._config.log1p, want=True)[1])
            return result
        xt = self._prepare(x)
        result = dict.fromkeys(x, 0.0)
        if not xt:
            return result
        if self._config.kind == "logreg":
            self._flush()
            scaled = self._pipeline.steps["scale"].transform_one(xt)
            weights = self._pipeline.steps["model"].weights
            for name, value in scaled.items():
                result[name] = weights.get(name, 0.0) * value
            return result
        whole = _logit(self._predict_prepared(xt))
        for name in xt:
            without = {key: value for key, value in xt.items() if key != name}
            result[name] = whole - _logit(self._predict_prepared(without))
        return result

    def explain_one(self, x: Mapping[str, float]) -> tuple[float, dict[str, float]]:
        """
        `predict_one(x)` and `contributions(x)` together, computed once: what scoring needs
        on the per-event path.
        """
        linear = self._linear()
        if linear is None:
            return self.predict_one(x), self.contributions(x)
        p, parts = linear.explain(x, self._config.log1p, want=True)
        result = dict.fromkeys(x, 0.0)
        result.update(parts)
        return p, result

    def to_bytes(self) -> bytes:
        """
        A checkpoint: magic, format version, sha256 of the payload, then the payload.

        The payload is a pickle of the config (as a dict), the River pipeline and the
        counters. The same history gives the same bytes, and `from_bytes(b).to_bytes() == b`.
        """
        self._flush()
        state = {
            "config": dataclasses.asdict(self._config),
            "pipeline": self._pipeline,
            "n_labels": self._n_labels,
            "names": self._names,
            "digest": self._digest,
            "population": self._population.to_state(),
            "river": RIVER_VERSION,
        }
        # Pickle shares an object only where the source shares it (e.g. River names a pipeline
        # step after its class, so one string object appears twice), and an unpickled copy
        # shares differently; one round trip brings every scorer with the same history to the
        # same bytes, fresh or restored.
        first = _pickle(state)
        payload = _pickle(pickle.loads(first))  # noqa: S301 (our own bytes, just written)
        return _HEADER.pack(MAGIC, FORMAT_VERSION, hashlib.sha256(payload).digest()) + payload

    @classmethod
    def from_bytes(cls, data: bytes) -> Scorer:
        """
        Restore a scorer from `to_bytes`.

        Only load checkpoints churnwatch wrote itself (its own Redis): the payload is a
        pickle. The checksum catches truncation and corruption, not tampering.

        Args:
            data: the checkpoint.

        Returns:
            A scorer with the same predictions, version and bytes as the one saved.

        Raises:
            ModelFormatError: wrong magic, unknown format version, bad checksum or a payload
                that is not a churnwatch model; the message says what was expected and what
                arrived.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            msg = f"expected a model checkpoint as bytes, got {type(data).__name__}"
            raise ModelFormatError(msg)
        data = bytes(data)
        if len(data) < _HEADER.size:
            msg = (
                f"expected a model checkpoint of at least {_HEADER.size} bytes (magic "
                f"{MAGIC!r}, format version, checksum), got {len(data)} bytes: {data[:16]!r}"
            )
            raise ModelFormatError(msg)
        magic, version, checksum = _HEADER.unpack_from(data)
        if magic != MAGIC:
            msg = f"expected a churnwatch model checkpoint starting with {MAGIC!r}, got {magic!r}"
            raise ModelFormatError(msg)
        if version != FORMAT_VERSION:
            msg = f"expected model format version {FORMAT_VERSION}, got version {version}"
            raise ModelFormatError(msg)
        payload = data[_HEADER.size :]
        actual = hashlib.sha256(payload).digest()
        if actual != checksum:
            msg = (
                f"expected a payload with sha256 {checksum.hex()[:16]}..., got "
                f"{actual.hex()[:16]}... over {len(payload)} bytes (truncated or corrupt)"
            )
            raise ModelFormatError(msg)
        try:
            state = pickle.loads(payload)  # noqa: S301 (checksummed; our own checkpoints only)
            written = state.get("river")
            if written is not None and written != RIVER_VERSION:
                msg = (
                    f"expected a model checkpoint written with river {RIVER_VERSION} (this "
                    f"process's), got one written with river {written}: its weights and pickle "
                    f"are River's; install river=={written}, or clear the checkpoints and let "
                    "the learner rebuild them from churn.training"
                )
                raise ModelFormatError(msg)
            config = ModelConfig(**state["config"])
            scorer = cls.__new__(cls)
            scorer._config = config
            scorer._pipeline = state["pipeline"]
            scorer._n_labels = int(state["n_labels"])
            scorer._names = tuple(state["names"])
            scorer._known = frozenset(scorer._names)
            scorer._digest = bytes(state["digest"])
            scorer._compiled = None
            scorer._version = None
            scorer._flat = None
            scorer._population = Population.from_state(state.get("population"))
        except (
            pickle.UnpicklingError,
            AttributeError,
            EOFError,
            ImportError,
            IndexError,
            KeyError,
            TypeError,
            ValueError,
            ConfigError,
        ) as exc:
            msg = f"expected a pickled churnwatch model state, got a payload that fails: {exc!r}"
            raise ModelFormatError(msg) from exc
        if not isinstance(scorer._pipeline, compose.Pipeline):
            msg = f"expected a River Pipeline, got {type(scorer._pipeline).__name__}"
            raise ModelFormatError(msg)
        return scorer

    def copy(self) -> Scorer:
        """
        An independent deep copy; scorers freeze one per model epoch.
        """
        self._flush()
        twin = Scorer.__new__(Scorer)
        twin._config = self._config
        twin._pipeline = _copy.deepcopy(self._pipeline)
        twin._n_labels = self._n_labels
        twin._names = self._names
        twin._known = self._known
        twin._digest = self._digest
        twin._compiled = None
        twin._version = self._version
        twin._flat = None
        twin._population = self._population.copy()
        return twin

    def __repr__(self) -> str:
        return f"Scorer({self.version!r}, features={len(self._names)})"


def model_weight(n_labels: int, config: ModelConfig) -> float:
    """
    The weight of the learned model in `blend` after `n_labels` resolved labels.

    Args:
        n_labels: resolved labels learned so far (the engine passes those of the customer's
            cohort, `Scorer.evidence`).
        config: `min_labels` and `prior_weight_half_life`.

    Returns:
        0 below `config.min_labels`, then `n / (n + half_life)`: monotone, tending to 1.
    """
    if n_labels < 0:
        msg = f"n_labels must be >= 0, got {n_labels}"
        raise ValueError(msg)
    if n_labels < config.min_labels:
        return 0.0
    return n_labels / (n_labels + config.prior_weight_half_life)


def blend(
    prior_probability: float, model_probability: float, *, n_labels: int, config: ModelConfig
) -> float:
    """
    The churn probability the system acts on: the prior, leaning toward the model with labels.

    Args:
        prior_probability: from the rules file's points-based prior, in [0, 1].
        model_probability: `Scorer.predict_one`, in [0, 1].
        n_labels: the scorer's `n_labels`.
        config: the weights (see `model_weight`).

    Returns:
        `(1 - w) * prior + w * model` with `w = model_weight(n_labels, config)`.
    """
    for name, p in (
        ("prior_probability", prior_probability),
        ("model_probability", model_probability),
    ):
        if not 0.0 <= p <= 1.0:
            msg = f"{name} must be in [0, 1], got {p}"
            raise ValueError(msg)
    weight = model_weight(n_labels, config)
    return (1.0 - weight) * prior_probability + weight * model_probability


def engagement_score(churn_probability: float) -> float:
    """
    0..100, higher is healthier: `round(100 * (1 - p), 2)`.

    Args:
        churn_probability: in [0, 1].

    Returns:
        The score, rounded to two decimals.
    """
    if not 0.0 <= churn_probability <= 1.0:
        msg = f"churn_probability must be in [0, 1], got {churn_probability}"
        raise ValueError(msg)
    return round(100.0 * (1.0 - churn_probability), 2)


_LOSS_EPS: Final = 1e-15


class ProgressiveValidation:
    """
    Live quality of the model, predict before learn, over the last `window` examples.

    Exact windowed ROC AUC (ties count one half) and mean log loss, computed lazily when read
    and cached until the next `update`; `update` itself is O(1).
    """

    __slots__ = ("_auc", "_auc_stale", "_count", "_examples", "_log_loss", "_stale", "window")

    def __init__(self, window: int = 5000) -> None:
        if window < 1:
            msg = f"window must be >= 1 example, got {window}"
            raise ValueError(msg)
        self.window = window
        self._examples: deque[tuple[float, bool]] = deque(maxlen=window)
        self._count = 0
        self._stale = True
        self._auc_stale = True
        self._auc: float | None = None
        self._log_loss: float | None = None

    def update(self, churned: bool, probability: float) -> None:
        """
        Record one example: the probability predicted before its label was learned.

        Args:
            churned: the resolved label.
            probability: the model's prediction for it, in [0, 1].
        """
        if not 0.0 <= probability <= 1.0:
            msg = f"probability must be in [0, 1], got {probability}"
            raise ValueError(msg)
        self._examples.append((float(probability), bool(churned)))
        self._count += 1
        self._stale = True
        self._auc_stale = True

    def _refresh(self) -> None:
        # The log loss; the AUC has its own cache (`auc`), each is computed only when read.
        if not self._stale:
            return
        self._stale = False
        examples = self._examples
        if not examples:
            self._log_loss = None
            return
        log = math.log
        low, high = _LOSS_EPS, 1.0 - _LOSS_EPS
        losses = [
            -log(q if y else 1.0 - q) for q, y in ((min(max(p, low), high), y) for p, y in examples)
        ]
        self._log_loss = math.fsum(losses) / len(losses)

    @property
    def auc(self) -> float | None:
        """
        ROC AUC over the window; None until both classes are in it.
        """
        if self._auc_stale:
            self._auc_stale = False
            self._auc = _exact_auc(self._examples) if self._examples else None
        return self._auc

    @property
    def log_loss(self) -> float | None:
        """
        Mean log loss over the window (probabilities clipped to 1e-15); None when empty.
        """
        self._refresh()
        return self._log_loss

    @property
    def count(self) -> int:
        """
        Examples seen in all, not only those in the window.
        """
        return self._count

    def to_dict(self) -> dict[str, float | int | None]:
        """
        `count`, `window` (examples in it now), `auc` and `log_loss`, for metrics.
        """
        return {
            "count": self._count,
            "window": len(self._examples),
            "auc": self.auc,
            "log_loss": self.log_loss,
        }


def _exact_auc(examples: deque[tuple[float, bool]] | list[tuple[float, bool]]) -> float | None:
    """
    Mann-Whitney U over average ranks: P(score of a positive > score of a negative) + ties / 2.
    """
    positives = sum(1 for _, y in examples if y)
    negatives = len(examples) - positives
    if positives == 0 or negatives == 0:
        return None
    # Each distinct score, in ascending order, is one group of ties: positions i .. j-1 of
    # the sorted scores, where each positive gets the average rank (i + 1 + j) / 2. (A group
    # without positives adds 0.0, which changes nothing.)
    sizes = Counter(p for p, _ in examples)
    tied = Counter(p for p, y in examples if y)
    rank_sum = 0.0
    i = 0
    for score in sorted(sizes):
        j = i + sizes[score]
        tied_positives = tied.get(score, 0)
        if tied_positives:
            rank_sum += tied_positives * (i + 1 + j) / 2.0
        i = j
    u = rank_sum - positives * (positives + 1) / 2.0
    return u / (positives * negatives)
