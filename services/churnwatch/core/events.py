"""
The event contract: four customer event types plus cancellation, validated with pydantic.

`parse_event` turns the bytes of one record into an `Event` or raises `BadEventError`
with a reason code a dead-letter record can carry. Unknown extra fields are kept.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal, TypeAlias

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)
from pydantic_core import PydanticCustomError

from churnwatch.core.errors import BadEventError, ReasonCode

DEFAULT_MAX_EVENT_BYTES: Final = 64 * 1024

EventType = Literal["login", "purchase", "ticket", "return", "cancel"]
EVENT_TYPES: Final[tuple[EventType, ...]] = ("login", "purchase", "ticket", "return", "cancel")
Severity = Literal["low", "normal", "high", "urgent"]
TicketStatus = Literal["open", "pending", "solved", "closed"]


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _iso_text(value: object) -> object:
    # Only ISO 8601 text: pydantic would otherwise read a number as a Unix time.
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        msg = "Input should be an ISO 8601 string with a time zone"
        kind = "datetime_type"
        raise PydanticCustomError(kind, msg)
    return value


def _finite(value: float) -> float:
    if not math.isfinite(value):
        msg = f"must be a finite number, got {value}"
        raise ValueError(msg)
    return value


Id = Annotated[str, Field(min_length=1, max_length=256, pattern=r"\S")]
Timestamp = Annotated[AwareDatetime, BeforeValidator(_iso_text), AfterValidator(_utc)]
Amount = Annotated[float, Field(ge=0, le=1e12, allow_inf_nan=False), AfterValidator(_finite)]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]


class _EventBase(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, strict=False)

    event_id: Id = Field(description="Unique per event; a redelivered event_id changes nothing.")
    customer_id: Id = Field(description="The key of every topic and every state record.")
    ts: Timestamp = Field(description="Event time, ISO 8601 with a time zone.")


class LoginEvent(_EventBase):
    """The customer signed in or otherwise used the product."""

    type: Literal["login"]
    channel: str | None = Field(default=None, max_length=64)


class PurchaseEvent(_EventBase):
    """The customer paid for an order."""

    type: Literal["purchase"]
    amount: Amount
    currency: Currency
    order_id: Id


class ReturnEvent(_EventBase):
    """The customer sent an order (or part of it) back."""

    type: Literal["return"]
    order_id: Id
    amount: Amount
    reason: str = Field(max_length=1024)


class TicketEvent(_EventBase):
    """A support ticket was opened or changed status."""

    type: Literal["ticket"]
    ticket_id: Id
    severity: Severity
    status: TicketStatus
    csat: int | None = Field(default=None, ge=1, le=5, description="Satisfaction 1..5, if rated.")


class CancelEvent(_EventBase):
    """The customer cancelled explicitly: a churn label, not a guess."""

    type: Literal["cancel"]
    reason: str | None = Field(default=None, max_length=1024)


Event: TypeAlias = LoginEvent | PurchaseEvent | ReturnEvent | TicketEvent | CancelEvent

MODELS: Final[dict[str, type[_EventBase]]] = {
    "login": LoginEvent,
    "purchase": PurchaseEvent,
    "ticket": TicketEvent,
    "return": ReturnEvent,
    "cancel": CancelEvent,
}


def _reason_for(error_type: str) -> ReasonCode:
    if error_type == "missing":
        return "missing_field"
    if error_type in ("timezone_aware",):
        return "naive_timestamp"
    if (
        error_type.endswith("_type")
        or error_type.endswith("_parsing")
        or error_type
        in (
            "model_attributes_type",
            "literal_error",
        )
    ):
        return "wrong_type" if error_type != "literal_error" else "invalid_value"
    return "invalid_value"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_event(
    raw: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    not_after: datetime | None = None,
) -> Event:
    """
    Decode and validate one record.

    Args:
        raw: the record's bytes, as they came off the wire or out of a file.
        max_bytes: payloads larger than this are rejected as `oversize`.
        not_after: events later than this are rejected as `future_timestamp`.

    Returns:
        The validated event; its `ts` is in UTC.

    Raises:
        BadEventError: with a reason code and a message that names the field.
    """
    if len(raw) > max_bytes:
        msg = f"payload is {len(raw)} bytes, more than the limit of {max_bytes}"
        raise BadEventError(msg, reason="oversize")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        msg = f"payload is not UTF-8: {exc.reason} at byte {exc.start}"
        raise BadEventError(msg, reason="not_utf8") from None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        msg = f"payload is not JSON: {exc}"
        raise BadEventError(msg, reason="malformed_json") from None
    return event_from_dict(obj, not_after=not_after)


def event_from_dict(obj: object, *, not_after: datetime | None = None) -> Event:
    """
    Validate an already decoded JSON value; see `parse_event`.
    """
    if not isinstance(obj, dict):
        msg = f"payload must be a JSON object, got {type(obj).__name__}"
        raise BadEventError(msg, reason="not_an_object")
    kind = obj.get("type")
    if kind is None:
        msg = "type: field required"
        raise BadEventError(msg, reason="missing_field", field="type")
    model = MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        expected = ", ".join(EVENT_TYPES)
        msg = f"type: expected one of {expected}, got {_short(kind)}"
        raise BadEventError(msg, reason="unknown_type", field="type")
    try:
        event: Event = model.model_validate(obj)  # type: ignore[assignment]
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(part) for part in first["loc"]) or "type"
        reason = _reason_for(first["type"])
        got = "" if first["type"] == "missing" else f", got {_short(first.get('input'))}"
        msg = f"{kind} event: {field}: {first['msg']}{got}"
        raise BadEventError(msg, reason=reason, field=field) from None
    if not_after is not None and event.ts > not_after:
        msg = f"ts: {event.ts.isoformat()} is later than the allowed {not_after.isoformat()}"
        raise BadEventError(msg, reason="future_timestamp", field="ts")
    return event


def event_to_dict(event: Event) -> dict[str, Any]:
    """
    The JSON form of an event, extra fields included, `ts` in ISO 8601 UTC.
    """
    return event.model_dump(mode="json", exclude_none=True)


def event_to_json(event: Event) -> bytes:
    """
    The wire form of an event (compact JSON, UTF-8).
    """
    return orjson.dumps(event_to_dict(event))


def format_ts(at: datetime) -> str:
    """
    ISO 8601 in UTC with a `Z`, at millisecond precision; the one text form of time we write.
    """
    at = at.astimezone(UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def to_days(at: datetime) -> float:
    """
    Days since the Unix epoch, as a float; the unit of the feature arithmetic.
    """
    return (at - EPOCH) / timedelta(days=1)
