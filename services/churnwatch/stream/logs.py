"""
Log lines of the streaming processes: a fixed event name plus the record's `extra` context,
as `key=value` pairs (console) or one JSON object per line (json).

The client libraries' warnings and errors repeat while a broker is away (aiokafka writes about
a hundred "Unable connect to node" lines a second): `Repeats` lets the first of each through
and then one per `REPEAT_EVERY_SECONDS` with the count it held back (`repeated=N`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

import orjson

# Attributes every LogRecord has; anything else came in through `extra`.
_STANDARD: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


LIBRARIES: Final = ("faust", "aiokafka", "mode", "kafka")
"""The loggers of the client libraries: chatty at INFO, repetitive when a broker is away."""
REPEAT_EVERY_SECONDS: Final = 10.0


class Repeats(logging.Filter):
    """
    Holds back a library's log line that repeats: per logger, level and message template,
    the first passes, then at most one per `every` seconds, carrying `repeated`, how many were
    held back since the last one that passed. Our own loggers' lines always pass.
    """

    def __init__(
        self, every: float = REPEAT_EVERY_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.every = every
        self.clock = clock
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(LIBRARIES):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.every:
            self._seen[key] = (seen[0], seen[1] + 1)
            return False
        if seen is not None and seen[1]:
            record.repeated = seen[1]
        if len(self._seen) > 10_000:  # many distinct templates: forget the old ones
            self._seen.clear()
        self._seen[key] = (now, 0)
        return True


def context_of(record: logging.LogRecord) -> dict[str, Any]:
    """The `extra` fields of a record."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return orjson.dumps(text).decode() if (" " in text or not text) else text


class KeyValueFormatter(logging.Formatter):
    """`2026-01-01T00:00:00.000Z INFO logger event key=value ...`."""

    def format(self, record: logging.LogRecord) -> str:
        at = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        parts = [at.replace("+00:00", "Z"), record.levelname, record.name, record.getMessage()]
        parts += [f"{k}={_text(v)}" for k, v in context_of(record).items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: at, level, logger, event and the context."""

    def format(self, record: logging.LogRecord) -> str:
        at = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        data: dict[str, Any] = {
            "at": at.replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            **context_of(record),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(data, default=repr).decode()


def logging_config(level: str, fmt: str) -> dict[str, Any]:
    """A `logging.config.dictConfig` dict: one stderr handler with our formatter."""
    formatter = JsonFormatter if fmt == "json" else KeyValueFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"churnwatch": {"()": f"{formatter.__module__}.{formatter.__name__}"}},
        "filters": {"repeats": {"()": f"{Repeats.__module__}.{Repeats.__name__}"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "churnwatch",
                "filters": ["repeats"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        # faust and aiokafka are chatty at INFO about every rebalance step.
        "loggers": {name: {"level": "WARNING"} for name in LIBRARIES},
    }
