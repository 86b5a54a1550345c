"""
The `churnwatch` command: wires settings, the core and the adapters together.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from churnwatch.core.engine import Policy
from churnwatch.core.errors import BadEventError, ChurnwatchError, ConfigError
from churnwatch.settings import CoreSettings

if TYPE_CHECKING:
    from churnwatch.sim.population import Regime


def _policy(settings: CoreSettings) -> Policy:
    try:
        return settings.to_policy()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


class InputError(click.ClickException):
    """A value given to a command was wrong: one line on stderr, exit code 2 (as for usage)."""

    exit_code = 2


class _Group(click.Group):
    """
    The `churnwatch` group: an error of ours that reaches it is one line, never a traceback
    (exit code 2 for wrong input, settings or rules; 1 for the rest, such as Redis away).
    """

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (ConfigError, BadEventError) as exc:
            raise InputError(str(exc)) from exc
        except ChurnwatchError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_Group)
@click.version_option(package_name="churnwatch")
def main() -> None:
    """churnwatch: who is slipping, why, and early enough to act."""
    import logging

    # Long-running services set up their own logging; this makes the commands' warnings
    # readable ("WARNING churnwatch.sdk.producer: producer.idempotence_unavailable").
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _population(command: Callable[..., None]) -> Callable[..., None]:
    """The simulated population's options, shared by `demo` and `simulate`."""
    for option in reversed(
        (
            click.option("--customers", default=20_000, show_default=True, help="Customers."),
            click.option("--days", default=180, show_default=True, help="Simulated days."),
            click.option("--seed", default=7, show_default=True, help="Same seed, same output."),
        )
    ):
        command = option(command)
    return command


@main.command()
@_population
@click.option(
    "--rules",
    "rules_file",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Rules file (default: the packaged rules/default.yaml).",
)
@click.option(
    "--malformed-rate",
    default=0.001,
    show_default=True,
    help="Share of malformed records mixed in.",
)
@click.option(
    "--duplicate-rate", default=0.002, show_default=True, help="Share of events redelivered."
)
@click.option(
    "--alerts-out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write every alert as JSONL, as the workers would publish it.",
)
@click.option("--quiet", is_flag=True, help="No progress display.")
def demo(
    customers: int,
    days: int,
    seed: int,
    rules_file: Path | None,
    malformed_rate: float,
    duplicate_rate: float,
    alerts_out: Path | None,
    quiet: bool,
) -> None:
    """Simulate customers and show what churnwatch would have alerted on (no services)."""
    from datetime import timedelta

    from churnwatch.console import progress_counter, render_demo, terminal
    from churnwatch.replay.demo import run_demo
    from churnwatch.sim.simulator import SimConfig

    settings = CoreSettings(rules_file=rules_file) if rules_file else CoreSettings()
    policy = _policy(settings)
    config = SimConfig(
        customers=customers,
        days=days,
        seed=seed,
        malformed_rate=malformed_rate,
        duplicate_rate=duplicate_rate,
        disorder=timedelta(minutes=5),
    )
    out = terminal()
    err = terminal(stderr=True)
    out.print(
        f"[bold]churnwatch demo[/bold]: {customers:,} customers over {days} days, seed {seed}"
    )
    handle = alerts_out.open("wb") if alerts_out else None
    try:
        if quiet:
            result = run_demo(config, policy, alerts_out=handle)
        else:
            with progress_counter(err, "replaying", total=days, unit="days") as update:
                result = run_demo(config, policy, alerts_out=handle, progress=update)
    finally:
        if handle:
            handle.close()
    render_demo(out, result, horizon_days=policy.config.horizon / timedelta(days=1))


