"""
The score on a real purchase history (CDNOW, read from the installed `lifetimes` package, the
`eval` extra; never copied here): with the default rules and no dataset-specific setting, the
online score ranks the customers who never buy again better than the days since their last
purchase, and no single score value covers a large share of the customers.

Without `lifetimes` these tests fail rather than skip, so a green run means they were measured.
The full benchmark, with BG/NBD and a batch model beside it: benchmarks/real_data.py.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from churnwatch.cli import main
from churnwatch.core.engine import EngineConfig, Policy
from churnwatch.core.rules import default_rules, parse_rules
from churnwatch.replay.backtest import CustomerScore, regime_note, replay_as_of, score_all
from churnwatch.replay.cdnow import churned_after, events, purchases
from churnwatch.replay.evaluation import roc_auc

ROOT = Path(__file__).resolve().parents[2]
CUSTOMERS = 6000
"""The first 6,000 of CDNOW's 23,570 customers (their 17,954 purchases)."""


def score_at(cut_day: str) -> tuple[list[CustomerScore], set[str], str]:
    history = purchases(CUSTOMERS)
    cut = datetime.fromisoformat(cut_day).replace(hour=23, minute=59, second=59, tzinfo=UTC)
    records = events(history, cut)
    replay = replay_as_of(lambda: records, Policy.build(default_rules()), cut)
    return score_all(replay, cut), churned_after(history, cut), regime_note(replay, cut)


def assert_ranks_above_recency(scores: list[CustomerScore], churned: set[str]) -> None:
    """ROC AUC of the churn probability above that of the days since the last purchase."""
    labels = [s.customer_id in churned for s in scores]
    online = roc_auc(labels, [s.scoring.churn_probability for s in scores])
    recency = roc_auc(labels, [s.x["days_since_purchase"] for s in scores])
    assert online is not None
    assert recency is not None
    assert online > recency, (online, recency)


@pytest.fixture(scope="module", params=["1997-06-30", "1997-09-30"])
def cut(request: pytest.FixtureRequest) -> tuple[list[CustomerScore], set[str], str]:
    return score_at(request.param)


def test_the_score_ranks_churners_better_than_recency(
    cut: tuple[list[CustomerScore], set[str], str],
) -> None:
    """
    ROC AUC of the churn probability against "no purchase until the end of the data" is above
    that of the days since the last purchase.
    """
    scores, churned, _ = cut
    assert_ranks_above_recency(scores, churned)


def test_no_score_value_is_shared_by_many_customers(
    cut: tuple[list[CustomerScore], set[str], str],
) -> None:
    """
    No churn probability is shared by more than 20% of the customers (no class of customer sits
    on a constant score).
    """
    scores, _, _ = cut
    ((_, largest),) = Counter(s.scoring.churn_probability for s in scores).most_common(1)
    assert largest <= 0.2 * len(scores), largest


def test_the_history_is_named_a_shop_with_a_learned_horizon(
    cut: tuple[list[CustomerScore], set[str], str],
) -> None:
    """
    The replay says it saw purchases without logins and learned its label horizon from the
    gaps between purchases, longer than the 30 days that fit a daily app.
    """
    _, _, note = cut
    assert "purchases without logins (a shop)" in note
    assert "learned from" in note
    days = float(note.split("label horizon ")[1].split(" days")[0])
    assert 30.0 < days <= 365.0, note


def test_score_says_once_which_history_it_saw_and_its_horizon(tmp_path: Path) -> None:
    """
    `churnwatch score` on a purchase-only history (CDNOW's first 2,000 customers to 1997-09-30)
    prints one line naming a shop and the label horizon it learned, and writes every customer.
    """
    history = purchases(2000)
    cut = datetime(1997, 9, 30, 23, 59, 59, tzinfo=UTC)
    events_file = tmp_path / "calibration.jsonl"
    events_file.write_bytes(b"".join(record + b"\n" for record in events(history, cut)))
    out = tmp_path / "scores.csv"
    result = CliRunner().invoke(
        main,
        ["score", "--events", str(events_file), "--as-of", cut.isoformat(), "--out", str(out)],
    )
    assert 0 == result.exit_code, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("History:")]
    assert 1 == len(lines), result.output
    assert "purchases without logins (a shop)" in lines[0]
    assert "learned from" in lines[0]
    customers = len({p.customer_id for p in history if p.at <= cut})
    assert customers + 1 == len(out.read_text().splitlines())


def test_a_long_fixed_horizon_early_in_the_history_still_ranks() -> None:
    """
    With the label horizon fixed at 90 days (a rules file's `labels.horizon_days`), scored after
    the first six months, half of them inside the last horizon: the score still ranks churners
    above recency. When the negatives of the last 90 days were learned as they came back and
    their positives were not known yet, the ranking came out inverted (ROC AUC 0.39 on the whole
    of CDNOW): the learner must learn a window's snapshots together.
    """
    history = purchases(CUSTOMERS)
    cut = datetime(1997, 6, 30, 23, 59, 59, tzinfo=UTC)
    records = events(history, cut)
    text = (ROOT / "rules/default.yaml").read_text() + "\nlabels:\n  horizon_days: 90\n"
    policy = Policy.build(parse_rules(text, source="fixed.yaml"), EngineConfig())
    replay = replay_as_of(lambda: records, policy, cut)
    scores = score_all(replay, cut)
    churned = churned_after(history, cut)
    assert_ranks_above_recency(scores, churned)
