"""
The streaming processes' log filter: a client library's repeated line (aiokafka's "Unable
connect to node" a hundred times a second while a broker is away) passes once, then once per
interval with how many were held back; our own lines always pass.
"""

from __future__ import annotations

import logging

from churnwatch.stream.logs import Repeats, logging_config


def _record(name: str, msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_a_library_line_that_repeats_passes_once_per_interval_with_the_count() -> None:
    now = [0.0]
    repeats = Repeats(every=10.0, clock=lambda: now[0])
    template = "Unable connect to node with id %s: %s"
    passed = []
    for i in range(100):
        now[0] = i * 0.01  # a hundred a second, for a second
        record = _record("aiokafka", template, 111, "refused")
        if repeats.filter(record):
            passed.append(record)
    assert 1 == len(passed)
    assert not hasattr(passed[0], "repeated")
    now[0] = 10.5
    later = _record("aiokafka", template, 111, "refused")
    assert repeats.filter(later)
    assert 99 == later.repeated
    now[0] = 10.6
    assert not repeats.filter(_record("aiokafka", template, 112, "refused"))
    # another template, another level or another logger is another line
    assert repeats.filter(_record("aiokafka", "Unable to update metadata from %s", 111))
    assert repeats.filter(_record("aiokafka", template, 111, "x", level=logging.WARNING))
    assert repeats.filter(_record("aiokafka.consumer.fetcher", template, 111, "x"))
    # after a quiet interval the line passes again, with nothing held back to report
    now[0] = 30.0
    again = _record("aiokafka.consumer.fetcher", template, 111, "x")
    assert repeats.filter(again)
    assert not hasattr(again, "repeated")


def test_our_own_lines_always_pass() -> None:
    repeats = Repeats(every=10.0, clock=lambda: 0.0)
    assert all(
        repeats.filter(_record("churnwatch.stream.scoring", "batch.gap_reread")) for _ in range(50)
    )


def test_the_processes_log_through_the_filter() -> None:
    config = logging_config("info", "console")
    assert ["repeats"] == config["handlers"]["stderr"]["filters"]
    assert config["filters"]["repeats"]["()"].endswith("logs.Repeats")
    assert {"faust", "aiokafka", "mode", "kafka"} == set(config["loggers"])
