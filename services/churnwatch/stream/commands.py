"""
`churnwatch worker` and `churnwatch learner`: `register(group)` adds them to the CLI group.

Settings come from the environment (`CHURNWATCH_*`, see churnwatch.stream.settings); the
options override the most common ones. Both commands create the topics if they are missing,
serve Prometheus metrics and /healthz, and run until SIGTERM or SIGINT.
"""

from __future__ import annotations

import logging.config
from typing import Any, TypeVar

import click

from churnwatch.cli_settings import settings_from_env
from churnwatch.core.errors import ChurnwatchError

_S = TypeVar("_S")


def _settings(cls: type[_S], overrides: dict[str, Any]) -> _S:
    return settings_from_env(cls, overrides, env="CHURNWATCH_*")


def _prepare(settings: Any) -> Any:
    """Logging and the topics; returns the Metrics (served by `_serve` once the app is built)."""
    from prometheus_client import CollectorRegistry

    from churnwatch.metrics import Metrics
    from churnwatch.sdk.topics import ensure_topics
    from churnwatch.stream.logs import logging_config

    logging.config.dictConfig(logging_config(settings.log_level, settings.log_format))
    try:
        ensure_topics(settings.kafka)
    except ChurnwatchError as exc:
        raise click.ClickException(str(exc)) from exc
    return Metrics(CollectorRegistry())


def _serve(settings: Any, metrics: Any, runtime: Any) -> None:
    """/metrics and /healthz (503 while Redis does not answer)."""
    from churnwatch.metrics import serve

    server = serve(
        settings.metrics_port,
        settings.metrics_host,
        registry=metrics.registry,
        health=runtime.health.status,
    )
    logging.getLogger(__name__).info(
        "metrics.serving",
        extra={"host": settings.metrics_host, "port": server.server_port},
    )


@click.command("worker")
@click.option("--metrics-port", type=int, default=None, help="Default: CHURNWATCH_METRICS_PORT.")
@click.option("--group-id", default=None, help="Consumer group (CHURNWATCH_GROUP_ID).")
def worker(metrics_port: int | None, group_id: str | None) -> None:
    """Run one streaming worker: ingest and scoring (several share the work as one group)."""
    from churnwatch.stream.app import build_worker, run
    from churnwatch.stream.settings import WorkerSettings

    settings = _settings(WorkerSettings, {"metrics_port": metrics_port, "group_id": group_id})
    try:
        policy = settings.to_policy()
    except ChurnwatchError as exc:
        raise click.ClickException(str(exc)) from exc
    metrics = _prepare(settings)
    runtime = build_worker(settings, policy, metrics)
    _serve(settings, metrics, runtime)
    run(runtime.app, settings)


@click.command("learner")
@click.option("--metrics-port", type=int, default=None, help="Default: CHURNWATCH_METRICS_PORT.")
def learner(metrics_port: int | None) -> None:
    """Run the learner: learns from churn.training and checkpoints the model per epoch."""
    from churnwatch.stream.app import build_learner, run
    from churnwatch.stream.settings import LearnerSettings

    settings = _settings(LearnerSettings, {"metrics_port": metrics_port})
    metrics = _prepare(settings)
    runtime = build_learner(settings, metrics)
    _serve(settings, metrics, runtime)
    run(runtime.app, settings)


def register(group: click.Group) -> None:
    """Add `worker` and `learner` to the `churnwatch` command group."""
    group.add_command(worker)
    group.add_command(learner)
