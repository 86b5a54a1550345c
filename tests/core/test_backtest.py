"""
The backtest: one code path with the demo and `score`, the ranking measures, the threshold sweep,
the rules comparison and the report files.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import statistics
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from churnwatch.core.engine import EngineConfig, Policy
from churnwatch.core.errors import ChurnwatchError
from churnwatch.core.rules import default_rules, parse_rules
from churnwatch.replay import backtest as bt
from churnwatch.replay.baselines import (
    average_precision_of,
    brier,
    precision_at,
    prepare,
    roc_curve,
)
from churnwatch.replay.commands import register
from churnwatch.replay.demo import run_demo
from churnwatch.replay.evaluation import AlertLog, ChurnTruth
from churnwatch.replay.sweep import Budget, lead_days, thresholds_patch
from churnwatch.sim.simulator import SimConfig, Simulation, write_simulation

ROOT = Path(__file__).resolve().parents[2]
POLICY = Policy.build(default_rules(), EngineConfig())
CONFIG = SimConfig(
    customers=300,
    days=80,
    seed=3,
    malformed_rate=0.001,
    duplicate_rate=0.002,
    disorder=timedelta(minutes=5),
)


@click.group()
def cli() -> None:
    """The commands under test, registered as cli.py registers them."""


register(cli)


def invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert 0 == result.exit_code, result.output
    return result.output


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim")
    write_simulation(CONFIG, out)
    return out


@pytest.fixture(scope="module")
def source(sim_dir: Path) -> bt.RecordSource:
    return bt.file_source(sim_dir / "events.jsonl")


@pytest.fixture(scope="module")
def history(source: bt.RecordSource) -> bt.BacktestResult:
    """The default rules, labels from the history itself."""
    return bt.run_backtest(source, POLICY)


@pytest.fixture(scope="module")
def labelled(source: bt.RecordSource, sim_dir: Path) -> bt.BacktestResult:
    """The default rules, the simulator's labels, a sweep for a budget of 12 alerts a week."""
    return bt.run_backtest(
        source,
        POLICY,
        labels=bt.read_labels(sim_dir / "labels.csv"),
        budget=Budget(1, 12.0, "all"),
        rules_text=(ROOT / "rules/default.yaml").read_text(),
        rules_source="rules/default.yaml",
    )


