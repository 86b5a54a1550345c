"""
The overview's arithmetic (churnwatch.api.overview.build) on hand-made facts: risk bins by
segment, who needs action, churned and saved from cancellations and verdicts with their
revenue, at risk by week from the kept scorings, alerts by week and rule with their verdict
mix, satisfaction and ticket resolution.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from churnwatch.api.overview import AlertFact, Facts, as_of, build, week_starts

END = datetime(2026, 3, 1, tzinfo=UTC)
DAY = timedelta(days=1)
EPOCH_DAY = (END - datetime(1970, 1, 1, tzinfo=UTC)) / DAY


def _fact(cid: str, segment: str, p: float | None, **kw: Any) -> Facts:
    values: dict[str, Any] = {
        "scored_at": None if p is None else END - DAY,
        "cancelled_at": None,
        "revenue": 0.0,
        "csat_sum": 0,
        "csat_count": 0,
        "resolution_days": (),
        "open_ticket_opened": (),
    }
    values |= kw
    return Facts(cid, segment, p, **values)


def _build(facts: list[Facts], **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "end": END,
        "weeks": 4,
        "segments": ["smb", "enterprise"],
        "bounds": {"smb": 0.5, "enterprise": 0.7},
        "open_alerts": [],
        "histories": {},
        "alerts": [],
        "verdicts": {},
        "definition": "above the threshold, or an open alert",
    }
    return build(facts, **(args | kw))


def test_as_of_is_the_newest_scoring_and_weeks_end_there() -> None:
    facts = [_fact("a", "smb", 0.2, scored_at=END - 3 * DAY), _fact("b", "smb", 0.4)]
    assert END - DAY == as_of(facts)
    assert as_of([_fact("c", "smb", None)]) is None
    starts = week_starts(END, 3)
    assert [END - 21 * DAY, END - 14 * DAY, END - 7 * DAY] == starts


def test_risk_by_segment_counts_who_is_still_at_risk_in_tenths() -> None:
    facts = [
        _fact("a", "smb", 0.05, revenue=10.0),
        _fact("b", "smb", 0.55, revenue=20.0),
        _fact("c", "smb", 1.0),
        _fact("d", "smb", 0.9, cancelled_at=END - 2 * DAY, revenue=7.0),  # lost: not at risk
        _fact("e", "enterprise", 0.6, revenue=100.0),  # below its bound 0.7
        _fact("f", "enterprise", None),  # not scored yet
        _fact("g", "trial", 0.3),  # a segment the rules no longer name comes last
    ]
    report = _build(facts, open_alerts=["e"])
    smb, ent, trial = report["segments"]
    assert ("smb", 3, 3, 0.5) == (smb["segment"], smb["customers"], smb["scored"], smb["threshold"])
    assert [1, 0, 0, 0, 0, 1, 0, 0, 0, 1] == smb["histogram"]
    assert 2 == smb["need_action"]  # b and c above 0.5
    assert 30.0 == smb["revenue"]
    assert round((0.05 + 0.55 + 1.0) / 3, 4) == smb["mean_risk"]
    assert (2, 1, 1) == (ent["customers"], ent["scored"], ent["need_action"])  # e: open alert
    assert ("trial", 0, None) == (trial["segment"], trial["need_action"], trial["threshold"])
    assert 3 == report["need_action"]["customers"]
    assert 120.0 == report["need_action"]["revenue"]
    assert (7, 6) == (report["customers"], report["at_risk"])


def test_churned_is_cancelled_or_judged_lost_and_saved_excludes_churned() -> None:
    facts = [
        _fact("a", "smb", 0.9, cancelled_at=END - DAY, revenue=5.0),
        _fact("b", "smb", 0.8, revenue=11.0),
        _fact("c", "smb", 0.7, revenue=13.0),
        _fact("d", "smb", 0.6, revenue=17.0, cancelled_at=END - 2 * DAY),
    ]
    verdicts = {
        "x1": {"verdict": "lost", "customer_id": "b"},
        "x2": {"verdict": "saved", "customer_id": "c"},
        "x3": {"verdict": "saved", "customer_id": "d"},  # saved, then cancelled: churned
        "x4": {"verdict": "lost", "customer_id": "gone"},  # a customer no longer stored
        "x5": {"verdict": "meh", "customer_id": "c"},  # not a verdict: ignored
    }
    report = _build(facts, verdicts=verdicts)
    assert {"customers": 3, "cancelled": 2, "judged_lost": 1, "revenue": 33.0} == report["churned"]
    assert {"customers": 1, "revenue": 13.0} == report["saved"]


def test_at_risk_by_week_uses_the_newest_scoring_by_each_week_end() -> None:
    facts = [
        _fact("a", "smb", 0.6),
        _fact("b", "smb", 0.2),
        _fact("c", "smb", 0.9, cancelled_at=END - 10 * DAY),
    ]
    histories = {
        # a: safe before the last two weeks, at risk since
        "a": [(END - 30 * DAY, 0.1), (END - 12 * DAY, 0.6)],
        # b: at risk in week 2 only; its first kept scoring is inside week 1
        "b": [
            (END - 25 * DAY, 0.7),
            (END - 20 * DAY, 0.3),
            (END - 15 * DAY, 0.8),
            (END - 8 * DAY, 0.2),
        ],
        # c: at risk until it cancelled (in week 3)
        "c": [(END - 27 * DAY, 0.9)],
    }
    report = _build(facts, histories=histories)
    weekly = report["weekly"]
    assert [w["week_end"][:10] for w in weekly] == [
        "2026-02-08",
        "2026-02-15",
        "2026-02-22",
        "2026-03-01",
    ]
    # week ends: -21, -14, -7, 0 days
    assert [3, 3, 2, 2] == [w["scored"] for w in weekly]
    assert [2, 2, 1, 1] == [w["at_risk"] for w in weekly]
    assert [round((0.9 + 0.7 + 0.1) / 3, 4), round((0.9 + 0.8 + 0.1) / 3, 4), 0.4, 0.4] == [
        w["mean_risk"] for w in weekly
    ]
    assert [0, 0, 1, 0] == [w["cancelled"] for w in weekly]


def test_alerts_by_week_and_rule_carry_their_verdicts() -> None:
    facts = [_fact("a", "smb", 0.6), _fact("b", "smb", 0.2)]
    alerts = [
        AlertFact("x1", "a", "score_drop", END - 1 * DAY),
        AlertFact("x2", "b", "score_drop", END - 2 * DAY),
        AlertFact("x3", "b", "urgent_ticket", END - 2 * DAY),
        AlertFact("x4", "a", "score_drop", END - 9 * DAY),
        AlertFact("x5", "a", "score_drop", END - 40 * DAY),  # before the first week
        AlertFact("x6", "a", "score_drop", END - 28 * DAY),  # on the first week's start: out
    ]
    verdicts = {
        "x1": {"verdict": "useful", "customer_id": "a"},
        "x3": {"verdict": "false_alarm", "customer_id": "b"},
    }
    report = _build(facts, alerts=alerts, verdicts=verdicts)
    last, before = report["weekly"][3], report["weekly"][2]
    assert 3 == last["alerts"]
    assert {"alerts": 2, "useful": 1, "open": 1} == last["by_rule"]["score_drop"]
    assert {"alerts": 1, "false_alarm": 1} == last["by_rule"]["urgent_ticket"]
    assert {"score_drop": {"alerts": 1, "open": 1}} == before["by_rule"]
    assert 4 == sum(w["alerts"] for w in report["weekly"])
    assert ["score_drop", "urgent_ticket"] == report["rules"]


def test_satisfaction_and_tickets() -> None:
    facts = [
        _fact("a", "smb", 0.6, csat_sum=9, csat_count=3, resolution_days=(1.0, 3.0)),
        _fact(
            "b",
            "smb",
            0.2,
            csat_sum=2,
            csat_count=1,
            resolution_days=(2.5,),
            open_ticket_opened=(EPOCH_DAY - 4.0, EPOCH_DAY - 1.0),
        ),
    ]
    report = _build(facts)
    assert {"ratings": 4, "mean_csat": 2.75} == report["satisfaction"]
    assert {
        "resolved": 3,
        "median_resolution_days": 2.5,
        "open": 2,
        "median_open_age_days": 2.5,
    } == report["tickets"]
    none = _build([_fact("c", "smb", 0.1)])
    assert None is none["satisfaction"]["mean_csat"]
    assert None is none["tickets"]["median_resolution_days"]


@pytest.mark.parametrize("weeks", [1, 104])
def test_weeks_sets_the_windows(weeks: int) -> None:
    report = _build([_fact("a", "smb", 0.6)], weeks=weeks)
    assert weeks == len(report["weekly"]) == report["weeks"]
    assert report["weekly"][-1]["week_end"].startswith("2026-03-01")
