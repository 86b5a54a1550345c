"""
How well a score ranks churners, and the baselines the learned model is measured against.

A ranking is one risk per customer (higher = more likely to churn) and the customer's label.
Every measure here is exact and deterministic (ties are handled, never broken at random):

- ROC AUC: `replay.evaluation.roc_auc` (ties count one half).
- Average precision: the area under the precision-recall step curve, with tied scores taken
  as one threshold (as scikit-learn computes it).
- Precision at the top q: the share of churners among the q riskiest customers; customers
  tied at the cut count with the share of them that fits.
- Lift at q: precision at the top q over the base rate.
- Brier score: mean squared error of a probability (only for scores that are probabilities).
- Calibration: customers in ten bins of equal size by predicted probability; mean prediction
  against the observed rate per bin.

Baselines: recency (days since the last event) and the points-based prior are columns of the
feature vector and of the scoring; the batch model is a logistic regression fitted offline by
scikit-learn (the `eval` extra) on the same inputs as the online model (the features, and the
prior's logit where the rules file gives it to the model), prepared as the online model prepares
them (signed log1p, then standardised). Without scikit-learn it is skipped, and says so.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from churnwatch.core.features import FEATURE_NAMES
from churnwatch.replay.evaluation import roc_auc

Floats = npt.NDArray[np.float64]

TOP_SHARES: Final = (0.05, 0.10)
"""The shares of riskiest customers that precision and lift are reported at."""
CURVE_POINTS: Final = 200
"""At most this many points per plotted curve."""
CALIBRATION_BINS: Final = 10


@dataclass(frozen=True, slots=True)
class Curve:
    """Points of a plotted curve (thinned to at most `CURVE_POINTS`)."""

    x: tuple[float, ...]
    y: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class CalibrationBin:
    count: int
    mean_predicted: float
    observed_rate: float


@dataclass(frozen=True, slots=True)
class RankingMeasures:
    """How one score ranks one population."""

    name: str
    label: str
    """What the score is, in words."""
    roc_auc: float | None
    average_precision: float | None
    precision_at: dict[float, float | None]
    """Top share (0.05, 0.10) -> precision among that share of riskiest customers."""
    lift_at: dict[float, float | None]
    brier: float | None
    """None for a score that is not a probability."""
    roc: Curve
    pr: Curve
    calibration: tuple[CalibrationBin, ...]


def _thin(xs: Sequence[float], ys: Sequence[float]) -> Curve:
    n = len(xs)
    if n <= CURVE_POINTS:
        return Curve(tuple(xs), tuple(ys))
    keep = sorted({round(i * (n - 1) / (CURVE_POINTS - 1)) for i in range(CURVE_POINTS)})
    return Curve(tuple(xs[i] for i in keep), tuple(ys[i] for i in keep))


def _groups(labels: Sequence[bool], scores: Sequence[float]) -> list[tuple[int, int]]:
    """(positives, count) per distinct score, riskiest first."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    groups: list[tuple[int, int]] = []
    i = 0
    while i < len(order):
        j = i
        positives = 0
        while j < len(order) and scores[order[j]] == scores[order[i]]:
            positives += labels[order[j]]
            j += 1
        groups.append((positives, j - i))
        i = j
    return groups


def roc_curve(labels: Sequence[bool], scores: Sequence[float]) -> Curve:
    """False-positive rate against true-positive rate, one point per distinct score."""
    positives = sum(labels)
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return Curve((), ())
    xs, ys = [0.0], [0.0]
    tp = fp = 0
    for pos, count in _groups(labels, scores):
        tp += pos
        fp += count - pos
        xs.append(fp / negatives)
        ys.append(tp / positives)
    return _thin(xs, ys)


def precision_recall(labels: Sequence[bool], scores: Sequence[float]) -> tuple[float | None, Curve]:
    """Average precision and the precision-recall curve (recall on x)."""
    positives = sum(labels)
    if positives == 0:
        return None, Curve((), ())
    xs: list[float] = []
    ys: list[float] = []
    tp = seen = 0
    previous_recall = 0.0
    ap = 0.0
    for pos, count in _groups(labels, scores):
        tp += pos
        seen += count
        recall = tp / positives
        precision = tp / seen
        ap += (recall - previous_recall) * precision
        previous_recall = recall
        xs.append(recall)
        ys.append(precision)
    return ap, _thin(xs, ys)


def average_precision_of(labels: Sequence[bool], scores: Sequence[float]) -> float | None:
    """The area under the precision-recall step curve (tied scores are one threshold)."""
    return precision_recall(labels, scores)[0]


def precision_at(labels: Sequence[bool], scores: Sequence[float], share: float) -> float | None:
    """
    The share of positives among the `share` riskiest customers (at least one customer);
    customers tied at the cut count with the fraction of them that fits.
    """
    n = len(labels)
    if n == 0:
        return None
    k = max(1, math.ceil(share * n))
    taken = 0
    hits = 0.0
    for pos, count in _groups(labels, scores):
        room = k - taken
        if room <= 0:
            break
        if count <= room:
            hits += pos
            taken += count
        else:
            hits += pos * room / count
            taken = k
    return hits / k


