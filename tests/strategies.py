"""
Hypothesis strategies for churnwatch events, shared by the test suites.

Import them as `from strategies import customer_events, event_streams` (pytest puts `tests/`
on the import path, because `tests/conftest.py` lives there and `tests/` is not a package).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import get_args

from hypothesis import strategies as st

from churnwatch.core.events import (
    CancelEvent,
    Event,
    LoginEvent,
    PurchaseEvent,
    ReturnEvent,
    Severity,
    TicketEvent,
    TicketStatus,
)

START_AT = datetime(2024, 1, 1, tzinfo=UTC)
"""Default start of generated histories."""
SPAN = timedelta(days=60)
"""Default length of generated histories."""
BEHAVIOUR_KINDS = ("login", "purchase", "return", "ticket")
"""The event types `customer_events` draws by default; pass `kinds=` to add "cancel"."""

SEVERITIES: tuple[Severity, ...] = get_args(Severity)
STATUSES: tuple[TicketStatus, ...] = get_args(TicketStatus)
# Small pools, so that a history reuses them: several statuses of one ticket, returns of
# orders that were bought.
TICKET_IDS = ("T-1", "T-2", "T-3", "T-4")
ORDER_IDS = ("O-1", "O-2", "O-3", "O-4", "O-5")

# Money as whole cents up to 10,000.00: sums stay exact enough to compare across orders.
amounts = st.integers(min_value=0, max_value=1_000_000).map(lambda cents: cents / 100)


def timestamps(
    start_at: datetime = START_AT, span: timedelta = SPAN
) -> st.SearchStrategy[datetime]:
    """
    UTC datetimes in `[start_at, start_at + span]`, at millisecond precision (the wire's).

    Half of them fall on whole days after `start_at`, so that histories have events at the
    same instant (ties are where ordering bugs live).
    """
    span_ms = int(span / timedelta(milliseconds=1))
    span_days = int(span / timedelta(days=1))
    any_ms = st.integers(min_value=0, max_value=span_ms).map(
        lambda ms: start_at + timedelta(milliseconds=ms)
    )
    whole_days = st.integers(min_value=0, max_value=span_days).map(
        lambda days: start_at + timedelta(days=days)
    )
    return any_ms | whole_days


@st.composite
def customer_events(
    draw: st.DrawFn,
    customer_id: str = "C-1",
    start_at: datetime = START_AT,
    span: timedelta = SPAN,
    kinds: Sequence[str] = BEHAVIOUR_KINDS,
) -> Event:
    """
    One valid event of `customer_id`, with `ts` in `[start_at, start_at + span]`.

    Its `event_id` is a random UUID; a list of them may still repeat one, so draw lists with
    `unique_by=lambda e: e.event_id`, or use `event_streams`.
    """
    kind = draw(st.sampled_from(kinds))
    common = {
        "event_id": str(draw(st.uuids())),
        "customer_id": customer_id,
        "ts": draw(timestamps(start_at, span)),
    }
    if kind == "login":
        channel = draw(st.none() | st.sampled_from(("web", "ios", "android")))
        return LoginEvent(type="login", channel=channel, **common)
    if kind == "purchase":
        return PurchaseEvent(
            type="purchase",
            amount=draw(amounts),
            currency=draw(st.sampled_from(("EUR", "USD"))),
            order_id=draw(st.sampled_from(ORDER_IDS)),
            **common,
        )
    if kind == "return":
        return ReturnEvent(
            type="return",
            order_id=draw(st.sampled_from(ORDER_IDS)),
            amount=draw(amounts),
            reason=draw(st.sampled_from(("damaged", "wrong size", ""))),
            **common,
        )
    if kind == "ticket":
        return TicketEvent(
            type="ticket",
            ticket_id=draw(st.sampled_from(TICKET_IDS)),
            severity=draw(st.sampled_from(SEVERITIES)),
            status=draw(st.sampled_from(STATUSES)),
            csat=draw(st.none() | st.integers(min_value=1, max_value=5)),
            **common,
        )
    if kind == "cancel":
        reason = draw(st.none() | st.sampled_from(("too expensive", "moved")))
        return CancelEvent(type="cancel", reason=reason, **common)
    msg = f"kinds: expected event types among login, purchase, return, ticket, cancel, got {kind!r}"
    raise ValueError(msg)


def event_streams(
    customer_id: str = "C-1",
    start_at: datetime = START_AT,
    span: timedelta = SPAN,
    kinds: Sequence[str] = BEHAVIOUR_KINDS,
    min_size: int = 0,
    max_size: int = 30,
) -> st.SearchStrategy[list[Event]]:
    """
    Lists of events of one customer with unique `event_id`s, in no particular order of `ts`.
    """
    return st.lists(
        customer_events(customer_id=customer_id, start_at=start_at, span=span, kinds=kinds),
        min_size=min_size,
        max_size=max_size,
        unique_by=lambda event: event.event_id,
    )
