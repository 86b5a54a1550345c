"""
The pure parts of the alert consumers: templates, routing, backoff, failure kinds, redaction,
dead-letter records and settings.
"""

from __future__ import annotations

import base64
import random
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import click
import orjson
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from churnwatch.core.alerts import AlertRecord, Reason, alert_to_json
from churnwatch.notify.commands import register
from churnwatch.notify.delivery import DeadLetter, Source
from churnwatch.notify.email import build_message
from churnwatch.notify.logs import REDACTED, Redactor
from churnwatch.notify.retry import Backoff, http_status_kind, smtp_code_kind
from churnwatch.notify.routing import (
    Plan,
    budget_week,
    choose_recipient,
    day_end,
    digest_day,
    digest_id,
    message_id,
    message_id_domain,
    plan_for,
)
from churnwatch.notify.settings import (
    NotifySettings,
    RecipientRoute,
    SmtpSettings,
    WebhookSettings,
)
from churnwatch.notify.templates import (
    DigestItem,
    render_alert,
    render_digest,
    score_change,
    task_payload,
)

AT = datetime(2026, 1, 6, 14, 45, tzinfo=UTC)


def make_alert(**overrides: Any) -> AlertRecord:
    """
    An alert as the scoring workers publish it, with fields overridden.
    """
    base: dict[str, Any] = {
        "alert_id": "0c12603691288a787f297fa238e5299d",
        "customer_id": "c000025",
        "rule": "low_engagement",
        "severity": "high",
        "action": "email",
        "score": 28.0,
        "previous_score": 62.0,
        "threshold": 30.0,
        "churn_probability": 0.72,
        "reasons": [
            Reason(
                factor="login_trend",
                contribution=0.09,
                text="logins down 60% vs. the 30-day average",
            ),
            Reason(factor="open_urgent_tickets", contribution=0.06, text="2 urgent tickets open"),
        ],
        "summary": "risk +0.18: logins down 60% vs. the 30-day average (+0.09), ...",
        "segment": "growth",
        "event_ts": AT + timedelta(hours=1),
        "emitted_at": AT,
        "model_version": "logreg-43-a85ebb97da46",
        "rules_version": "2026.11.2+367c5aa1",
    }
    return AlertRecord(**(base | overrides))


@pytest.mark.parametrize(
    ("score", "previous", "expected"),
    [
        (28.0, 62.0, "28 of 100, down 34 points from 62"),
        (70.0, 60.0, "70 of 100, up 10 points from 60"),
        (50.2, 50.0, "50 of 100, unchanged from 50"),
        (40.0, None, "40 of 100 (no earlier score to compare)"),
    ],
)
def test_the_score_change_reads_in_words(
    score: float, previous: float | None, expected: str
) -> None:
    """
    The score's change is said as down/up N points from the earlier score, or its absence.
    """
    assert expected == score_change(make_alert(score=score, previous_score=previous))


def test_an_alert_email_names_the_customer_score_change_rule_and_reasons() -> None:
    """
    Subject, text and HTML all show the customer, the score and its change, the rule and reasons.
    """
    content = render_alert(make_alert())
    expected_subject = (
        "[churnwatch] High churn risk: customer c000025 - low engagement (score 28, -34)"
    )
    assert expected_subject == content.subject
    for body in (content.text, content.html):
        for part in (
            "c000025",
            "growth",
            "28 of 100, down 34 points from 62",
            "low engagement",
            "logins down 60% vs. the 30-day average (raises the churn risk by 0.09)",
            "2 urgent tickets open (raises the churn risk by 0.06)",
            "72%",
            "logreg-43-a85ebb97da46",
        ):
            assert (part, True) == (part, part in body)


def test_a_negative_reason_says_it_lowers_the_risk() -> None:
    """
    A reason with a negative share is worded as lowering the churn risk.
    """
    alert = make_alert(reasons=[Reason(factor="csat_avg", contribution=-0.03, text="csat 4.8")])
    assert "csat 4.8 (lowers the churn risk by 0.03)" in render_alert(alert).text


