"""
The backtest's commands: `churnwatch backtest` and `churnwatch score`.

`register(main)` adds them to the `churnwatch` group; cli.py calls it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import click

from churnwatch.core.engine import Policy
from churnwatch.core.errors import ChurnwatchError, ConfigError
from churnwatch.settings import CoreSettings

_EVENTS = click.Path(exists=True, dir_okay=False, path_type=Path)


def _policy(rules_file: Path | None) -> tuple[Policy, CoreSettings, str, str]:
    """The policy, the settings, the rules file's text and its name."""
    settings = CoreSettings(rules_file=rules_file) if rules_file else CoreSettings()
    try:
        policy = settings.to_policy()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    if rules_file is None:
        text = resources.files("churnwatch").joinpath("data", "default.yaml").read_text("utf-8")
        return policy, settings, text, "rules/default.yaml"
    return policy, settings, rules_file.read_text(encoding="utf-8"), str(rules_file)


@click.command("backtest")
@click.option("--events", "events", type=_EVENTS, required=True, help="History: a JSONL file.")
@click.option(
    "--labels",
    "labels_file",
    type=_EVENTS,
    default=None,
    help="CSV with customer_id,churned[,churn_at] (the simulator's labels.csv works). "
    "Default: churn read from the history itself (silent for the horizon, or cancelled).",
)
@click.option(
    "--rules",
    "rules_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Rules file (default: the packaged rules/default.yaml).",
)
@click.option(
    "--compare",
    "compare_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Another rules file: replayed on the same history, alerts compared with --rules.",
)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write metrics.json, report.html, scores.csv and the thresholds patch here.",
)
@click.option(
    "--alerts-out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write every alert as JSONL, exactly as the workers would publish it.",
)
@click.option(
    "--as-of",
    "as_of",
    default=None,
    help="Cut-off T of the ranking (ISO 8601); default: the horizon before the end.",
)
@click.option(
    "--csms",
    default=10,
    show_default=True,
    type=click.IntRange(min=1),
    help="CSMs who take the alerts.",
)
@click.option(
    "--alerts-per-csm",
    default=25.0,
    type=click.FloatRange(min=0.0, min_open=True),
    show_default=True,
    help="Alerts one CSM can take a week (the sweep's budget is CSMs x this).",
)
@click.option(
    "--budget-counts",
    type=click.Choice(["csm_task", "all"]),
    default="csm_task",
    show_default=True,
    help="Which alerts count against the budget: those routed to csm_task, or all.",
)
@click.option("--no-sweep", is_flag=True, help="Skip the threshold sweep.")
@click.option(
    "--verdicts",
    "verdicts_file",
    type=_EVENTS,
    default=None,
    help="CSMs' verdicts on production alerts (`churnwatch feedback --export FILE`): the "
    "report gives the false-alarm rate per rule.",
)
@click.option(
    "--partitions",
    default=None,
    type=click.IntRange(min=1),
    help="Mirror this many topic partitions.",
)
@click.option("--quiet", is_flag=True, help="No progress display.")
def backtest(
    events: Path,
    labels_file: Path | None,
    rules_file: Path | None,
    compare_file: Path | None,
    report_dir: Path | None,
    alerts_out: Path | None,
    as_of: str | None,
    csms: int,
    alerts_per_csm: float,
    budget_counts: str,
    no_sweep: bool,
    verdicts_file: Path | None,
    partitions: int | None,
    quiet: bool,
) -> None:
    """Replay a history through the core and measure alerts, ranking, baselines and thresholds."""
    from contextlib import nullcontext

    from churnwatch.console import progress_counter, terminal
    from churnwatch.replay.backtest import file_source, parse_as_of, read_labels, run_backtest
    from churnwatch.replay.report import render_terminal, write_report
    from churnwatch.replay.sweep import Budget

    policy, settings, text, source_name = _policy(rules_file)
    compare = None
    if compare_file is not None:
        other, _, _, other_name = _policy(compare_file)
        compare = (other, other_name)
    if csms < 1 or alerts_per_csm <= 0:
        msg = f"expected --csms >= 1 and --alerts-per-csm > 0, got {csms} and {alerts_per_csm}"
        raise click.UsageError(msg)
    budget = (
        None
        if no_sweep
        else Budget(csms, alerts_per_csm, "all" if budget_counts == "all" else "csm_task")
    )
    err = terminal(stderr=True)
    handle = alerts_out.open("wb") if alerts_out else None
    try:
        cutoff = parse_as_of(as_of) if as_of else None
        labels = read_labels(labels_file) if labels_file else None
        verdicts = None
        if verdicts_file is not None:
            from churnwatch.core.feedback import parse_verdicts

            with verdicts_file.open("rb") as lines:
                verdicts = parse_verdicts(lines, source=str(verdicts_file))
        progress = nullcontext(None) if quiet else progress_counter(err, "backtesting")
        with progress as update:
            result = run_backtest(
                file_source(events),
                policy,
                labels=labels,
                cutoff_at=cutoff,
                partitions=partitions or settings.partitions,
                alerts_out=handle,
                budget=budget,
                rules_text=text,
                rules_source=source_name,
                compare=compare,
                events_name=str(events),
                progress=update,
                verdicts=verdicts,
            )
    except ChurnwatchError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        if handle:
            handle.close()
    render_terminal(terminal(), result)
    if report_dir is not None:
        for path in write_report(result, report_dir):
            click.echo(f"wrote {path}")


@click.command("score")
@click.option("--events", "events", type=_EVENTS, required=True, help="History: a JSONL file.")
@click.option("--as-of", "as_of", required=True, help="Score at this time (ISO 8601).")
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="CSV: customer_id,churn_probability,engagement_score,segment,top_reason.",
)
@click.option(
    "--rules",
    "rules_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Rules file (default: the packaged rules/default.yaml).",
)
@click.option(
    "--partitions",
    default=None,
    type=click.IntRange(min=1),
    help="Mirror this many topic partitions.",
)
def score(
    events: Path, as_of: str, out: Path, rules_file: Path | None, partitions: int | None
) -> None:
    """Score every customer as of a time, from the events up to it (features decayed to it)."""
    from churnwatch.replay.backtest import (
        file_source,
        parse_as_of,
        regime_note,
        replay_as_of,
        score_all,
        write_scores,
    )

    policy, settings, _, _ = _policy(rules_file)
    try:
        at = parse_as_of(as_of)
        replay = replay_as_of(
            file_source(events), policy, at, partitions=partitions or settings.partitions
        )
    except ChurnwatchError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(regime_note(replay, at))
    scores = score_all(replay, at)
    with out.open("w", encoding="utf-8", newline="") as handle:
        write_scores(handle, scores)
    click.echo(f"wrote {out}: {len(scores):,} customers scored as of {as_of}")


def register(group: click.Group) -> None:
    """Add `backtest` and `score` to the `churnwatch` group."""
    group.add_command(backtest)
    group.add_command(score)