@main.command()
@_population
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory for events.jsonl and labels.csv.",
)
@click.option(
    "--to-kafka",
    is_flag=True,
    help="Publish the records to their ingest topics (CHURNWATCH_KAFKA_*) instead.",
)
@click.option("--malformed-rate", default=0.0, show_default=True)
@click.option("--duplicate-rate", default=0.0, show_default=True)
@click.option(
    "--disorder-minutes",
    default=0.0,
    show_default=True,
    help="Events may be emitted up to this many minutes late.",
)
@click.option(
    "--regime",
    # sim.population.REGIMES, spelled out: importing the simulator here would load numpy
    type=click.Choice(["subscription", "shop", "b2b"]),
    default="subscription",
    show_default=True,
    help="The kind of business: a subscription product, a purchase-only shop, or B2B accounts.",
)
def simulate(
    customers: int,
    days: int,
    seed: int,
    out_dir: Path | None,
    to_kafka: bool,
    malformed_rate: float,
    duplicate_rate: float,
    disorder_minutes: float,
    regime: Regime,
) -> None:
    """Write a simulated history (events.jsonl, labels.csv), or publish it with --to-kafka."""
    from datetime import timedelta

    from churnwatch.console import progress_counter, terminal
    from churnwatch.sim.simulator import SimConfig, Simulation, write_simulation

    if (out_dir is None) == (not to_kafka):
        msg = "give exactly one of --out DIR or --to-kafka"
        raise click.UsageError(msg)
    config = SimConfig(
        customers=customers,
        days=days,
        seed=seed,
        malformed_rate=malformed_rate,
        duplicate_rate=duplicate_rate,
        disorder=timedelta(minutes=disorder_minutes),
        regime=regime,
    )
    if out_dir is not None:
        with progress_counter(terminal(stderr=True), "simulating") as update:
            summary = write_simulation(config, out_dir, progress=update)
        click.echo(f"wrote {out_dir / 'events.jsonl'} and {out_dir / 'labels.csv'}")
        by_type = ", ".join(f"{n:,} {kind}" for kind, n in summary.events_by_type.items() if n)
        stories = ", ".join(f"{n:,} {name}" for name, n in sorted(summary.archetypes.items()))
        click.echo(
            f"{summary.customers:,} customers over {summary.days:,} days: {summary.records:,} "
            f"records ({summary.events:,} events: {by_type}; {summary.duplicates:,} "
            f"redelivered, {summary.malformed:,} malformed); {summary.churned:,} churned; "
            f"stories: {stories}"
        )
        return
    from churnwatch.core.errors import ChurnwatchError
    from churnwatch.sdk.commands import kafka_settings, summary_lines
    from churnwatch.sdk.producer import EventProducer, publish_records

    settings = CoreSettings()
    try:
        with (
            EventProducer(kafka_settings(), max_event_bytes=settings.max_event_bytes) as producer,
            progress_counter(terminal(stderr=True), "publishing") as update,
        ):
            result = publish_records(Simulation(config).records(), producer, update)
    except ChurnwatchError as exc:
        raise click.ClickException(str(exc)) from exc
    for line in summary_lines(result):
        click.echo(line)
    if result.sent == 0:
        raise SystemExit(1)