def brier(labels: Sequence[bool], probabilities: Sequence[float]) -> float | None:
    """Mean squared difference between the probability and the outcome."""
    if not labels:
        return None
    return math.fsum((p - float(y)) ** 2 for y, p in zip(labels, probabilities, strict=True)) / len(
        labels
    )


def calibration(
    labels: Sequence[bool], probabilities: Sequence[float], bins: int = CALIBRATION_BINS
) -> tuple[CalibrationBin, ...]:
    """Customers in `bins` bins of (nearly) equal size by predicted probability."""
    n = len(labels)
    if n == 0:
        return ()
    order = sorted(range(n), key=lambda i: probabilities[i])
    out: list[CalibrationBin] = []
    for b in range(bins):
        part = order[b * n // bins : (b + 1) * n // bins]
        if not part:
            continue
        out.append(
            CalibrationBin(
                count=len(part),
                mean_predicted=math.fsum(probabilities[i] for i in part) / len(part),
                observed_rate=sum(labels[i] for i in part) / len(part),
            )
        )
    return tuple(out)


def measure(
    name: str,
    label: str,
    labels: Sequence[bool],
    scores: Sequence[float],
    *,
    probability: bool,
) -> RankingMeasures:
    """Every measure of one score over one labelled population."""
    base = sum(labels) / len(labels) if labels else 0.0
    ap, pr = precision_recall(labels, scores)
    precisions = {share: precision_at(labels, scores, share) for share in TOP_SHARES}
    lifts = {
        share: (None if p is None or base == 0 else p / base) for share, p in precisions.items()
    }
    return RankingMeasures(
        name=name,
        label=label,
        roc_auc=roc_auc(list(labels), list(scores)),
        average_precision=ap,
        precision_at=precisions,
        lift_at=lifts,
        brier=brier(labels, scores) if probability else None,
        roc=roc_curve(labels, scores),
        pr=pr,
        calibration=calibration(labels, scores) if probability else (),
    )


# -- the batch model ------------------------------------------------------------------------


def prepare(x: Mapping[str, float], names: Sequence[str] = FEATURE_NAMES) -> list[float]:
    """
    A feature vector as a row in `names` order (the model's inputs, `RulesFile.model_inputs`),
    through the online model's signed log1p (missing and non-finite values become 0).
    """
    row = []
    for name in names:
        value = float(x.get(name, 0.0))
        if not math.isfinite(value):
            value = 0.0
        row.append(math.log1p(value) if value >= 0 else -math.log1p(-value))
    return row


@dataclass(frozen=True, slots=True)
class BatchModel:
    """A logistic regression fitted offline (scikit-learn) on prepared feature rows."""

    pipeline: Any
    examples: int
    positives: int

    def predict(self, rows: Floats) -> Floats:
        if len(rows) == 0:
            return np.zeros(0)
        proba: Floats = self.pipeline.predict_proba(rows)[:, 1]
        return proba


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """The batch model, or why there is none."""

    model: BatchModel | None
    status: str
    """`fitted`, or `skipped: <why>`."""
    examples: int
    positives: int


def sklearn_available() -> bool:
    try:
        importlib.import_module("sklearn")
    except ImportError:
        return False
    return True


def fit_batch(rows: Floats, labels: npt.NDArray[np.bool_]) -> BatchOutcome:
    """
    Fit the batch baseline: StandardScaler then LogisticRegression (L2, lbfgs) on the rows.

    Args:
        rows: prepared feature rows (`prepare`), one per training example.
        labels: whether each example churned.

    Returns:
        The fitted model, or a skipped outcome naming the reason (scikit-learn missing, or a
        single class among the examples).
    """
    examples = len(labels)
    positives = int(labels.sum()) if examples else 0
    if not sklearn_available():
        reason = "skipped: scikit-learn is not installed (pip install 'churnwatch[eval]')"
        return BatchOutcome(None, reason, examples, positives)
    if positives == 0 or positives == examples:
        reason = (
            f"skipped: the {examples} examples resolved before the cut-off hold "
            f"{positives} churners (both classes are needed)"
        )
        return BatchOutcome(None, reason, examples, positives)
    # Imported by name: scikit-learn ships no type information, and it is an optional extra.
    linear = importlib.import_module("sklearn.linear_model")
    pipe = importlib.import_module("sklearn.pipeline")
    pre = importlib.import_module("sklearn.preprocessing")
    pipeline = pipe.make_pipeline(pre.StandardScaler(), linear.LogisticRegression(max_iter=2000))
    pipeline.fit(rows, labels)
    return BatchOutcome(BatchModel(pipeline, examples, positives), "fitted", examples, positives)
