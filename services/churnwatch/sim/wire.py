"""
The wire form of simulated events, and the malformed records a real stream also carries.

`Encoder.encode` writes exactly the bytes `churnwatch.core.events.event_to_json` writes for the
same event (field order, `ts` form, no `None` fields), without building a pydantic model per
event: the simulator emits hundreds of thousands of events a second. A test checks the
equality record by record: `event_to_json(parse_event(raw)) == raw`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from churnwatch.core.events import DEFAULT_MAX_EVENT_BYTES
from churnwatch.sim.population import CHANNELS

DAY_MS: Final = 86_400_000
HOUR_MS: Final = 3_600_000

LOGIN, PURCHASE, RETURN, TICKET, CANCEL = range(5)
KINDS: Final[tuple[str, ...]] = ("login", "purchase", "return", "ticket", "cancel")

SEVERITIES: Final[tuple[str, ...]] = ("low", "normal", "high", "urgent")
STATUSES: Final[tuple[str, ...]] = ("open", "pending", "solved", "closed")
RETURN_REASONS: Final[tuple[str, ...]] = (
    "changed mind",
    "not as described",
    "damaged",
    "wrong size",
    "arrived late",
)
CANCEL_REASONS: Final[tuple[str, ...]] = (
    "too expensive",
    "switched to a competitor",
    "poor support",
    "no longer needed",
    "missing features",
)

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

MALFORMED_KINDS: Final[tuple[str, ...]] = (
    "truncated_json",
    "not_json",
    "not_utf8",
    "wrong_type",
    "missing_field",
    "negative_amount",
    "naive_timestamp",
    "unknown_type",
    "oversize",
    "not_an_object",
)
"""What a malformed record looks like; each one is rejected by `parse_event`."""
MALFORMED_WEIGHTS: Final = (0.10, 0.06, 0.10, 0.14, 0.14, 0.14, 0.14, 0.10, 0.03, 0.05)

_NOT_JSON: Final = (b"{not json", b"{'type': 'login'}", b"", b"login c000001", b'{"type":"login",}')
_UNKNOWN_TYPES: Final = ("pageview", "session_start", "Login", "refund", "")
_OVERSIZE_PAD: Final = "x" * (DEFAULT_MAX_EVENT_BYTES + 6 * 1024)  # about 70 KiB


class Encoder:
    """
    Turns event columns into wire bytes; holds the event-id counter of one run.
    """

    def __init__(self, *, seed: int, start_ms: int, customers: int) -> None:
        self._prefix = f"ev-{seed}-"
        self._start_ms = start_ms
        width = max(6, len(str(max(customers - 1, 0))))
        self._cid = f"c%0{width}d"
        self._dates: dict[int, str] = {}
        self.emitted = 0

    def customer_id(self, index: int) -> str:
        """
        The id of customer number `index`, e.g. `c000123`.
        """
        return self._cid % index

    def ts(self, offset_ms: int) -> str:
        """
        The `ts` text pydantic writes for the instant `offset_ms` after the start.
        """
        day, in_day = divmod(self._start_ms + offset_ms, DAY_MS)
        date = self._dates.get(day)
        if date is None:
            date = (_EPOCH + timedelta(days=day)).strftime("%Y-%m-%d")
            self._dates[day] = date
        hours, rest = divmod(in_day, HOUR_MS)
        minutes, rest = divmod(rest, 60_000)
        seconds, millis = divmod(rest, 1000)
        if millis:
            return f"{date}T{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}000Z"
        return f"{date}T{hours:02d}:{minutes:02d}:{seconds:02d}Z"

    def encode(
        self,
        kind: int,
        cust: int,
        offset_ms: int,
        ref: int,
        amount: float,
        severity: int,
        status: int,
        csat: int,
        reason: int,
    ) -> bytes:
        """
        The wire bytes of one event; takes the next event id.
        """
        # Built as text, not with orjson: every string here is plain ASCII from a fixed
        # vocabulary, and orjson's bytes keep a 4 KiB buffer each (a day of records at a
        # million customers would hold gigabytes). `repr` of a float is its shortest form, as
        # orjson writes it.
        head = f'{{"event_id":"{self._prefix}{self.emitted}","customer_id":"{self._cid % cust}"'
        self.emitted += 1
        ts = self.ts(offset_ms)
        if kind == LOGIN:
            text = f'{head},"ts":"{ts}","type":"login","channel":"{CHANNELS[ref]}"}}'
        elif kind == PURCHASE:
            text = (
                f'{head},"ts":"{ts}","type":"purchase","amount":{amount!r},'
                f'"currency":"EUR","order_id":"o-{ref}"}}'
            )
        elif kind == RETURN:
            text = (
                f'{head},"ts":"{ts}","type":"return","order_id":"o-{ref}",'
                f'"amount":{amount!r},"reason":"{RETURN_REASONS[reason]}"}}'
            )
        elif kind == TICKET:
            rated = f',"csat":{csat}' if csat else ""
            text = (
                f'{head},"ts":"{ts}","type":"ticket","ticket_id":"t-{ref}",'
                f'"severity":"{SEVERITIES[severity]}","status":"{STATUSES[status]}"{rated}}}'
            )
        else:
            text = f'{head},"ts":"{ts}","type":"cancel","reason":"{CANCEL_REASONS[reason]}"}}'
        return text.encode()

    def malformed(self, raw: bytes, kind: int, variant: int) -> bytes:
        """
        A broken record derived from the valid record `raw`; never contains a newline.

        Args:
            raw: a valid record as `encode` wrote it.
            kind: index into `MALFORMED_KINDS`.
            variant: any non-negative number; picks among the variants of a kind.

        Returns:
            Bytes that `parse_event` rejects with the reason the kind names.
        """
        name = MALFORMED_KINDS[kind]
        if name == "truncated_json":
            return raw[: len(raw) // 2 + variant % 8]
        if name == "not_json":
            return _NOT_JSON[variant % len(_NOT_JSON)]
        if name == "not_utf8":
            if variant % 2:
                return b"\xff\xfe" + raw[2:]
            # latin-1 text where UTF-8 was expected
            return raw[:-1] + b',"note":"caf\xe9"}'
        obj: dict[str, Any] = orjson.loads(raw)
        obj["event_id"] = f"{self._prefix}x{self.emitted}"
        self.emitted += 1
        if name == "wrong_type":
            return self._wrong_type(obj, variant)
        if name == "missing_field":
            required = [key for key in obj if key not in ("event_id", "channel", "csat", "reason")]
            if obj["type"] == "return":
                required.append("reason")
            del obj[required[variant % len(required)]]
        elif name == "negative_amount":
            if obj["type"] not in ("purchase", "return"):
                obj = _as_purchase(obj, variant)
            obj["amount"] = (-5, "-5", -0.01, -129.9)[variant % 4]
        elif name == "naive_timestamp":
            ts = str(obj["ts"]).removesuffix("Z")
            obj["ts"] = ts if variant % 2 else ts.replace("T", " ")
        elif name == "unknown_type":
            obj["type"] = _UNKNOWN_TYPES[variant % len(_UNKNOWN_TYPES)]
        elif name == "oversize":
            obj["debug"] = _OVERSIZE_PAD
        else:
            return b"[" + orjson.dumps(obj) + b"]" if variant % 2 else b"null"
        return _dumps(obj)

    def _wrong_type(self, obj: dict[str, Any], variant: int) -> bytes:
        kind = obj["type"]
        if variant % 3 == 0:
            obj["customer_id"] = int(str(obj["customer_id"])[1:])
        elif variant % 3 == 1:
            obj["ts"] = "yesterday"
        elif kind == "purchase":
            obj["amount"] = {"value": obj["amount"], "currency": "EUR"}
        elif kind == "ticket":
            obj["csat"] = "five"
        elif kind == "login":
            obj["channel"] = ["web"]
        else:
            obj["event_id"] = None
        return _dumps(obj)


def _dumps(obj: dict[str, Any]) -> bytes:
    """
    orjson's bytes at their own size (orjson's keep a 4 KiB buffer).
    """
    return memoryview(orjson.dumps(obj)).tobytes()


def _as_purchase(obj: dict[str, Any], variant: int) -> dict[str, Any]:
    return {
        "event_id": obj["event_id"],
        "customer_id": obj["customer_id"],
        "ts": obj["ts"],
        "type": "purchase",
        "amount": 0.0,
        "currency": "EUR",
        "order_id": f"o-neg-{variant}",
    }
