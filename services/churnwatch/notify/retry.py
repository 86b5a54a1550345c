"""
Failures of a delivery and the backoff between attempts. Pure: the randomness of the jitter
comes from a `random.Random` the caller seeds, and nothing here sleeps.

Transient (retried): SMTP 4xx, HTTP 5xx, 408, 425 and 429, timeouts, refused or dropped
connections. Permanent (dead-lettered at once): SMTP 5xx, every other HTTP 4xx (and 3xx:
the webhook does not follow redirects), a TLS certificate that does not verify.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from churnwatch.core.errors import ChurnwatchError

Kind = Literal["ok", "transient", "permanent"]
DeadLetterReason = Literal[
    "malformed_alert",
    "not_configured",
    "permanent_failure",
    "retries_exhausted",
    "unconfirmed_delivery",
]
"""Why the alert consumers dead-lettered a record (the `reason` of the dead-letter record)."""

_TRANSIENT_HTTP = frozenset({408, 425, 429})


class DeliveryError(ChurnwatchError):
    """
    One attempt to send an email or a task failed; `transient` says whether to try again.
    The message never carries a secret (the senders scrub it).
    """

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient


def http_status_kind(status: int) -> Kind:
    """How a webhook's HTTP status counts: 2xx ok, 5xx and 408/425/429 transient, else permanent."""
    if 200 <= status < 300:
        return "ok"
    if status >= 500 or status in _TRANSIENT_HTTP:
        return "transient"
    return "permanent"


def smtp_code_kind(code: int) -> Kind:
    """How an SMTP reply code counts: 2xx/3xx ok, 4xx transient, 5xx (or other) permanent."""
    if 200 <= code < 400:
        return "ok"
    if 400 <= code < 500:
        return "transient"
    return "permanent"


@dataclass(frozen=True, slots=True)
class Backoff:
    """
    Exponential backoff with jitter: before retry n (1, 2, ...) wait
    `min(cap, base * 2 ** (n - 1)) * (1 - jitter * u)` with u uniform in [0, 1).
    """

    attempts: int
    """Attempts in all, the first included."""
    base: timedelta
    cap: timedelta
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.attempts < 1 or not 0 <= self.jitter <= 1 or self.base <= timedelta(0):
            msg = (
                "expected attempts >= 1, 0 <= jitter <= 1 and a positive base, got "
                f"attempts={self.attempts}, jitter={self.jitter}, base={self.base}"
            )
            raise ValueError(msg)

    def delay(self, retry: int, rng: random.Random) -> timedelta:
        """The wait before retry number `retry` (1 for the second attempt)."""
        raw: timedelta = min(self.cap, self.base * (2 ** (retry - 1)))
        cut = 1.0 - self.jitter * rng.random()
        return raw * cut

    def delays(self, rng: random.Random) -> list[timedelta]:
        """Every wait of a delivery that fails each attempt."""
        return [self.delay(n, rng) for n in range(1, self.attempts)]
