"""
Where an alert goes: its recipient, one email or the daily digest, or a CSM task.

Pure: no Redis, no clock; the delivery time is an argument. The only stateful input, whether
the recipient's weekly budget still has room, is decided by the delivery state (Redis) and
passed in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal, get_args

import orjson

from churnwatch.core.alerts import AlertRecord, AlertSeverity
from churnwatch.notify.settings import RecipientRoute

PlanKind = Literal["email", "digest", "task"]
DigestWhy = Literal["low_severity", "over_budget"]


@dataclass(frozen=True, slots=True)
class Plan:
    """
    What a consumer decided to do with one alert; stored with its delivery state, so a
    consumer that takes the alert over after a crash carries out the same plan.
    """

    kind: PlanKind
    recipient: str | None
    """The email address (email, digest) or the task's assignee (task; may be None)."""
    day: date | None = None
    """The UTC day of the digest the alert joins (digest only)."""
    why: DigestWhy | None = None

    def to_json(self) -> str:
        return orjson.dumps(
            {
                "kind": self.kind,
                "recipient": self.recipient,
                "day": None if self.day is None else self.day.isoformat(),
                "why": self.why,
            }
        ).decode()

    @classmethod
    def from_json(cls, raw: str) -> Plan:
        data = orjson.loads(raw)
        kind = data["kind"]
        why = data.get("why")
        if kind not in get_args(PlanKind) or why not in (None, *get_args(DigestWhy)):
            msg = f"expected a stored delivery plan, got {raw!r}"
            raise ValueError(msg)
        day = data.get("day")
        return cls(
            kind=kind,
            recipient=data.get("recipient"),
            day=None if day is None else date.fromisoformat(day),
            why=why,
        )


def _matches(route: RecipientRoute, alert: AlertRecord) -> bool:
    return (
        (route.segment is None or alert.segment in route.segment)
        and (route.severity is None or alert.severity in route.severity)
        and (route.rule is None or alert.rule in route.rule)
    )


def choose_recipient(
    alert: AlertRecord,
    routes: Sequence[RecipientRoute],
    default: str | None,
    *,
    owner: str | None = None,
) -> str | None:
    """
    The recipient of an alert: its account owner when known, else the first matching route,
    else the default.

    Args:
        alert: the alert.
        routes: recipient routes in order; the first whose every given condition matches wins.
        default: the recipient when no route matches.
        owner: the account owner's address. Alerts carry none today (see the module docs of
            churnwatch.notify.consumer); the parameter is where it will plug in.
    """
    if owner:
        return owner
    for route in routes:
        if _matches(route, alert):
            return route.recipient
    return default


def needs_budget(alert: AlertRecord, digest_severities: Iterable[AlertSeverity]) -> bool:
    """
    True when the alert would be one email of its own, so the recipient's budget decides.
    """
    return alert.action == "email" and alert.severity not in tuple(digest_severities)


def plan_for(
    alert: AlertRecord,
    *,
    recipient: str | None,
    digest_severities: Iterable[AlertSeverity],
    within_budget: bool,
    at: datetime,
) -> Plan:
    """
    The plan for one alert delivered at `at`.

    `csm_task` alerts always become a task (the task system keeps its own queue); `email`
    alerts of a digest severity join that day's digest, and the others are one email each
    while the recipient's weekly budget has room (`within_budget`), then join the digest.
    """
    if alert.action == "csm_task":
        return Plan(kind="task", recipient=recipient)
    if alert.severity in tuple(digest_severities):
        return Plan(kind="digest", recipient=recipient, day=digest_day(at), why="low_severity")
    if not within_budget:
        return Plan(kind="digest", recipient=recipient, day=digest_day(at), why="over_budget")
    return Plan(kind="email", recipient=recipient)


def digest_day(at: datetime) -> date:
    """The UTC day a digest entry made at `at` belongs to."""
    return at.astimezone(UTC).date()


def day_end(day: date) -> datetime:
    """The first instant after `day` (UTC): its digest is due from then on."""
    return datetime.combine(day, time(0), tzinfo=UTC) + timedelta(days=1)


def budget_week(at: datetime) -> str:
    """The ISO week (UTC) of a delivery, e.g. `2026-W02`: the budget's period."""
    year, week, _ = at.astimezone(UTC).isocalendar()
    return f"{year}-W{week:02d}"


def digest_id(day: date, recipient: str, alert_ids: Iterable[str]) -> str:
    """
    The delivery id of one digest email: the same day, recipient and alerts give the same id
    (and Message-ID), so a digest resent after a crash can be recognised.
    """
    key = "\x1f".join((day.isoformat(), recipient, *sorted(alert_ids)))
    return "digest-" + hashlib.sha256(key.encode()).hexdigest()[:32]


def message_id(delivery_id: str, domain: str) -> str:
    """A Message-ID derived from the delivery id only, so a resend carries the same one."""
    return f"<{delivery_id}@{domain}>"


def message_id_domain(sender: str, configured: str | None) -> str:
    """The Message-ID domain: the configured one, else the sender's domain."""
    if configured:
        return configured
    _, _, domain = sender.rpartition("@")
    return domain or "churnwatch.invalid"
