"""
Whether Redis answers, as a worker or the learner last found it: while it does not, they wait
and retry with a backoff (committing nothing: no record is acknowledged before its batch is
written), report unhealthy on /healthz and churnwatch_store_up 0, and go on when it returns.
An outage is logged twice, when it begins and when it ends, not at every retry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from churnwatch.core.errors import StoreUnavailableError
from churnwatch.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")

FIRST_RETRY_SECONDS = 0.1


class StoreHealth:
    """The state of the store as the process's calls find it; `status()` is /healthz's."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        max_backoff: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.max_backoff = max_backoff
        self._clock = clock
        self.down_since: float | None = None
        self.failures = 0
        """Failed calls in the current outage."""
        self.last_error = ""
        metrics.store_up.set(1)

    def failed(self, error: StoreUnavailableError, during: str) -> float:
        """Counts a failed call; returns how long to wait before the next attempt."""
        self.failures += 1
        self.last_error = str(error)
        if self.down_since is None:
            self.down_since = self._clock()
            self.metrics.store_up.set(0)
            log.warning("store.unavailable", extra={"during": during, "error": self.last_error})
        backoff: float = FIRST_RETRY_SECONDS * 2.0 ** min(self.failures - 1, 30)
        return min(self.max_backoff, backoff)

    def succeeded(self) -> None:
        if self.down_since is None:
            return
        log.info(
            "store.recovered",
            extra={
                "down_seconds": round(self._clock() - self.down_since, 1),
                "failed_calls": self.failures,
            },
        )
        self.down_since, self.failures, self.last_error = None, 0, ""
        self.metrics.store_up.set(1)

    def status(self) -> tuple[bool, dict[str, object]]:
        if self.down_since is None:
            return True, {"status": "ok", "redis": "ok"}
        return False, {
            "status": "unavailable",
            "redis": "unavailable",
            "down_seconds": round(self._clock() - self.down_since, 1),
            "error": self.last_error,
        }

    async def retry(
        self,
        during: str,
        call: Callable[[], Awaitable[T]],
        *,
        before_retry: Callable[[], object] | None = None,
    ) -> T:
        """
        `call()` until it does not raise StoreUnavailableError, waiting with the backoff in
        between; `before_retry` runs before each new attempt (to forget what the failed one
        may have left half done). Other errors propagate at once.
        """
        while True:
            try:
                result = await call()
            except StoreUnavailableError as exc:
                await asyncio.sleep(self.failed(exc, during))
                if before_retry is not None:
                    before_retry()
                continue
            self.succeeded()
            return result