@main.command()
@click.argument("events", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--rules", "rules_file", type=click.Path(exists=True, path_type=Path), default=None)
@click.option(
    "--alerts-out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write every alert as JSONL, as the workers would publish it.",
)
@click.option(
    "--dead-letters-out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write dead-lettered records as JSONL (reason, message, original bytes).",
)
@click.option(
    "--partitions",
    default=None,
    type=click.IntRange(min=1),
    help="Mirror this many topic partitions (one watermark each).",
)
@click.option("--quiet", is_flag=True, help="No progress display.")
def replay(
    events: Path,
    rules_file: Path | None,
    alerts_out: Path | None,
    dead_letters_out: Path | None,
    partitions: int | None,
    *,
    quiet: bool,
) -> None:
    """Run the core over a JSONL file of events, in file order, as the workers would."""
    import base64

    import orjson

    from churnwatch.console import counts_table, progress_counter, terminal
    from churnwatch.core.alerts import AlertRecord, alert_to_json
    from churnwatch.replay.engine import DeadLetter, Replay, read_records

    settings = CoreSettings(rules_file=rules_file) if rules_file else CoreSettings()
    policy = _policy(settings)
    alerts_handle = alerts_out.open("wb") if alerts_out else None
    dead_handle = dead_letters_out.open("wb") if dead_letters_out else None

    def on_alert(alert: AlertRecord) -> None:
        if alerts_handle:
            alerts_handle.write(alert_to_json(alert) + b"\n")

    def on_dead(letter: DeadLetter) -> None:
        if dead_handle:
            dead_handle.write(
                orjson.dumps(
                    {
                        "position": letter.position,
                        "line": letter.position + 1,
                        "reason": letter.reason,
                        "message": letter.message,
                        "original_b64": base64.b64encode(letter.raw).decode(),
                    }
                )
                + b"\n"
            )

    count = partitions or settings.partitions
    source = "--partitions" if partitions else "CHURNWATCH_KAFKA_PARTITIONS, as the workers"
    click.echo(f"replaying with {count} partition{'s' if count != 1 else ''} ({source})", err=True)
    engine = Replay(policy, partitions=count, on_alert=on_alert, on_dead_letter=on_dead)
    err = terminal(stderr=True, quiet=quiet)
    # The total for the bar, the time left and the plain lines: the file's lines (a fast count).
    lines = None if quiet else _count_lines(events)
    try:
        with progress_counter(err, "replaying", total=lines) as update:
            for i, raw in enumerate(read_records(str(events)), 1):
                engine.feed(raw)
                if i % 20_000 == 0:
                    update(i)
            update(engine.counts.consumed)
            engine.finish()
    finally:
        for handle in (alerts_handle, dead_handle):
            if handle:
                handle.close()
    terminal().print(counts_table(engine.counts))


def _count_lines(path: Path) -> int:
    """The lines of a file, counted by its newlines, a megabyte at a time."""
    count = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            count += chunk.count(b"\n")
    return count


@main.group()
def rules() -> None:
    """Rules files."""


@rules.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
def rules_check(files: tuple[Path, ...]) -> None:
    """Validate rules files; errors name the file, the line and the field."""
    from churnwatch.core.rules import load_rules, rules_fingerprint

    failed = False
    for path in files:
        try:
            loaded = load_rules(path)
        except ConfigError as exc:
            failed = True
            click.echo(str(exc), err=True)
        else:
            click.echo(f"{path}: ok (version {rules_fingerprint(loaded)})")
    if failed:
        sys.exit(1)


@main.group()
def schemas() -> None:
    """JSON Schemas of the event and alert contracts."""


@schemas.command("export")
@click.option(
    "--dir",
    "directory",
    default="schemas",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
)
def schemas_export(directory: Path) -> None:
    """Write the JSON Schemas generated from the models."""
    from churnwatch.schemas import export

    for path in export(directory):
        click.echo(f"wrote {path}")


@schemas.command("check")
@click.option(
    "--dir",
    "directory",
    default="schemas",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
)
def schemas_check(directory: Path) -> None:
    """Fail when the schema files differ from the models."""
    from churnwatch.schemas import drift

    problems = drift(directory)
    for problem in problems:
        click.echo(problem, err=True)
    if problems:
        sys.exit(1)
    click.echo(f"{directory}: in sync")


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("action", type=click.Choice(["up", "down", "status", "env"]))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def stack(action: str, args: tuple[str, ...]) -> None:
    """Start, stop or inspect the local services on loopback (deploy/local/stack.sh)."""
    import subprocess

    script = Path(__file__).resolve().parents[2] / "deploy" / "local" / "stack.sh"
    if not script.exists():
        msg = f"{script} not found: `churnwatch stack` runs from a checkout of churnwatch"
        raise click.ClickException(msg)
    done = subprocess.run(["bash", str(script), action, *args], check=False)  # noqa: S603, S607
    sys.exit(done.returncode)


def _register() -> None:
    from churnwatch.api.commands import register as register_api
    from churnwatch.notify.commands import register as register_notify
    from churnwatch.replay.commands import register as register_replay
    from churnwatch.sdk.commands import register as register_sdk
    from churnwatch.stream.commands import register as register_stream

    register_sdk(main)
    register_stream(main)
    register_notify(main)
    register_replay(main)
    register_api(main)


_register()

if __name__ == "__main__":
    main()
