"""
Every Prometheus metric of churnwatch, defined in one place (STYLE.md, "Logging and metrics").

`Metrics(registry)` registers them on the registry it is given, so each process (and each test)
builds its own: nothing is registered on prometheus_client's global registry at import.
`serve()` exposes a registry over HTTP for Prometheus to scrape.

Default metrics ports, one per process type (deploy/prometheus/prometheus.yml scrapes these):

| process               | port |
| --------------------- | ---- |
| scoring worker        | 9464 |
| learner               | 9465 |
| alert consumer        | 9466 |
| read-only API         | 9467 |

A second worker process on the same host takes the worker port plus `WORKER_PORT_STEP`
(9474, then 9484, ...), which keeps clear of the other defaults.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from socketserver import ThreadingMixIn
from typing import Any, Final, Literal, cast, get_args
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app

from churnwatch.core.errors import REASON_CODES

ProcessType = Literal["worker", "learner", "notify", "api"]
DEFAULT_METRICS_PORTS: Final[dict[ProcessType, int]] = {
    "worker": 9464,
    "learner": 9465,
    "notify": 9466,
    "api": 9467,
}
WORKER_PORT_STEP: Final = 10

NotificationOutcome = Literal["sent", "retried", "failed", "dead_lettered", "duplicate", "digested"]
NOTIFICATION_OUTCOMES: Final[tuple[NotificationOutcome, ...]] = get_args(NotificationOutcome)

# Per-event work is microseconds; a batch is one Redis pipeline plus produce round trips.
EVENT_BUCKETS: Final = (
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1,
)  # fmt: skip
BATCH_BUCKETS: Final = (
    1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# Event to alert spans the producer's linger, the ingest hop, a batch window and the produce.
LATENCY_BUCKETS: Final = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip


class Metrics:
    """
    The metrics of every churnwatch process, registered on `registry`.

    A process only updates the ones it owns; the others stay at zero or absent (labelled
    series appear on first use).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry

        # The stream: consumed == processed + duplicates + dead-lettered, per topic.
        self.records_consumed = Counter(
            "churnwatch_records_consumed_total",
            "Records taken off a topic by a worker.",
            ["topic"],
            registry=r,
        )
        self.records_processed = Counter(
            "churnwatch_records_processed_total",
            "Records that changed state (or were forwarded, at ingest).",
            ["topic"],
            registry=r,
        )
        self.records_duplicates = Counter(
            "churnwatch_records_duplicates_total",
            "Records skipped because they were applied before (redelivery or repeated event_id).",
            ["topic"],
            registry=r,
        )
        self.records_dead_lettered = Counter(
            "churnwatch_records_dead_lettered_total",
            "Records sent to a dead-letter topic, by reason code.",
            ["topic", "reason"],
            registry=r,
        )
        self.states_dead_lettered = Counter(
            "churnwatch_states_dead_lettered_total",
            "Customer states in Redis that could not be read: dead-lettered with their bytes; "
            "the customer starts anew.",
            registry=r,
        )
        self.ingest_stalls = Counter(
            "churnwatch_ingest_stalls_total",
            "Ingest topic partitions that stopped delivering before catching up: `bounded` when "
            "the merge starts forwarding the other topics only up to the stalled one's last "
            "event time plus the lateness, `gave_up` when it goes on without it (its events "
            "may then be dead-lettered too_late).",
            ["topic", "outcome"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "churnwatch_batch_seconds",
            "Wall time of one batch, from taking it to committing it.",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.event_seconds = Histogram(
            "churnwatch_event_seconds",
            "Wall time of the core's work on one event (decode, process, sweep share).",
            buckets=EVENT_BUCKETS,
            registry=r,
        )
        self.event_to_alert_seconds = Histogram(
            "churnwatch_event_to_alert_seconds",
            "Wall time from the Kafka timestamp of the record that caused an alert to the "
            "alert's publish.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.store_up = Gauge(
            "churnwatch_store_up",
            "1 while Redis answers, 0 from a failed call until one succeeds (the worker and the "
            "learner then wait and retry, and commit nothing).",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "churnwatch_consumer_lag",
            "Records behind the partition's high watermark (from the consumer's fetches).",
            ["topic", "partition"],
            registry=r,
        )
        self.alerts = Counter(
            "churnwatch_alerts_total",
            "Alerts decided and published, by rule and action.",
            ["rule", "action"],
            registry=r,
        )
        self.sweep_customers = Counter(
            "churnwatch_sweep_customers_total",
            "Customers visited by the inactivity sweep.",
            registry=r,
        )

        # The model.
        self.model_version_info = Gauge(
            "churnwatch_model_version_info",
            "1 for the model version (checkpoint epoch) in use; older versions are removed.",
            ["version"],
            registry=r,
        )
        self.model_labels = Gauge(
            "churnwatch_model_labels",
            "Resolved labels the model in use has learned from.",
            registry=r,
        )
        self.model_auc = Gauge(
            "churnwatch_model_auc",
            "Progressive-validation ROC AUC of the model (predict before learn).",
            registry=r,
        )
        self.model_log_loss = Gauge(
            "churnwatch_model_log_loss",
            "Progressive-validation log loss of the model (predict before learn).",
            registry=r,
        )
        self.model_fallback = Counter(
            "churnwatch_model_fallback_total",
            "Events scored with an older checkpoint because the due one was not there in time.",
            registry=r,
        )

        # The producer SDK.
        self.published = Counter(
            "churnwatch_published_total",
            "Events the SDK delivered to an ingest topic (acknowledged by the broker).",
            ["topic"],
            registry=r,
        )
        self.rejected = Counter(
            "churnwatch_rejected_total",
            "Events the SDK refused to send because they failed validation, by reason code.",
            ["reason"],
            registry=r,
        )
        for reason in REASON_CODES:
            self.rejected.labels(reason)

        # Alert consumers (issue 6).
        self.notifications = Counter(
            "churnwatch_notifications_total",
            "Alert deliveries by action and outcome (sent, retried, failed, dead_lettered, "
            "duplicate).",
            ["action", "outcome"],
            registry=r,
        )

        # The at-risk API and feedback (issue 7).
        self.api_requests = Counter(
            "churnwatch_api_requests_total",
            "API requests by route and HTTP status.",
            ["route", "status"],
            registry=r,
        )
        self.feedback = Counter(
            "churnwatch_feedback_total",
            "Verdicts given on alerts through this process, by verdict and whether it changed "
            "the stored one (a repeated verdict is stored once).",
            ["verdict", "changed"],
            registry=r,
        )
        self.alert_verdicts = Gauge(
            "churnwatch_alert_verdicts",
            "Alerts carrying each verdict, by rule, as stored (read from Redis at each scrape).",
            ["rule", "verdict"],
            registry=r,
        )

    def prime_topic(self, topic: str) -> None:
        """
        Makes a consumed topic's counters appear at 0 before its first record, so rate() and
        the "no events consumed" alert see the series from the start.
        """
        for counter in (self.records_consumed, self.records_processed, self.records_duplicates):
            counter.labels(topic)

    def set_model_version(self, version: str) -> None:
        """
        Marks `version` as the model in use (the only series of churnwatch_model_version_info).
        """
        self.model_version_info.clear()
        self.model_version_info.labels(version).set(1)


Health = Callable[[], tuple[bool, dict[str, object]]]
"""Whether the process is healthy, and the JSON body of /healthz that says why."""


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes and health checks are not logged."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def serve(
    metrics_port: int,
    host: str = "127.0.0.1",
    *,
    registry: CollectorRegistry,
    health: Health | None = None,
) -> WSGIServer:
    """
    Serves `registry` at http://host:metrics_port/metrics, and /healthz, from a daemon thread.

    Args:
        metrics_port: the port; 0 picks a free one (read it from `server.server_port`).
        host: the address to bind; loopback unless the process is scraped from elsewhere.
        registry: what to expose (a `Metrics(...).registry`).
        health: what /healthz answers: 200 with its body while healthy, else 503 (a process
            without one answers 200 while it serves).

    Returns:
        The running server; `server.shutdown()` then `server.server_close()` stop it.
    """
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ.get("PATH_INFO") != "/healthz":
            return cast(list[bytes], metrics_app(environ, start_response))
        ok, body = (True, {"status": "ok"}) if health is None else health()
        status = "200 OK" if ok else "503 Service Unavailable"
        start_response(status, [("Content-Type", "application/json")])
        return [orjson.dumps(body)]

    server = make_server(host, metrics_port, app, _Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