@given(customer_id=st.text(min_size=1, max_size=20), text=st.text(max_size=30))
def test_the_html_body_escapes_whatever_the_alert_carries(customer_id: str, text: str) -> None:
    """
    Customer ids and reason texts are escaped in the HTML body, so they cannot inject markup.
    """
    alert = make_alert(
        customer_id=customer_id,
        reasons=[Reason(factor="x", contribution=0.1, text=f"<x-inject>{text}")],
    )
    html = render_alert(alert).html
    assert "<x-inject>" not in html
    assert "&lt;x-inject&gt;" in html


def test_a_task_carries_the_alert_id_words_priority_assignee_and_the_alert() -> None:
    """
    The task's id is the alert id, and its alert field parses back to the same alert.
    """
    alert = make_alert(action="csm_task", severity="medium")
    payload = task_payload(alert, assignee="owner@example.com")
    expected = {
        "task_id": alert.alert_id,
        "priority": "normal",
        "assignee": "owner@example.com",
        "customer_id": "c000025",
    }
    assert expected == {k: payload[k] for k in expected}
    assert payload["title"].startswith("Medium churn risk: customer c000025")
    assert alert == AlertRecord.model_validate_json(orjson.dumps(payload["alert"]))


def test_a_digest_lists_the_highest_severity_and_lowest_score_first() -> None:
    """
    The digest counts its alerts, says why they are there and orders them by severity, score.
    """
    items = [
        DigestItem(make_alert(alert_id="a" * 32, severity="low", score=50.0), "low_severity"),
        DigestItem(make_alert(alert_id="b" * 32, severity="high", score=40.0), "over_budget"),
        DigestItem(make_alert(alert_id="c" * 32, severity="high", score=20.0), "over_budget"),
    ]
    content = render_digest(date(2026, 1, 6), items)
    assert "[churnwatch] Daily digest for 2026-01-06: 3 alerts" == content.subject
    lines = [line for line in content.text.splitlines() if line.startswith("- ")]
    assert ["high", "high", "low"] == [line.split(", ")[1].split(";")[0] for line in lines]
    assert "score 20 of 100" in lines[0]
    assert "low severity or beyond this week's alert budget" in content.text


ROUTES = (
    RecipientRoute(segment=("enterprise",), severity=("high",), recipient="vip-high@example.com"),
    RecipientRoute(segment=("enterprise",), recipient="vip@example.com"),
    RecipientRoute(rule=("gone_quiet",), recipient="winback@example.com"),
)


@pytest.mark.parametrize(
    ("overrides", "owner", "expected"),
    [
        ({"segment": "enterprise", "severity": "high"}, None, "vip-high@example.com"),
        ({"segment": "enterprise", "severity": "low"}, None, "vip@example.com"),
        ({"segment": "growth", "rule": "gone_quiet"}, None, "winback@example.com"),
        ({"segment": "growth"}, None, "csm@example.com"),
        ({"segment": "enterprise"}, "owner@example.com", "owner@example.com"),
    ],
)
def test_the_recipient_is_the_owner_then_the_first_matching_route_then_the_default(
    overrides: dict[str, Any], owner: str | None, expected: str
) -> None:
    """
    Routing picks the account owner, else the first route that matches, else the default.
    """
    alert = make_alert(**overrides)
    assert expected == choose_recipient(alert, ROUTES, "csm@example.com", owner=owner)


@pytest.mark.parametrize(
    ("overrides", "within_budget", "expected"),
    [
        ({"action": "csm_task", "severity": "low"}, False, Plan("task", "r@x.io")),
        ({"severity": "low"}, True, Plan("digest", "r@x.io", date(2026, 1, 6), "low_severity")),
        ({"severity": "medium"}, False, Plan("digest", "r@x.io", date(2026, 1, 6), "over_budget")),
        ({"severity": "medium"}, True, Plan("email", "r@x.io")),
    ],
)
def test_the_plan_sends_tasks_always_and_emails_within_budget_else_the_digest(
    overrides: dict[str, Any], within_budget: bool, expected: Plan
) -> None:
    """
    Tasks are always sent; low-severity or over-budget emails join the day's digest.
    """
    actual = plan_for(
        make_alert(**overrides),
        recipient="r@x.io",
        digest_severities=("low",),
        within_budget=within_budget,
        at=AT,
    )
    assert expected == actual
    assert expected == Plan.from_json(actual.to_json())


