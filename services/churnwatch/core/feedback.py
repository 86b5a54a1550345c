"""
Feedback on alerts: a customer-success manager's verdict on one alert, and the false-alarm
rate per rule that the backtest reports from the verdicts.

One verdict per alert: a new one replaces the old, the same one again changes nothing (the
store keeps them by `alert_id`, which a replay of the same events reproduces, so verdicts
given on production alerts join the backtest's alerts).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal, get_args

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from churnwatch.core.alerts import AlertRecord
from churnwatch.core.errors import ChurnwatchError

Verdict = Literal["useful", "false_alarm", "saved", "lost"]
VERDICTS: Final[tuple[Verdict, ...]] = get_args(Verdict)


class BadVerdictError(ChurnwatchError):
    """A verdict that is not one of `VERDICTS`, or a verdict record that does not parse."""


class VerdictRecord(BaseModel):
    """A stored verdict, as the API returns it and `churnwatch feedback export` writes it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    alert_id: str = Field(min_length=1)
    customer_id: str = Field(min_length=1)
    rule: str = Field(min_length=1)
    verdict: Verdict
    by: str = Field(default="", max_length=200, description="Who gave it (free text).")
    note: str = Field(default="", max_length=2000)
    given_at: AwareDatetime = Field(description="Wall-clock time the verdict was given.")


def check_verdict(value: object) -> Verdict:
    """
    `value` as a verdict.

    Raises:
        BadVerdictError: it is not one of `VERDICTS` (the message lists them).
    """
    for verdict in VERDICTS:
        if value == verdict:
            return verdict
    msg = f"verdict: expected one of {', '.join(VERDICTS)}, got {value!r}"
    raise BadVerdictError(msg)


def verdict_record(
    alert: AlertRecord, verdict: object, *, by: str, note: str, given_at: datetime
) -> VerdictRecord:
    """The record of `verdict` on `alert`. Raises BadVerdictError naming what was wrong."""
    checked = check_verdict(verdict)
    try:
        return VerdictRecord(
            alert_id=alert.alert_id,
            customer_id=alert.customer_id,
            rule=alert.rule,
            verdict=checked,
            by=by,
            note=note,
            given_at=given_at,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        msg = f"{field}: {first['msg']}"
        raise BadVerdictError(msg) from exc


def parse_verdicts(lines: Iterable[bytes], *, source: str) -> dict[str, VerdictRecord]:
    """
    Verdict records from JSONL (what `churnwatch feedback export` writes), by alert id.

    Raises:
        BadVerdictError: a line is not a verdict record; the message names the source and line.
    """
    found: dict[str, VerdictRecord] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = VerdictRecord.model_validate(orjson.loads(line))
        except (orjson.JSONDecodeError, ValidationError) as exc:
            msg = f"{source}:{number}: not a verdict record: {exc}"
            raise BadVerdictError(msg) from exc
        found[record.alert_id] = record
    return found


@dataclass(frozen=True, slots=True)
class RuleFeedback:
    """What the verdicts say of one rule's alerts in a backtest."""

    rule: str
    alerts: int
    """The rule's alerts in the backtest."""
    judged: int
    """Of those, how many carry a verdict."""
    counts: Mapping[str, int]
    """Judged alerts by verdict."""

    @property
    def false_alarm_rate(self) -> float | None:
        """Share of the judged alerts marked `false_alarm` (None when none was judged)."""
        return None if self.judged == 0 else self.counts.get("false_alarm", 0) / self.judged

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "alerts": self.alerts,
            "judged": self.judged,
            "verdicts": dict(self.counts),
            "false_alarm_rate": self.false_alarm_rate,
        }


def rule_feedback(
    alerts: Iterable[AlertRecord], verdicts: Mapping[str, VerdictRecord]
) -> tuple[list[RuleFeedback], int]:
    """
    The false-alarm rate per rule: the backtest's alerts joined to the verdicts by alert id.

    Returns:
        One entry per rule that alerted (by rule name), and how many verdicts matched no alert
        of the backtest (given on alerts of other rules files or other history).
    """
    tally = FeedbackTally(verdicts)
    for alert in alerts:
        tally.add(alert)
    return tally.result()


class FeedbackTally:
    """Counts, alert by alert, what `rule_feedback` reports (without keeping the alerts)."""

    def __init__(self, verdicts: Mapping[str, VerdictRecord]) -> None:
        self.verdicts = verdicts
        self.totals: dict[str, int] = {}
        self.judged: dict[str, dict[str, int]] = {}
        self.matched = 0

    def add(self, alert: AlertRecord) -> None:
        self.totals[alert.rule] = self.totals.get(alert.rule, 0) + 1
        record = self.verdicts.get(alert.alert_id)
        if record is not None:
            self.matched += 1
            per = self.judged.setdefault(alert.rule, {})
            per[record.verdict] = per.get(record.verdict, 0) + 1

    def result(self) -> tuple[list[RuleFeedback], int]:
        entries = []
        for rule in sorted(self.totals):
            per = self.judged.get(rule, {})
            counts: dict[str, int] = {v: per.get(v, 0) for v in VERDICTS}
            entries.append(RuleFeedback(rule, self.totals[rule], sum(per.values()), counts))
        return entries, len(self.verdicts) - self.matched
