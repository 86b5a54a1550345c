"""
Every churnwatch metric is defined once, on the registry it is given, and served over HTTP.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator

import orjson
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Metric
from prometheus_client.parser import text_string_to_metric_families

from churnwatch.core.errors import REASON_CODES
from churnwatch.metrics import (
    DEFAULT_METRICS_PORTS,
    NOTIFICATION_OUTCOMES,
    WORKER_PORT_STEP,
    Metrics,
    serve,
)

# name (as exposed, without _total) -> (type, label names)
EXPECTED: dict[str, tuple[str, tuple[str, ...]]] = {
    "churnwatch_records_consumed": ("counter", ("topic",)),
    "churnwatch_records_processed": ("counter", ("topic",)),
    "churnwatch_records_duplicates": ("counter", ("topic",)),
    "churnwatch_records_dead_lettered": ("counter", ("topic", "reason")),
    "churnwatch_states_dead_lettered": ("counter", ()),
    "churnwatch_ingest_stalls": ("counter", ("topic", "outcome")),
    "churnwatch_batch_seconds": ("histogram", ()),
    "churnwatch_event_seconds": ("histogram", ()),
    "churnwatch_event_to_alert_seconds": ("histogram", ()),
    "churnwatch_store_up": ("gauge", ()),
    "churnwatch_consumer_lag": ("gauge", ("topic", "partition")),
    "churnwatch_alerts": ("counter", ("rule", "action")),
    "churnwatch_sweep_customers": ("counter", ()),
    "churnwatch_model_version_info": ("gauge", ("version",)),
    "churnwatch_model_labels": ("gauge", ()),
    "churnwatch_model_auc": ("gauge", ()),
    "churnwatch_model_log_loss": ("gauge", ()),
    "churnwatch_model_fallback": ("counter", ()),
    "churnwatch_published": ("counter", ("topic",)),
    "churnwatch_rejected": ("counter", ("reason",)),
    "churnwatch_notifications": ("counter", ("action", "outcome")),
    "churnwatch_api_requests": ("counter", ("route", "status")),
    "churnwatch_feedback": ("counter", ("verdict", "changed")),
    "churnwatch_alert_verdicts": ("gauge", ("rule", "verdict")),
}


def touch_every_metric(metrics: Metrics) -> None:
    """
    Gives every labelled metric one series, so its label names show in the exposition.
    """
    for counter in (metrics.records_consumed, metrics.records_processed):
        counter.labels("churn.events").inc()
    metrics.records_duplicates.labels("churn.events").inc()
    metrics.records_dead_lettered.labels("events.login", "malformed_json").inc()
    metrics.ingest_stalls.labels("events.login", "bounded").inc()
    metrics.batch_seconds.observe(0.02)
    metrics.event_seconds.observe(3e-5)
    metrics.event_to_alert_seconds.observe(0.4)
    metrics.store_up.set(1)
    metrics.consumer_lag.labels("churn.events", "0").set(12)
    metrics.alerts.labels("score_below_threshold", "email").inc()
    metrics.sweep_customers.inc(3)
    metrics.set_model_version("7")
    metrics.model_labels.set(100)
    metrics.model_auc.set(0.8)
    metrics.model_log_loss.set(0.4)
    metrics.model_fallback.inc()
    metrics.published.labels("events.login").inc()
    metrics.rejected.labels("oversize").inc()
    metrics.notifications.labels("email", "sent").inc()
    metrics.api_requests.labels("/api/v1/at-risk", "200").inc()
    metrics.feedback.labels("useful", "yes").inc()
    metrics.alert_verdicts.labels("gone_quiet", "useful").set(1)


@pytest.fixture
def metrics() -> Metrics:
    """
    Metrics on a registry of the test's own.
    """
    return Metrics(CollectorRegistry())


@pytest.fixture
def served(metrics: Metrics) -> Iterator[str]:
    """
    The metrics served on a free loopback port; yields the /metrics URL and stops the server.
    """
    server = serve(0, registry=metrics.registry)
    try:
        yield f"http://127.0.0.1:{server.server_port}/metrics"
    finally:
        server.shutdown()
        server.server_close()


def shapes(metric_families: Iterable[Metric]) -> dict[str, tuple[str, tuple[str, ...]]]:
    """
    name -> (type, sorted label names of its samples, without a histogram's `le`).
    """
    return {
        family.name: (
            family.type,
            tuple(sorted({k for s in family.samples for k in s.labels if k != "le"})),
        )
        for family in metric_families
    }


EXPECTED_SHAPES = {name: (kind, tuple(sorted(labels))) for name, (kind, labels) in EXPECTED.items()}


def test_every_metric_is_registered_with_its_labels(metrics: Metrics) -> None:
    """
    The registry holds exactly churnwatch's metrics, each with its type and label names.
    """
    touch_every_metric(metrics)

    registered = shapes(metrics.registry.collect())

    assert EXPECTED_SHAPES == registered


def test_counters_are_exposed_with_the_total_suffix(metrics: Metrics) -> None:
    """
    Counters are exposed as `<name>_total`, as the alert rules query them.
    """
    touch_every_metric(metrics)

    value = metrics.registry.get_sample_value(
        "churnwatch_records_consumed_total", {"topic": "churn.events"}
    )

    assert 1.0 == value


def test_metrics_use_only_the_registry_they_are_given() -> None:
    """
    Building Metrics twice on two registries works and puts nothing on the global registry.
    """
    before = {family.name for family in REGISTRY.collect()}

    Metrics(CollectorRegistry())
    Metrics(CollectorRegistry())

    after = {family.name for family in REGISTRY.collect()}
    assert before == after
    assert not any(name.startswith("churnwatch_") for name in after)


def test_every_rejection_reason_starts_at_zero(metrics: Metrics) -> None:
    """
    churnwatch_rejected_total has a series at 0 for every reason code before the first rejection.
    """
    values = {
        reason: metrics.registry.get_sample_value("churnwatch_rejected_total", {"reason": reason})
        for reason in REASON_CODES
    }

    assert dict.fromkeys(REASON_CODES, 0.0) == values


def test_priming_a_topic_shows_its_counters_at_zero(metrics: Metrics) -> None:
    """
    prime_topic makes consumed, processed and duplicates appear at 0 for that topic.
    """
    metrics.prime_topic("churn.events")

    values = [
        metrics.registry.get_sample_value(name, {"topic": "churn.events"})
        for name in (
            "churnwatch_records_consumed_total",
            "churnwatch_records_processed_total",
            "churnwatch_records_duplicates_total",
        )
    ]

    assert [0.0, 0.0, 0.0] == values


def test_the_model_version_info_shows_only_the_current_version(metrics: Metrics) -> None:
    """
    Setting a new model version removes the old version's series.
    """
    metrics.set_model_version("3")
    metrics.set_model_version("4")

    samples = [
        (sample.labels, sample.value)
        for family in metrics.registry.collect()
        if family.name == "churnwatch_model_version_info"
        for sample in family.samples
    ]

    assert [({"version": "4"}, 1.0)] == samples


def test_the_http_server_serves_every_metric(metrics: Metrics, served: str) -> None:
    """
    A real HTTP GET on the loopback server returns every metric with its labels.
    """
    touch_every_metric(metrics)

    with urllib.request.urlopen(served, timeout=5) as response:
        status, text = response.status, response.read().decode()

    assert 200 == status
    # The text format shows each counter's and histogram's `_created` sample as a gauge.
    served_families = [
        family
        for family in text_string_to_metric_families(text)
        if not family.name.endswith("_created")
    ]
    assert EXPECTED_SHAPES == shapes(served_families)


def test_healthz_answers_what_the_process_says_of_its_health(metrics: Metrics) -> None:
    """
    /healthz on the metrics server: 200 with the body while healthy, 503 with it while not
    (a real GET on loopback); /metrics is served beside it.
    """
    healthy = {"now": True}

    def health() -> tuple[bool, dict[str, object]]:
        if healthy["now"]:
            return True, {"status": "ok"}
        return False, {"status": "unavailable", "redis": "unavailable"}

    server = serve(0, registry=metrics.registry, health=health)
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
            assert (200, {"status": "ok"}) == (response.status, orjson.loads(response.read()))
        healthy["now"] = False
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(f"{url}/healthz", timeout=5)
        assert 503 == caught.value.code
        assert {"status": "unavailable", "redis": "unavailable"} == orjson.loads(
            caught.value.read()
        )
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
            assert b"churnwatch_store_up" in response.read()
    finally:
        server.shutdown()
        server.server_close()


def test_the_notification_outcomes_are_the_documented_ones() -> None:
    """
    Alert consumers count notifications as sent, retried, failed, dead_lettered, duplicate or
    digested (held for the daily digest).
    """
    expected = ("sent", "retried", "failed", "dead_lettered", "duplicate", "digested")
    assert expected == NOTIFICATION_OUTCOMES


def test_default_ports_are_distinct_and_a_second_worker_clears_them() -> None:
    """
    Each process type has its own default metrics port, and the second worker's port is free.
    """
    expected = {"worker": 9464, "learner": 9465, "notify": 9466, "api": 9467}
    second_worker = DEFAULT_METRICS_PORTS["worker"] + WORKER_PORT_STEP

    assert expected == DEFAULT_METRICS_PORTS
    assert second_worker not in DEFAULT_METRICS_PORTS.values()
