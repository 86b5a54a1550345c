"""
How far the online score is from what CDNOW's purchase log can give at a cut, and why.

    .venv/bin/python benchmarks/real_data_ceiling.py [--cut 1997-09-30]

At one cut (the default rules, as benchmarks/real_data.py), on the label "no purchase from the
cut to the end of the data", ROC AUC of:

- `online`: churnwatch's churn probability (what real_data.py reports);
- `batch_lr_own_features_oof`: a batch logistic regression on churnwatch's own feature vector
  at the cut (signed log1p, standardised), 5-fold out of fold on the very labels it is judged
  by: what a linear model of these features can reach, with the future's labels;
- `batch_gbm_own_features_oof`: the same with gradient-boosted trees (scikit-learn's
  HistGradientBoosting): whether a nonlinear model of the same features gets more;
- `batch_lr_on_online_examples`: a batch logistic regression fitted on the training examples
  the online model learned from (features at each snapshot, its label), scored on the cut:
  whether the online learner or its examples hold the score back;
- `batch_lr_population_snapshots`: a batch logistic regression fitted on every customer's
  features every `--every` days before the cut, labelled "no purchase within the learned
  horizon H", from the past only: a training set shaped like the population the score is used
  on.

It also says how the online examples and the population at the cut differ (days since the last
event, tenure). Writes benchmarks/results/real_data_ceiling.json and .md. Needs the `eval`
extra.
"""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from bench_io import machine, write_result
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from churnwatch.core import features as feats
from churnwatch.core.engine import Policy
from churnwatch.core.events import parse_event
from churnwatch.core.labels import Example
from churnwatch.core.rules import default_rules
from churnwatch.replay import engine as replay_engine
from churnwatch.replay.backtest import replay_as_of, score_all
from churnwatch.replay.cdnow import END, events
from churnwatch.replay.cdnow import purchases as cdnow

NAMES = list(feats.FEATURE_NAMES)
DAY = timedelta(days=1)


def _matrix(rows: list[dict[str, float]]) -> np.ndarray:
    x = np.array([[row.get(n, 0.0) for n in NAMES] for row in rows])
    return np.sign(x) * np.log1p(np.abs(x))


def _lr() -> Any:
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cut", default="1997-09-30")
    parser.add_argument("--every", type=float, default=30.0, help="Days between snapshots.")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    history = cdnow()
    cut = datetime.fromisoformat(args.cut).replace(hour=23, minute=59, second=59, tzinfo=UTC)
    after = {p.customer_id for p in history if cut < p.at <= END}
    policy = Policy.build(default_rules())

    learned: list[Example] = []
    original = replay_engine.Replay._learn

    def keep(self: Any, example: Example) -> None:
        learned.append(example)
        original(self, example)

    replay_engine.Replay._learn = keep  # type: ignore[method-assign]
    try:
        replay = replay_as_of(lambda: iter(events(history, cut)), policy, cut)
    finally:
        replay_engine.Replay._learn = original  # type: ignore[method-assign]
    scores = score_all(replay, cut)
    y = np.array([s.customer_id not in after for s in scores])
    x_cut = _matrix([dict(s.x) for s in scores])
    online = [s.scoring.churn_probability for s in scores]
    horizon = replay.model_for(cut).horizon_days(policy.plan.horizon_floor_days)

    oof_lr = cross_val_predict(_lr(), x_cut, y, cv=5, method="predict_proba")[:, 1]
    gbm = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, random_state=0)
    oof_gbm = cross_val_predict(gbm, x_cut, y, cv=5, method="predict_proba")[:, 1]
    x_ex = _matrix([dict(e.x) for e in learned])
    y_ex = np.array([e.churned for e in learned])
    on_examples = _lr().fit(x_ex, y_ex).predict_proba(x_cut)[:, 1]

    # Every customer's features every `every` days before the cut, labelled with H.
    parsed = [parse_event(r) for r in events(history, END)]
    bought: dict[str, list[datetime]] = {}
    for p in history:
        bought.setdefault(p.customer_id, []).append(p.at)
    grid, at = [], min(e.ts for e in parsed) + args.every * DAY
    while at + horizon * DAY <= cut:
        grid.append(at)
        at += args.every * DAY
    config = policy.config.features
    states: dict[str, feats.Features] = {}
    rows: list[dict[str, float]] = []
    labels: list[bool] = []
    i = 0
    for at in grid:
        while i < len(parsed) and parsed[i].ts <= at:
            e = parsed[i]
            states[e.customer_id] = feats.update_one(
                states.get(e.customer_id, feats.empty_features()), e, config=config
            )
            i += 1
        for customer_id, state in states.items():
            rows.append(feats.vector(state, at=at, config=config))
            ends = at + horizon * DAY
            labels.append(not any(at < t <= ends for t in bought[customer_id]))
    snapshots = _lr().fit(_matrix(rows), np.array(labels)).predict_proba(x_cut)[:, 1]

    def pct(values: np.ndarray) -> list[float]:
        return [round(float(v), 1) for v in np.percentile(values, [10, 50, 90])]

    silence = NAMES.index("days_since_event")
    tenure = NAMES.index("tenure_days")
    raw_ex = np.expm1(np.abs(x_ex))
    raw_cut = np.expm1(np.abs(x_cut))
    result: dict[str, Any] = {
        "cut": args.cut,
        "customers": len(scores),
        "learned_horizon_days": horizon,
        "online": round(float(roc_auc_score(y, online)), 4),
        "batch_lr_own_features_oof": round(float(roc_auc_score(y, oof_lr)), 4),
        "batch_gbm_own_features_oof": round(float(roc_auc_score(y, oof_gbm)), 4),
        "batch_lr_on_online_examples": round(float(roc_auc_score(y, on_examples)), 4),
        "batch_lr_population_snapshots": round(float(roc_auc_score(y, snapshots)), 4),
        "online_examples": len(learned),
        "population_snapshots": len(rows),
        "days_since_event_p10_p50_p90_examples": pct(raw_ex[:, silence]),
        "days_since_event_p10_p50_p90_cut": pct(raw_cut[:, silence]),
        "tenure_days_p10_p50_p90_examples": pct(raw_ex[:, tenure]),
        "tenure_days_p10_p50_p90_cut": pct(raw_cut[:, tenure]),
        "machine": machine(load),
    }
    command = ".venv/bin/python benchmarks/real_data_ceiling.py"
    if args.cut != "1997-09-30" or args.every != 30.0:
        command += f" --cut {args.cut} --every {args.every:g}"
    write_result(
        "real_data_ceiling", "What CDNOW's log can give at a cut, and why", command, result
    )


if __name__ == "__main__":
    main()
