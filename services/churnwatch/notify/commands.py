"""
`churnwatch notify`: `register(group)` adds it to the CLI group (cli.py calls it).

Settings come from the environment (`CHURNWATCH_NOTIFY_*`, `CHURNWATCH_KAFKA_*`,
`CHURNWATCH_REDIS_*`; see churnwatch.notify.settings). Without options it runs the alert
consumer until SIGTERM or SIGINT, serving Prometheus metrics; `--send-digest` sends the
digests of the days that have ended and exits.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

import click

from churnwatch.cli_settings import settings_from_env
from churnwatch.core.errors import ChurnwatchError

log = logging.getLogger(__name__)


def _settings(overrides: dict[str, Any]) -> Any:
    from churnwatch.notify.settings import NotifySettings

    return settings_from_env(NotifySettings, overrides, env="CHURNWATCH_NOTIFY_*")


@click.command("notify")
@click.option(
    "--send-digest",
    is_flag=True,
    help="Send the daily digests of the days that have ended (UTC), then exit.",
)
@click.option(
    "--metrics-port", type=int, default=None, help="Default: CHURNWATCH_NOTIFY_METRICS_PORT."
)
@click.option("--group-id", default=None, help="Consumer group (CHURNWATCH_NOTIFY_GROUP_ID).")
def notify(send_digest: bool, metrics_port: int | None, group_id: str | None) -> None:
    """Run the alert consumer: emails and CSM tasks from churn.alerts, effectively once."""
    from prometheus_client import CollectorRegistry

    from churnwatch.metrics import Metrics, serve
    from churnwatch.notify.consumer import AlertConsumer
    from churnwatch.notify.logs import Redactor, configure_logging

    settings = _settings({"metrics_port": metrics_port, "group_id": group_id})
    configure_logging(settings.log_level, settings.log_format, Redactor(settings.secrets()))
    metrics = Metrics(CollectorRegistry())
    consumer = AlertConsumer(settings, metrics)
    if send_digest:
        try:
            consumer.start(join=False)
            deliverer = consumer.deliverer
            if deliverer is None:  # start() builds it; a None here is a bug of ours
                msg = "notify: the alert consumer started without a deliverer"
                raise RuntimeError(msg)
            sent = deliverer.send_due_digests()
        except ChurnwatchError as exc:
            raise click.ClickException(str(exc)) from exc
        finally:
            consumer.close()
        click.echo(f"digests sent: {sent}")
        return
    server = serve(settings.metrics_port, settings.metrics_host, registry=metrics.registry)
    log.info("metrics.serving", extra={"host": settings.metrics_host, "port": server.server_port})
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("notify.stopping", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        consumer.start()
        consumer.run(stop)
    except ChurnwatchError as exc:
        log.error("notify.failed", extra={"error": str(exc)})
        raise click.ClickException(str(exc)) from exc
    finally:
        consumer.close()
        server.shutdown()
        server.server_close()
    log.info("notify.stopped")


def register(group: click.Group) -> None:
    """Adds `notify` to the `churnwatch` command group."""
    group.add_command(notify)
