"""
The one error hierarchy of churnwatch, split by who is at fault.
"""

from __future__ import annotations

from typing import Literal, get_args

ReasonCode = Literal[
    "oversize",
    "not_utf8",
    "malformed_json",
    "not_an_object",
    "unknown_type",
    "missing_field",
    "wrong_type",
    "invalid_value",
    "naive_timestamp",
    "future_timestamp",
    "too_late",
    "reused_event_id",
]
"""Why a record was dead-lettered; carried by the dead-letter record."""

REASON_CODES: tuple[ReasonCode, ...] = get_args(ReasonCode)


class ChurnwatchError(Exception):
    """Base for every churnwatch error."""


class BadEventError(ChurnwatchError):
    """An incoming event failed validation. Dead-letter it; keep running."""

    def __init__(self, message: str, *, reason: ReasonCode, field: str | None = None) -> None:
        super().__init__(message)
        self.reason: ReasonCode = reason
        self.message = message
        self.field = field


class ConfigError(ChurnwatchError):
    """Settings or rule files are invalid. Fail at startup."""


class StoreUnavailableError(ChurnwatchError):
    """Redis did not answer. Retry, then let the worker crash."""


class ModelFormatError(ChurnwatchError):
    """A model checkpoint could not be read (wrong format or version)."""