def test_days_weeks_and_ids_are_utc_and_stable() -> None:
    """
    Digest days and budget weeks are UTC; digest ids ignore the order of their alerts.
    """
    late = datetime(2026, 12, 31, 23, 30, tzinfo=UTC)
    assert date(2026, 12, 31) == digest_day(late)
    assert datetime(2027, 1, 1, tzinfo=UTC) == day_end(date(2026, 12, 31))
    assert "2026-W53" == budget_week(late)
    assert "2026-W02" == budget_week(AT)
    day = date(2026, 1, 6)
    assert digest_id(day, "a@x.io", ["1", "2"]) == digest_id(day, "a@x.io", ["2", "1"])
    assert digest_id(day, "a@x.io", ["1"]) != digest_id(day, "b@x.io", ["1"])
    assert "<abc@example.com>" == message_id("abc", message_id_domain("cw@example.com", None))
    assert "<abc@mx.io>" == message_id("abc", message_id_domain("cw@example.com", "mx.io"))


def test_the_email_has_both_bodies_and_a_message_id_from_the_delivery_id() -> None:
    """
    The message is multipart/alternative with the Message-ID built from the alert id.
    """
    message: EmailMessage = build_message(
        render_alert(make_alert()),
        sender="cw@example.com",
        recipient="csm@example.com",
        message_id="<0c12@example.com>",
        sent_at=AT,
        delivery_id="0c12",
    )
    assert "<0c12@example.com>" == message["Message-ID"]
    assert "multipart/alternative" == message.get_content_type()
    parts = [part.get_content_type() for part in message.iter_parts()]
    assert ["text/plain", "text/html"] == parts


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        *[(200, "ok"), (201, "ok"), (204, "ok"), (301, "permanent"), (400, "permanent")],
        *[(401, "permanent"), (404, "permanent"), (408, "transient"), (429, "transient")],
        *[(500, "transient"), (503, "transient")],
    ],
)
def test_http_statuses_are_ok_transient_or_permanent(status: int, expected: str) -> None:
    """
    2xx is success, 5xx and 408/425/429 are retried, every other status is permanent.
    """
    assert expected == http_status_kind(status)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        *[(250, "ok"), (354, "ok"), (421, "transient"), (451, "transient")],
        *[(550, "permanent"), (554, "permanent"), (-1, "permanent")],
    ],
)
def test_smtp_codes_are_ok_transient_or_permanent(code: int, expected: str) -> None:
    """
    SMTP 4xx replies are retried and 5xx replies are permanent.
    """
    assert expected == smtp_code_kind(code)


@given(seed=st.integers(0, 2**32), jitter=st.floats(0, 1), retry=st.integers(1, 12))
def test_a_backoff_doubles_up_to_its_cap_and_jitter_only_shortens_it(
    seed: int, jitter: float, retry: int
) -> None:
    """
    Each wait lies in [(1 - jitter) * raw, raw] with raw = min(cap, base * 2^(n-1)).
    """
    backoff = Backoff(
        attempts=5, base=timedelta(seconds=0.5), cap=timedelta(seconds=30), jitter=jitter
    )
    raw = min(timedelta(seconds=30), timedelta(seconds=0.5) * 2 ** (retry - 1))
    delay = backoff.delay(retry, random.Random(seed))
    assert raw * (1 - jitter) - timedelta(microseconds=1) <= delay <= raw


def test_the_same_seed_gives_the_same_backoff() -> None:
    """
    Jitter comes from the given generator, so a seed fixes every wait.
    """
    backoff = Backoff(attempts=4, base=timedelta(seconds=1), cap=timedelta(seconds=3))
    first = backoff.delays(random.Random(7))
    assert first == backoff.delays(random.Random(7))
    assert 3 == len(first)


