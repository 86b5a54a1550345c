"""
The event contract: what is accepted, what is rejected and with which reason.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from churnwatch.core.errors import BadEventError
from churnwatch.core.events import PurchaseEvent, event_to_json, parse_event

BASE = {
    "event_id": "e-1",
    "customer_id": "c-1",
    "ts": "2026-03-01T10:00:00+01:00",
}
GOOD = {
    "login": {**BASE, "type": "login", "channel": "web"},
    "purchase": {**BASE, "type": "purchase", "amount": 19.9, "currency": "EUR", "order_id": "o-1"},
    "return": {**BASE, "type": "return", "order_id": "o-1", "amount": 5, "reason": "damaged"},
    "ticket": {
        **BASE,
        "type": "ticket",
        "ticket_id": "t-1",
        "severity": "urgent",
        "status": "open",
        "csat": 2,
    },
    "cancel": {**BASE, "type": "cancel", "reason": "too expensive"},
}


def _raw(obj: object) -> bytes:
    return orjson.dumps(obj)


@pytest.mark.parametrize("kind", sorted(GOOD))
def test_valid_events_parse_and_round_trip(kind: str) -> None:
    """
    Every valid event type parses, its time is in UTC, and its wire form parses to the same event.
    """
    event = parse_event(_raw(GOOD[kind]))
    assert kind == event.type
    assert datetime(2026, 3, 1, 9, 0, tzinfo=UTC) == event.ts
    assert event == parse_event(event_to_json(event))


def test_unknown_extra_fields_are_kept() -> None:
    """
    Fields the contract does not know are kept on the event and in its wire form.
    """
    event = parse_event(_raw({**GOOD["purchase"], "coupon": "SPRING", "items": [1, 2]}))
    assert isinstance(event, PurchaseEvent)
    assert {"coupon": "SPRING", "items": [1, 2]} == event.model_extra
    assert b'"coupon":"SPRING"' in event_to_json(event)


def _with(kind: str, **changes: object) -> bytes:
    obj = dict(GOOD[kind])
    for key, value in changes.items():
        if value is ...:
            obj.pop(key)
        else:
            obj[key] = value
    return _raw(obj)


REJECTED = [
    ("naive timestamp", _with("login", ts="2026-03-01T10:00:00"), "naive_timestamp", "ts"),
    ("negative amount", _with("purchase", amount=-1), "invalid_value", "amount"),
    ("amount as text", _with("purchase", amount="ten"), "wrong_type", "amount"),
    (
        "infinite amount",
        _with("purchase", amount=1e300).replace(b"1e+300", b"1e999"),
        "malformed_json",
        None,
    ),
    ("null amount", _with("purchase", amount=None), "wrong_type", "amount"),
    ("unknown severity", _with("ticket", severity="catastrophic"), "invalid_value", "severity"),
    ("unknown status", _with("ticket", status="lost"), "invalid_value", "status"),
    ("csat out of range", _with("ticket", csat=9), "invalid_value", "csat"),
    ("empty event_id", _with("login", event_id=""), "invalid_value", "event_id"),
    ("blank customer_id", _with("login", customer_id="   "), "invalid_value", "customer_id"),
    ("missing order_id", _with("purchase", order_id=...), "missing_field", "order_id"),
    ("missing type", _with("login", type=...), "missing_field", "type"),
    ("unknown type", _with("login", type="pageview"), "unknown_type", "type"),
    ("lowercase currency", _with("purchase", currency="eur"), "invalid_value", "currency"),
    ("ts as number", _with("login", ts=12), "wrong_type", "ts"),
    ("not json", b"{not json", "malformed_json", None),
    ("not utf-8", b'{"type": "login", "x": "\xff\xfe"}', "not_utf8", None),
    ("a list", b"[1, 2]", "not_an_object", None),
]


@pytest.mark.parametrize(("case", "raw", "reason", "field"), REJECTED, ids=[r[0] for r in REJECTED])
def test_bad_events_are_rejected_with_a_reason(
    case: str, raw: bytes, reason: str, field: str | None
) -> None:
    """
    Each kind of bad input is rejected with its reason code, naming the field where there is one.
    """
    with pytest.raises(BadEventError) as info:
        parse_event(raw)
    assert reason == info.value.reason
    assert field == info.value.field
    if field is not None:
        assert field in str(info.value)


def test_oversize_payloads_are_rejected_before_decoding() -> None:
    """
    A payload over the size limit is rejected as oversize, whatever it holds.
    """
    raw = _raw({**GOOD["login"], "padding": "x" * 70_000})
    with pytest.raises(BadEventError) as info:
        parse_event(raw)
    assert "oversize" == info.value.reason
    assert parse_event(raw, max_bytes=len(raw)).type == "login"


def test_future_timestamps_are_rejected() -> None:
    """
    An event later than `not_after` is rejected as future_timestamp; one at the bound is kept.
    """
    raw = _with("login", ts="2026-03-02T00:00:00Z")
    bound = datetime(2026, 3, 1, 12, tzinfo=UTC)
    with pytest.raises(BadEventError) as info:
        parse_event(raw, not_after=bound)
    assert "future_timestamp" == info.value.reason
    assert parse_event(raw, not_after=bound + timedelta(hours=12)).type == "login"


def test_messages_say_what_arrived() -> None:
    """
    The message names the event type, the field and the value that arrived.
    """
    with pytest.raises(BadEventError) as info:
        parse_event(_with("purchase", amount=-5))
    assert "purchase event: amount" in str(info.value)
    assert "got -5" in str(info.value)
