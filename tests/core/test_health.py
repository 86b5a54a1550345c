"""
The store's health as a worker or the learner sees it: a failed Redis call turns it
unavailable (churnwatch_store_up 0, /healthz 503) and gives a backoff that doubles up to the
cap; a call that succeeds ends the outage. `retry` waits and calls again until Redis answers.
"""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from churnwatch.core.errors import StoreUnavailableError
from churnwatch.metrics import Metrics
from churnwatch.stream.health import StoreHealth


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _up(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("churnwatch_store_up")


def test_an_outage_is_unhealthy_with_a_doubling_backoff_until_a_call_succeeds() -> None:
    metrics, clock = Metrics(CollectorRegistry()), _Clock()
    health = StoreHealth(metrics, max_backoff=1.0, clock=clock)
    assert (True, {"status": "ok", "redis": "ok"}) == health.status()
    assert 1.0 == _up(metrics)

    error = StoreUnavailableError("load_states on redis at 127.0.0.1:1: Connection refused")
    delays = [health.failed(error, "scoring") for _ in range(6)]
    clock.now += 2.5

    assert [0.1, 0.2, 0.4, 0.8, 1.0, 1.0] == pytest.approx(delays)
    ok, body = health.status()
    assert not ok
    assert {"status": "unavailable", "redis": "unavailable", "down_seconds": 2.5} == {
        k: v for k, v in body.items() if k != "error"
    }
    assert "Connection refused" in str(body["error"])
    assert 0.0 == _up(metrics)

    health.succeeded()
    assert health.status()[0]
    assert 1.0 == _up(metrics)
    assert pytest.approx(0.1) == health.failed(error, "sweep")  # a new outage starts over


def test_retry_calls_again_until_the_store_answers_and_lets_other_errors_through() -> None:
    health = StoreHealth(Metrics(CollectorRegistry()), max_backoff=0.01)
    calls: list[str] = []

    async def flaky() -> str:
        calls.append("call")
        if calls.count("call") < 3:
            msg = "write_batch on redis at 127.0.0.1:1: refused"
            raise StoreUnavailableError(msg)
        return "written"

    async def broken() -> str:
        msg = "not a store error"
        raise ValueError(msg)

    def undo() -> None:
        calls.append("undo")

    assert "written" == asyncio.run(health.retry("scoring", flaky, before_retry=undo))
    assert ["call", "undo", "call", "undo", "call"] == calls
    assert health.status()[0]
    with pytest.raises(ValueError, match="not a store error"):
        asyncio.run(health.retry("scoring", broken))