def test_the_redactor_replaces_every_secret_longest_first() -> None:
    """
    Secrets are replaced by stars, and one that contains another is replaced whole.
    """
    redactor = Redactor(["pass", "password123", ""])
    expected = f"login {REDACTED} then {REDACTED}"
    assert expected == redactor.scrub("login password123 then pass")


def test_a_dead_letter_carries_the_reason_source_and_original_bytes() -> None:
    """
    The dead-letter JSON has the reason, the source position and the original bytes in base64.
    """
    raw = alert_to_json(make_alert())
    letter = DeadLetter(
        reason="permanent_failure",
        message="webhook answered 400",
        source=Source("churn.alerts", 2, 41, b"c000025"),
        original=raw,
        stage="notify",
        action="csm_task",
        delivery_id="0c12",
        attempts=1,
    )
    data = orjson.loads(letter.to_json(max_original_bytes=1 << 20))
    expected = {"topic": "churn.alerts", "partition": 2, "offset": 41}
    assert expected == data["source"]
    assert raw == base64.b64decode(data["original_b64"])
    assert ("permanent_failure", False) == (data["reason"], data["original_truncated"])
    cut = orjson.loads(letter.to_json(max_original_bytes=10))
    assert (raw[:10], True) == (base64.b64decode(cut["original_b64"]), cut["original_truncated"])


def test_settings_read_the_shared_broker_and_redis_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    CHURNWATCH_KAFKA_BOOTSTRAP, CHURNWATCH_REDIS_URL and the NOTIFY variables reach the settings.
    """
    env = {
        "CHURNWATCH_KAFKA_BOOTSTRAP": "10.0.0.1:9092",
        "CHURNWATCH_REDIS_URL": "redis://:redispw@10.0.0.2:6379/1",
        "CHURNWATCH_NOTIFY_SMTP_HOST": "smtp.example.com",
        "CHURNWATCH_NOTIFY_SMTP_USERNAME": "cw",
        "CHURNWATCH_NOTIFY_SMTP_PASSWORD": "smtppw",
        "CHURNWATCH_NOTIFY_WEBHOOK_URL": "https://tasks.example.com/hook",
        "CHURNWATCH_NOTIFY_WEBHOOK_TOKEN": "hooktoken",
        "CHURNWATCH_NOTIFY_DEFAULT_RECIPIENT": "csm@example.com",
        "CHURNWATCH_NOTIFY_ROUTES": '[{"segment": ["enterprise"], "recipient": "vip@x.io"}]',
        "CHURNWATCH_NOTIFY_WEEKLY_BUDGET": "3",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = NotifySettings()
    actual = (
        settings.kafka.bootstrap,
        settings.redis.url,
        settings.smtp.host,
        settings.webhook.auth_value(),
        settings.routes[0].recipient,
        settings.weekly_budget,
    )
    expected = (
        "10.0.0.1:9092",
        "redis://:redispw@10.0.0.2:6379/1",
        "smtp.example.com",
        "Bearer hooktoken",
        "vip@x.io",
        3,
    )
    assert expected == actual
    assert {"smtppw", "hooktoken", "redispw"} == set(settings.secrets())
    for secret in settings.secrets():
        assert secret not in repr(settings)


def test_settings_refuse_email_without_a_recipient_and_login_in_clear() -> None:
    """
    SMTP without a default recipient, or a login without STARTTLS to a remote host, is refused.
    """
    with pytest.raises(ValidationError, match="default_recipient is required"):
        NotifySettings(smtp=SmtpSettings(host="smtp.example.com"))
    with pytest.raises(ValidationError, match="password in clear"):
        SmtpSettings(host="smtp.example.com", starttls=False, username="u", password=SecretStr("p"))
    with pytest.raises(ValidationError, match="http:// or https://"):
        WebhookSettings(url="ftp://example.com")


def test_register_adds_the_notify_command() -> None:
    """
    register(group) adds `notify` with its --send-digest option.
    """

    @click.group()
    def cli() -> None:
        """A stand-in for the churnwatch group."""

    register(cli)
    result = CliRunner().invoke(cli, ["notify", "--help"])
    assert (0, True) == (result.exit_code, "--send-digest" in result.output)