@pytest.fixture(scope="module")
def report(sim_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    invoke(
        "backtest",
        "--events",
        str(sim_dir / "events.jsonl"),
        "--labels",
        str(sim_dir / "labels.csv"),
        "--report",
        str(out),
        "--alerts-out",
        str(out / "alerts.jsonl"),
        "--quiet",
    )
    return out


def test_backtest_equals_the_demo_where_they_overlap(report: Path) -> None:
    """
    On the simulator's files, the backtest's alert figures, progressive AUCs and alert bytes
    equal run_demo's for the same seed.
    """
    buffer = io.BytesIO()
    demo = run_demo(CONFIG, POLICY, alerts_out=buffer)
    metrics = json.loads((report / "metrics.json").read_text())
    ev = demo.evaluation
    expected = {
        "total": demo.log.total,
        "by_rule": dict(sorted(demo.log.by_rule.items())),
        "churners": ev.churners,
        "customers_alerted": ev.alerted,
        "precision": round(ev.precision or 0, 4),
        "recall": round(ev.recall or 0, 4),
        "lead_days": {
            "p10": round(ev.lead_days_p10 or 0, 2),
            "p50": round(ev.lead_days_p50 or 0, 2),
            "p90": round(ev.lead_days_p90 or 0, 2),
        },
        "progressive": {
            "model": round(demo.auc_model or 0, 4),
            "prior": round(demo.auc_prior or 0, 4),
            "blended": round(demo.auc_blended or 0, 4),
        },
    }
    alerts = metrics["alerts"]
    actual = {
        **{key: alerts[key] for key in ("total", "by_rule", "churners", "customers_alerted")},
        **{key: alerts[key] for key in ("precision", "recall", "lead_days")},
        "progressive": metrics["model"]["progressive_auc"],
    }
    assert expected == actual
    assert buffer.getvalue() == (report / "alerts.jsonl").read_bytes()
    assert 0 < demo.log.total


def test_score_as_of_equals_the_backtests_scores(
    report: Path, sim_dir: Path, tmp_path: Path
) -> None:
    """
    `score --as-of T` writes the same rows, byte for byte, as the backtest's own scores at T.
    """
    cutoff = json.loads((report / "metrics.json").read_text())["ranking"]["cutoff_at"]
    out = tmp_path / "risks.csv"
    invoke("score", "--events", str(sim_dir / "events.jsonl"), "--as-of", cutoff, "--out", str(out))
    expected = (report / "scores.csv").read_text()
    assert expected == out.read_text()
    assert CONFIG.customers + 1 >= len(expected.splitlines()) > CONFIG.customers // 2


def test_fork_equals_a_fresh_replay_up_to_the_cutoff(
    source: bt.RecordSource, history: bt.BacktestResult
) -> None:
    """
    The ranking's replay at T, forked from the running replay, scores every customer as a fresh
    replay of the records up to T does.
    """
    at = history.cutoff_at
    fresh = bt.score_all(bt.replay_as_of(source, POLICY, at), at)
    assert "fork" == history.cutoff_method
    assert fresh == history.scores


def test_fork_equals_a_fresh_replay_over_partitions(source: bt.RecordSource) -> None:
    """
    With three partitions (one watermark each, some waiting for checkpoints), the fork still
    scores as a fresh replay up to T does.
    """
    result = bt.run_backtest(source, POLICY, partitions=3)
    at = result.cutoff_at
    fresh = bt.score_all(bt.replay_as_of(source, POLICY, at, partitions=3), at)
    assert fresh == result.scores


def test_the_fallback_replay_gives_the_same_scores(
    source: bt.RecordSource, history: bt.BacktestResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    When the running replay cannot be copied, the records up to T are replayed, with the same
    scores.
    """
    monkeypatch.setattr(bt, "_fork", lambda replay, recorder: None)
    replayed = bt.run_backtest(source, POLICY)
    assert "replay" == replayed.cutoff_method
    assert history.scores == replayed.scores


def test_history_labels_are_named_and_match_the_definition(
    source: bt.RecordSource, history: bt.BacktestResult
) -> None:
    """
    Without labels, churn is read from the history: the positives are the customers with no
    activity in (T, T + H] or a cancel in it, and the report says where the labels came from.
    """
    result = history
    at, horizon = result.cutoff_at, POLICY.config.horizon
    later: dict[str, list[datetime]] = {}
    for raw in source():
        ts = bt.event_time(raw, POLICY)
        event = json.loads(raw) if ts is not None else None
        if event is not None and ts is not None:
            later.setdefault(event["customer_id"], []).append(ts)
    scored = {s.customer_id: s for s in result.scores}
    population = 0
    positives = 0
    for customer_id, times in later.items():
        score = scored.get(customer_id)
        if score is None or score.cancelled:
            continue
        before = [t for t in times if t <= at]
        if at - max(before) >= horizon:
            continue
        population += 1
        cancelled = result.truths[customer_id].cancelled
        churn_at = result.truths[customer_id].churn_at
        after = [t for t in times if at < t <= at + horizon]
        silent = not after
        cancel_in_window = cancelled and churn_at is not None and at < churn_at <= at + horizon
        positives += silent or cancel_in_window
    assert (population, positives) == (result.ranking.population, result.ranking.positives)
    assert result.labels_source.startswith("the history itself")
    assert any("No labels were given" in note for note in result.notes)


def test_a_labels_file_with_only_customer_and_churned(
    source: bt.RecordSource, sim_dir: Path, tmp_path: Path
) -> None:
    """
    A `customer_id,churned` file is accepted: the ranking's label is churned at any time and
    lead times are unknown.
    """
    lines = (sim_dir / "labels.csv").read_text().splitlines()[1:]
    plain = tmp_path / "plain.csv"
    plain.write_text(
        "customer_id,churned\n" + "".join(f"{r.split(',')[0]},{r.split(',')[2]}\n" for r in lines)
    )
    labels = bt.read_labels(plain)
    result = bt.run_backtest(source, POLICY, labels=labels)
    churned = sum(1 for r in lines if r.split(",")[2] == "1")
    assert (False, churned) == (labels.timed, sum(labels.churned.values()))
    assert result.alerts.evaluation.lead_days_p50 is None
    assert result.alerts.evaluation.precision is not None
    assert "churned at any time" in result.ranking.definition


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id,churned\nc1,1\n", ":1: expected a header with customer_id and churned"),
        ("customer_id,churned\nc1,maybe\n", ":2: churned: expected 0 or 1"),
        ("customer_id,churned,churn_at\nc1,1,yesterday\n", ":2: churn_at: expected ISO 8601"),
        (
            "customer_id,churned,churn_at\nc1,1,2026-01-01T00:00:00\n",
            ":2: churn_at: expected a time zone",
        ),
    ],
)
def test_bad_labels_name_the_line_and_field(tmp_path: Path, text: str, message: str) -> None:
    """
    A malformed labels file fails with its name, the line and the field.
    """
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(ChurnwatchError) as info:
        bt.read_labels(path)
    assert f"{path}{message}" in str(info.value)


def test_cold_start_is_explicit(tmp_path: Path) -> None:
    """
    With too few resolved labels at T, the model has no weight: the churnwatch score is the prior,
    and the report says how many labels the model had.
    """
    config = SimConfig(customers=30, days=45, seed=5)
    records = list(Simulation(config).records())
    cutoff = config.start_at + timedelta(days=8)
    result = bt.run_backtest(lambda: records, POLICY, cutoff_at=cutoff)
    assert result.model_at_cutoff.labels < POLICY.config.model.min_labels
    assert 0.0 == result.model_at_cutoff.weight
    assert [s.scoring.prior_probability for s in result.scores] == [
        s.scoring.churn_probability for s in result.scores
    ]
    assert any(
        note.startswith(f"Cold start: at T the model had learned {result.model_at_cutoff.labels} ")
        for note in result.notes
    )


def test_a_cutoff_before_the_history_is_refused() -> None:
    """
    A cut-off before the first event fails with what was expected and what arrived.
    """
    records = list(Simulation(SimConfig(customers=5, days=10, seed=1)).records())
    with pytest.raises(ChurnwatchError, match="cut-off: expected a time after the first event"):
        bt.run_backtest(lambda: records, POLICY, cutoff_at=datetime(2025, 1, 1, tzinfo=UTC))


@pytest.fixture(scope="module")
def strict(source: bt.RecordSource) -> bt.BacktestResult:
    """
    rules/examples/strict.yaml with higher thresholds (more score alerts), swept, and compared
    with the default rules.
    """
    text = (ROOT / "rules/examples/strict.yaml").read_text()
    text = text.replace(
        "{enterprise: 35, growth: 30, starter: 25, default: 25}",
        "{enterprise: 70, growth: 65, starter: 60, default: 60}",
    )
    return bt.run_backtest(
        source,
        Policy.build(parse_rules(text, source="strict.yaml"), EngineConfig()),
        budget=Budget(2, 5.0, "csm_task"),
        rules_text=text,
        rules_source="strict.yaml",
        compare=(POLICY, "rules/default.yaml"),
    )


def test_sweep_reproduces_the_rules_own_alerts(strict: bt.BacktestResult) -> None:
    """
    Recomputed from the recorded scores at the rule's own thresholds, the score rule's alerts are
    exactly those the replay sent.
    """
    assert strict.sweep is not None
    (swept,) = strict.sweep.rules
    assert (swept.actual, swept.actual) == (swept.reproduced, swept.recomputed)
    assert swept.actual > 10
    uniform = [p for p in swept.points if p.segment == "all"]
    assert [p.threshold for p in uniform] == sorted(p.threshold for p in uniform)


def test_the_proposal_fits_the_budget_and_patches_the_file(labelled: bt.BacktestResult) -> None:
    """
    The proposed thresholds, recomputed together, stay within the budget, and the patch is a valid
    rules file that differs only in the thresholds line.
    """
    sweep = labelled.sweep
    assert sweep is not None
    (swept,) = sweep.rules
    proposal = swept.proposal
    assert proposal.feasible
    assert sweep.other_per_week + proposal.check.budget_per_week <= sweep.budget.per_week
    changed = [
        line
        for line in sweep.patch_diff.splitlines()
        if line[:1] in "+-" and line[:3] not in ("+++", "---")
    ]
    assert 2 == len(changed)
    assert all("thresholds:" in line for line in changed)


def test_thresholds_patch_keeps_block_mappings_and_comments() -> None:
    """
    A block-style thresholds map is edited value by value; a segment it lacked is added; comments
    stay.
    """
    text = (ROOT / "rules/default.yaml").read_text()
    block = text.replace(
        "    thresholds: {enterprise: 30, growth: 25, starter: 20, default: 20}\n",
        "    thresholds:  # per segment\n      enterprise: 30\n      default: 20\n",
    )
    budget = Budget(1, 10.0, "csm_task")
    proposals = {"low_engagement": {"enterprise": 35.0, "growth": 25.0, "default": 20.0}}
    _, diff = thresholds_patch(block, "r.yaml", proposals, budget=budget)
    expected = [
        "-      enterprise: 30",
        "+      enterprise: 35",
        "+      growth: 25",
    ]
    actual = [
        line for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")
    ]
    assert sorted(expected) == sorted(actual)


def test_compare_lists_what_each_rules_file_alerts_on(
    strict: bt.BacktestResult, history: bt.BacktestResult
) -> None:
    """
    Comparing two rule files counts, per rule, the customers only one of them alerts, consistent
    with each file's own replay.
    """
    assert strict.compare is not None
    c = strict.compare
    assert (strict.alerts.log.total, history.alerts.log.total) == (c.a.alerts, c.b.alerts)
    for row in c.rows:
        assert row.customers_a == row.only_a + row.both
        assert row.customers_b == row.only_b + row.both
        assert history.alerts.log.by_rule.get(row.rule, 0) == row.alerts_b
    assert any(row.only_a or row.only_b for row in c.rows)
    assert all(e.rule in {r.rule for r in c.rows} for e in (*c.only_a, *c.only_b))


def test_the_report_is_self_contained(report: Path) -> None:
    """
    report.html carries its plots as inline SVG and loads nothing; metrics.json names the label
    source and the ranking definition.
    """
    page = (report / "report.html").read_text()
    metrics = json.loads((report / "metrics.json").read_text())
    assert page.count("<svg") >= 8
    assert "<script" not in page
    assert "src=" not in page
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "labels file" in metrics["labels"]["source"]
    assert "lost within (T, T + 30 days]" in metrics["ranking"]["definition"]
    assert {"online_model", "churnwatch_score", "prior", "recency"} <= set(
        metrics["ranking"]["scores"]
    )


def test_lead_days_agree_with_the_evaluation(labelled: bt.BacktestResult) -> None:
    """
    The lead times of the histogram are one per churner alerted in time, with the median the
    alert evaluation reports.
    """
    ev = labelled.alerts.evaluation
    leads = labelled.alerts.leads
    assert ev.timely == len(leads)
    assert ev.lead_days_p50 == statistics.quantiles(leads, n=100, method="inclusive")[49]


@pytest.mark.parametrize(
    ("labels", "scores", "share", "expected"),
    [
        ([True, False, True, False], [0.9, 0.8, 0.7, 0.1], 0.5, 0.5),
        ([True, False, False, False], [0.9, 0.5, 0.5, 0.1], 0.5, 0.5),
        ([False, True, False, False], [0.5, 0.5, 0.5, 0.5], 0.25, 0.25),
        ([True, True, False, False], [0.9, 0.8, 0.1, 0.0], 0.1, 1.0),
    ],
)
def test_precision_at_counts_ties_fractionally(
    labels: list[bool], scores: list[float], share: float, expected: float
) -> None:
    """
    Customers tied at the cut count with the share of them that fits.
    """
    assert expected == precision_at(labels, scores, share)


def test_ranking_measures_on_a_known_case() -> None:
    """
    Average precision, Brier score and the ROC curve's ends on a hand-computed case.
    """
    labels = [True, False, True, False]
    scores = [0.9, 0.8, 0.7, 0.1]
    assert pytest.approx((1.0 + 2 / 3) / 2) == average_precision_of(labels, scores)
    assert pytest.approx((0.01 + 0.64 + 0.09 + 0.01) / 4) == brier(labels, scores)
    curve = roc_curve(labels, scores)
    assert ((0.0, 0.0), (1.0, 1.0)) == ((curve.x[0], curve.y[0]), (curve.x[-1], curve.y[-1]))


def test_the_batch_rows_hold_the_model_inputs() -> None:
    """
    A batch row has one column per model input, in order, through the signed log1p; a missing
    or non-finite value is 0.
    """
    x = {"b": 1.0, "a": -3.0, "c": float("nan")}
    assert pytest.approx([0.0, math.log1p(1.0), -math.log1p(3.0), 0.0]) == prepare(
        x, ("missing", "b", "a", "c")
    )


def test_lead_days_of_one_churner() -> None:
    """
    A churner alerted 10 days before its last activity has a lead of 10 days plus the horizon.
    """
    at = datetime(2026, 3, 1, tzinfo=UTC)
    log = AlertLog()
    log.add("c1", "r", "email", at - timedelta(days=10))
    truths = {"c1": ChurnTruth(True, at)}
    assert [40.0] == lead_days(log, truths, horizon=timedelta(days=30), seen=["c1"])


def test_as_of_accepts_a_date_and_refuses_a_naive_time() -> None:
    """
    `--as-of 2026-03-01` is midnight UTC; a time without a zone is refused.
    """
    assert datetime(2026, 3, 1, tzinfo=UTC) == bt.parse_as_of("2026-03-01")
    with pytest.raises(ChurnwatchError, match="expected a time zone"):
        bt.parse_as_of("2026-03-01T10:00:00")


def test_a_backtest_says_which_history_it_saw_and_which_horizon_it_used(
    source: bt.RecordSource, history: bt.BacktestResult
) -> None:
    """
    A purchase-only history is named a shop and a history with logins an app, each once, with
    the label horizon the model used: learned by default, fixed by a rules file that sets it.
    """
    purchases = [raw for raw in source() if b'"type":"purchase"' in raw]
    plain = bt.run_backtest(lambda: purchases, POLICY)
    notes = [note for note in plain.notes if note.startswith("History:")]
    assert 1 == len(notes), plain.notes
    assert "purchases without logins (a shop)" in notes[0]
    assert "label horizon 30 days (too few gaps" in notes[0]  # 177 customers: too few to learn
    app = [note for note in history.notes if note.startswith("History:")]
    assert 1 == len(app), history.notes
    assert "logins (an app or a subscription)" in app[0]
    text = (ROOT / "rules/examples/ecommerce.yaml").read_text()
    fixed = Policy.build(parse_rules(text.replace("labels:\n", "labels:\n  horizon_days: 45\n")))
    fixed_notes = bt.run_backtest(lambda: purchases, fixed).notes
    (note,) = [n for n in fixed_notes if n.startswith("History")]
    assert "label horizon 45 days, fixed" in note


def test_auc_noise_is_hanley_and_mcneil_and_shrinks_with_the_sample() -> None:
    """
    The standard error of an AUC: 0.0409 for AUC 0.5 on 100 churners and 100 stayers (Hanley
    and McNeil's formula by hand), a quarter of it on 16 times the sample; none without both.
    """
    small = bt.auc_noise(0.5, 100, 100)
    assert small is not None
    assert abs(small - math.sqrt(16.75 / 10_000)) < 1e-12
    large = bt.auc_noise(0.5, 1600, 1600)
    assert large is not None
    assert 0.24 < large / small < 0.26
    assert bt.auc_noise(0.7, 0, 10) is None


def test_a_missed_bar_comes_with_the_noise_of_the_history(labelled: bt.BacktestResult) -> None:
    """
    Where a quality bar is missed, the printed report says how well an AUC is known with that
    many churners, so a miss on a small history reads as what it is.
    """
    from rich.console import Console

    from churnwatch.replay.report import render_terminal

    failed = dataclasses.replace(
        labelled, bars=(bt.Bar("online model AUC above the recency baseline", False, "x"),)
    )
    console = Console(record=True, width=200)
    render_terminal(console, failed)
    text = console.export_text()
    assert "FAIL online model AUC above the recency baseline" in text
    assert f"with {labelled.ranking.positives:,} churners among" in text
    assert "within the noise of a history this size" in text
    console = Console(record=True, width=200)
    render_terminal(console, dataclasses.replace(labelled, bars=()))
    assert "within the noise" not in console.export_text()
