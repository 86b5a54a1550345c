"""
Log lines of `churnwatch notify`: a fixed event name plus the `extra` context, as
`key=value` pairs (console) or one JSON object per line (json), with every secret value
replaced by stars in the finished line (so a library's own log line cannot leak one either).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Final

import orjson

REDACTED: Final = "**********"

# Attributes every LogRecord has; anything else came in through `extra`.
_STANDARD: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


class Redactor:
    """Replaces each of the given secret values by stars."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret that contains another is replaced whole.
        self.secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text


def context_of(record: logging.LogRecord) -> dict[str, Any]:
    """The `extra` fields of a record."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return orjson.dumps(text).decode() if (" " in text or not text) else text


class NotifyFormatter(logging.Formatter):
    """Formats a record as console or json text, then scrubs the secrets out of it."""

    def __init__(self, fmt: str, redactor: Redactor) -> None:
        super().__init__()
        self.json = fmt == "json"
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        at = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        at = at.replace("+00:00", "Z")
        if self.json:
            data: dict[str, Any] = {
                "at": at,
                "level": record.levelname.lower(),
                "logger": record.name,
                "event": record.getMessage(),
                **context_of(record),
            }
            if record.exc_info:
                data["exception"] = self.formatException(record.exc_info)
            line = orjson.dumps(data, default=repr).decode()
        else:
            parts = [at, record.levelname, record.name, record.getMessage()]
            parts += [f"{k}={_text(v)}" for k, v in context_of(record).items()]
            line = " ".join(parts)
            if record.exc_info:
                line += "\n" + self.formatException(record.exc_info)
        return self.redactor.scrub(line)


def configure_logging(level: str, fmt: str, redactor: Redactor) -> None:
    """One stderr handler on the root logger with `NotifyFormatter`; kafka-python kept quiet."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(NotifyFormatter(fmt, redactor))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # kafka-python is chatty at INFO about every rebalance step.
    logging.getLogger("kafka").setLevel(max(logging.WARNING, root.level))
