"""
The SDK's commands: `churnwatch topics create` and `churnwatch publish FILE.jsonl`.

`register(main)` adds them to the `churnwatch` group; cli.py calls it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import click

from churnwatch.cli_settings import settings_from_env
from churnwatch.core.errors import ChurnwatchError
from churnwatch.sdk.settings import KafkaSettings

if TYPE_CHECKING:
    # kafka-python is imported by the commands that need it, so `churnwatch --help` stays quick.
    from churnwatch.sdk.producer import PublishSummary

_BOOTSTRAP_HELP = "Broker address host:port[,host:port] (default: CHURNWATCH_KAFKA_BOOTSTRAP)."


def kafka_settings(bootstrap: str | None = None) -> KafkaSettings:
    """
    KafkaSettings from the environment (CHURNWATCH_KAFKA_*), with an optional bootstrap override;
    invalid settings become a click error that says which one.
    """
    return settings_from_env(KafkaSettings, {"bootstrap": bootstrap}, env="CHURNWATCH_KAFKA_*")


@click.group("topics")
def topics() -> None:
    """Kafka topics."""


@topics.command("create")
@click.option("--bootstrap", default=None, help=_BOOTSTRAP_HELP)
def topics_create(bootstrap: str | None) -> None:
    """Create every churnwatch topic with the configured partition count (idempotent)."""
    from churnwatch.sdk.topics import ensure_topics

    settings = kafka_settings(bootstrap)
    try:
        created = ensure_topics(settings)
    except ChurnwatchError as exc:
        raise click.ClickException(str(exc)) from exc
    for name in settings.topics().all():
        state = "created" if name in created else "exists"
        click.echo(f"{name}: {state} ({settings.partitions} partitions)")
    click.echo(f"{len(created)} created, {len(settings.topics().all()) - len(created)} existed")


@click.command("publish")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--bootstrap", default=None, help=_BOOTSTRAP_HELP)
@click.option("--quiet", is_flag=True, help="No progress display.")
def publish(file: Path, bootstrap: str | None, quiet: bool) -> None:
    """
    Validate and publish a JSONL file of events to their ingest topics.

    Bad lines are counted by reason and skipped. Exits 0 when anything was sent, 1 when
    nothing could be.
    """
    from churnwatch.sdk.producer import EventProducer, count_lines, publish_file
    from churnwatch.sdk.topics import describe_partitions
    from churnwatch.settings import CoreSettings

    settings = kafka_settings(bootstrap)
    max_event_bytes = CoreSettings().max_event_bytes
    try:
        # One metadata request first: without the topics the producer would block and log
        # "topic not found" for every send until its timeout.
        ingest = settings.topics().ingest_topics()
        found = describe_partitions(settings, ingest)
        missing = [topic for topic in ingest if topic not in found]
        if missing:
            msg = (
                f"topics missing on {settings.bootstrap}: {', '.join(missing)}: create them "
                "first with `churnwatch topics create`"
            )
            raise click.ClickException(msg)
        with (
            EventProducer(settings, max_event_bytes=max_event_bytes) as producer,
            _progress(quiet, label="publishing", total=count_lines(file)) as update,
        ):
            summary = publish_file(file, producer, update)
    except ChurnwatchError as exc:
        raise click.ClickException(str(exc)) from exc
    for line in summary_lines(summary):
        click.echo(line)
    if summary.stopped:
        click.echo(f"stopped early: {summary.stopped}", err=True)
    if summary.sent == 0:
        click.echo(f"nothing was sent from {file}", err=True)
        raise SystemExit(1)


def _progress(
    quiet: bool, *, label: str, total: int
) -> AbstractContextManager[Callable[[int], None] | None]:
    if quiet:
        return nullcontext(None)

    from churnwatch.console import progress_counter, terminal

    return progress_counter(terminal(stderr=True), label, total=total)


def summary_lines(summary: PublishSummary) -> Iterator[str]:
    """
    The human report of a publish run: sent, rejected by reason, failed by error, examples.
    """
    yield f"sent: {summary.sent:,}"
    yield f"rejected: {summary.total_rejected:,}"
    for reason, n in sorted(summary.rejected.items()):
        yield f"  {reason}: {n:,}"
    if summary.failed:
        yield f"failed delivery: {summary.total_failed:,}"
        for name, n in sorted(summary.failed.items()):
            yield f"  {name}: {n:,}"
    for rejection in (*summary.first_rejections, *summary.first_failures):
        yield f"line {rejection.line}: {rejection.reason}: {rejection.message}"


def register(group: click.Group) -> None:
    """
    Adds `topics` (with `create`) and `publish` to the given command group.
    """
    group.add_command(topics)
    group.add_command(publish)
