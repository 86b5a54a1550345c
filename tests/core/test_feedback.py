"""
Verdicts on alerts (core.feedback) and the at-risk list's query parameters (api.views): pure,
no service.
"""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from churnwatch.api.views import BadParameterError, ListQuery, parse_list_query
from churnwatch.core.alerts import AlertRecord
from churnwatch.core.feedback import (
    VERDICTS,
    BadVerdictError,
    check_verdict,
    parse_verdicts,
    rule_feedback,
    verdict_record,
)

AT = datetime(2026, 3, 1, tzinfo=UTC)
SEGMENTS = ("enterprise", "growth", "starter")


def alert(alert_id: str, rule: str) -> AlertRecord:
    return AlertRecord(
        alert_id=alert_id,
        customer_id=f"c-{alert_id}",
        rule=rule,
        severity="high",
        action="email",
        score=30.0,
        previous_score=None,
        threshold=None,
        churn_probability=0.7,
        reasons=[],
        summary="risk 0.70",
        segment="starter",
        event_ts=AT,
        emitted_at=AT,
        model_version="m",
        rules_version="r",
    )


def test_a_verdict_must_be_one_of_four() -> None:
    """
    The four verdicts pass; anything else is refused with a message listing them.
    """
    assert ("useful", "false_alarm", "saved", "lost") == VERDICTS
    assert "saved" == check_verdict("saved")
    with pytest.raises(BadVerdictError, match="expected one of useful, false_alarm, saved, lost"):
        check_verdict("Useful")


def test_a_verdict_record_names_a_field_that_is_too_long() -> None:
    """
    A `by` over 200 characters is refused, the message naming the field.
    """
    with pytest.raises(BadVerdictError, match=r"^by: "):
        verdict_record(alert("a1", "gone_quiet"), "useful", by="x" * 201, note="", given_at=AT)


def test_exported_verdicts_parse_back_and_bad_lines_are_named() -> None:
    """
    Verdict records round-trip through JSONL; a bad line is reported with its source and number.
    """
    record = verdict_record(alert("a1", "gone_quiet"), "lost", by="ana", note="", given_at=AT)
    line = orjson.dumps(record.model_dump(mode="json"))
    assert {"a1": record} == parse_verdicts([line, b""], source="v.jsonl")
    with pytest.raises(BadVerdictError, match=r"^v\.jsonl:2: not a verdict record"):
        parse_verdicts([line, b'{"alert_id": "a2"}'], source="v.jsonl")


def test_false_alarm_rate_per_rule_counts_only_judged_alerts() -> None:
    """
    The false-alarm rate of a rule is its false alarms over its judged alerts; unjudged rules
    have none, and verdicts on alerts outside the backtest are counted apart.
    """
    alerts = [alert("a1", "gone_quiet"), alert("a2", "gone_quiet"), alert("a3", "gone_quiet")]
    alerts += [alert("b1", "urgent_ticket")]
    given = {"a1": "false_alarm", "a2": "useful", "zz": "lost"}
    verdicts = {
        aid: verdict_record(alert(aid, "gone_quiet"), v, by="", note="", given_at=AT)
        for aid, v in given.items()
    }
    entries, unmatched = rule_feedback(alerts, verdicts)
    by_rule = {e.rule: e for e in entries}
    assert 1 == unmatched
    assert (3, 2, 0.5) == (
        by_rule["gone_quiet"].alerts,
        by_rule["gone_quiet"].judged,
        by_rule["gone_quiet"].false_alarm_rate,
    )
    assert by_rule["urgent_ticket"].false_alarm_rate is None


def test_list_query_defaults_and_bounds() -> None:
    """
    The at-risk list's parameters default sensibly and are checked against their bounds.
    """
    assert ListQuery("score", None, 50, 0) == parse_list_query(
        {}, segments=SEGMENTS, default_limit=50, max_limit=500
    )
    assert ListQuery("change", "growth", 10, 20) == parse_list_query(
        {"sort": "change", "segment": "growth", "limit": "10", "offset": "20"},
        segments=SEGMENTS,
        default_limit=50,
        max_limit=500,
    )


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ({"limit": "501"}, "limit"),
        ({"limit": "1.5"}, "limit"),
        ({"offset": "-3"}, "offset"),
        ({"sort": "risk"}, "sort"),
        ({"segment": "Growth"}, "segment"),
        ({"page": "2"}, "page"),
    ],
)
def test_list_query_names_the_bad_parameter(query: dict[str, str], parameter: str) -> None:
    """
    Each bad parameter raises BadParameterError naming it, its message starting with the name.
    """
    with pytest.raises(BadParameterError) as caught:
        parse_list_query(query, segments=SEGMENTS, default_limit=50, max_limit=500)
    assert parameter == caught.value.parameter
    assert caught.value.message.startswith(f"{parameter}: ")
