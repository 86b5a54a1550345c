"""
What an alert says to a person: the email (subject, plain text, HTML), the daily digest, and
the JSON of a CSM task. Pure functions of the alert; no I/O, no clock.

Every text names the customer, the score and its change, the rule that fired and the reasons
behind the change in plain words, with the model and rules versions at the foot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from html import escape
from typing import Any, Final

from churnwatch.core.alerts import AlertRecord, AlertSeverity, Reason, alert_to_dict
from churnwatch.notify.routing import DigestWhy

_SEVERITY_ORDER: Final[dict[AlertSeverity, int]] = {"high": 0, "medium": 1, "low": 2}
_PRIORITY: Final[dict[AlertSeverity, str]] = {"high": "high", "medium": "normal", "low": "low"}
_WHY: Final[dict[DigestWhy, str]] = {
    "low_severity": "low severity",
    "over_budget": "beyond this week's alert budget",
}


@dataclass(frozen=True, slots=True)
class EmailContent:
    """An email's subject and its two bodies."""

    subject: str
    text: str
    html: str


@dataclass(frozen=True, slots=True)
class DigestItem:
    """One alert in a digest, and why it went there instead of an email of its own."""

    alert: AlertRecord
    why: DigestWhy


def rule_words(rule: str) -> str:
    """A rule name in words: `low_engagement` -> `low engagement`."""
    return rule.replace("_", " ").replace("-", " ").strip()


def score_change(alert: AlertRecord) -> str:
    """The score and its change in words, e.g. `28 of 100, down 34 points from 62`."""
    head = f"{alert.score:.0f} of 100"
    if alert.previous_score is None:
        return f"{head} (no earlier score to compare)"
    diff = alert.score - alert.previous_score
    if abs(diff) < 0.5:
        return f"{head}, unchanged from {alert.previous_score:.0f}"
    way = "down" if diff < 0 else "up"
    return f"{head}, {way} {abs(diff):.0f} points from {alert.previous_score:.0f}"


def reason_words(reason: Reason) -> str:
    """A reason in plain words: `1 urgent ticket open (raises the churn risk by 0.20)`."""
    way = "raises" if reason.contribution >= 0 else "lowers"
    return f"{reason.text} ({way} the churn risk by {abs(reason.contribution):.2f})"


def _when(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M UTC")


def _subject(alert: AlertRecord) -> str:
    change = ""
    if alert.previous_score is not None and abs(alert.score - alert.previous_score) >= 0.5:
        change = f", {alert.score - alert.previous_score:+.0f}"
    return (
        f"[churnwatch] {alert.severity.capitalize()} churn risk: customer {alert.customer_id} - "
        f"{rule_words(alert.rule)} (score {alert.score:.0f}{change})"
    )


def _facts(alert: AlertRecord) -> list[tuple[str, str]]:
    facts = [
        ("Customer", f"{alert.customer_id} (segment: {alert.segment})"),
        ("Rule", f"{rule_words(alert.rule)} (severity: {alert.severity})"),
        ("Engagement score", f"{score_change(alert)}; higher is healthier"),
    ]
    if alert.threshold is not None:
        facts.append(("Threshold", f"{alert.threshold:.0f}"))
    facts.append(("Chance of churning", f"{alert.churn_probability:.0%}"))
    return facts


def _foot(alert: AlertRecord) -> str:
    return (
        f"Decided at {_when(alert.emitted_at)} on events up to {_when(alert.event_ts)}. "
        f"Alert {alert.alert_id}, model {alert.model_version}, rules {alert.rules_version}."
    )


def render_alert(alert: AlertRecord) -> EmailContent:
    """
    The email for one alert.

    Args:
        alert: the alert as consumed from churn.alerts.

    Returns:
        The subject, a plain-text body and an HTML body with the same content.
    """
    lines = [f"Customer {alert.customer_id} needs attention.", ""]
    lines += [f"{name}: {value}." for name, value in _facts(alert)]
    lines += ["", "Why:"]
    lines += [f"  - {reason_words(r)}" for r in alert.reasons] or ["  - (no single factor)"]
    lines += ["", f"In one sentence: {alert.summary}", "", _foot(alert), ""]

    rows = "".join(
        f"<tr><th align=left>{escape(name)}</th><td>{escape(value)}</td></tr>"
        for name, value in _facts(alert)
    )
    items = "".join(f"<li>{escape(reason_words(r))}</li>" for r in alert.reasons)
    html = (
        "<!doctype html><html><body>"
        f"<p>Customer <b>{escape(alert.customer_id)}</b> needs attention.</p>"
        f"<table>{rows}</table>"
        f"<p>Why:</p><ul>{items or '<li>(no single factor)</li>'}</ul>"
        f"<p>In one sentence: {escape(alert.summary)}</p>"
        f"<p><small>{escape(_foot(alert))}</small></p>"
        "</body></html>\n"
    )
    return EmailContent(subject=_subject(alert), text="\n".join(lines), html=html)


def _digest_order(item: DigestItem) -> tuple[int, float, str]:
    return (_SEVERITY_ORDER[item.alert.severity], item.alert.score, item.alert.alert_id)


def _digest_line(item: DigestItem) -> str:
    a = item.alert
    reasons = "; ".join(r.text for r in a.reasons) or "no single factor"
    return (
        f"customer {a.customer_id} ({a.segment}): {rule_words(a.rule)}, {a.severity}; "
        f"score {score_change(a)}; {reasons}"
    )


def render_digest(day: date, items: Sequence[DigestItem]) -> EmailContent:
    """
    The daily digest of one recipient: every alert of `day` (UTC) that was not sent on its
    own, highest severity and lowest score first.
    """
    ordered = sorted(items, key=_digest_order)
    count = len(ordered)
    noun = "alert" if count == 1 else "alerts"
    whys = sorted({item.why for item in ordered})
    why = " or ".join(_WHY[w] for w in whys)
    intro = f"{count} churn {noun} of {day.isoformat()} (UTC), collected here because of {why}."
    lines = [intro, ""]
    lines += [f"- {_digest_line(item)}" for item in ordered]
    lines += ["", "Alert ids: " + ", ".join(item.alert.alert_id for item in ordered), ""]
    rows = "".join(f"<li>{escape(_digest_line(item))}</li>" for item in ordered)
    html = f"<!doctype html><html><body><p>{escape(intro)}</p><ul>{rows}</ul></body></html>\n"
    subject = f"[churnwatch] Daily digest for {day.isoformat()}: {count} {noun}"
    return EmailContent(subject=subject, text="\n".join(lines), html=html)


def task_payload(alert: AlertRecord, *, assignee: str | None) -> dict[str, Any]:
    """
    The JSON body of a CSM task: a title and a description in words, a priority, the
    assignee when routing chose one, and the full alert for systems that want the numbers.
    `task_id` is the alert id, as is the request's Idempotency-Key.
    """
    content = render_alert(alert)
    return {
        "task_id": alert.alert_id,
        "type": "churn_risk",
        "title": content.subject.removeprefix("[churnwatch] "),
        "description": content.text,
        "priority": _PRIORITY[alert.severity],
        "customer_id": alert.customer_id,
        "assignee": assignee,
        "alert": alert_to_dict(alert),
    }
