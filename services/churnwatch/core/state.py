"""
One customer's whole state: features, score, anchor, pending snapshots, rule states and the
recent event ids. Plain data that round-trips through a flat `dict[str, str]` (a Redis hash).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Final

import orjson

from churnwatch.core import features as feats
from churnwatch.core.alerts import RuleState
from churnwatch.core.labels import Snapshot
from churnwatch.core.slots import fast_init

STATE_KEY: Final = "s"
_DAY: Final = timedelta(days=1)
FORMAT_VERSION: Final = 1


def _frozen(mapping: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@fast_init
@dataclass(frozen=True, slots=True)
class Anchor:
    """A past scoring that changes are measured from (one to two weeks back)."""

    at: datetime
    score: float
    churn_probability: float
    factors: Mapping[str, float]


@fast_init
@dataclass(frozen=True, slots=True)
class CustomerState:
    """
    Everything churnwatch remembers of one customer.
    """

    customer_id: str
    features: feats.Features = field(default_factory=feats.empty_features)
    last_activity_at: datetime | None = None
    """Latest event time of any event; the start of the current silence."""
    swept_at: datetime | None = None
    """The latest sweep checkpoint handled in the current silence."""
    scored_at: datetime | None = None
    score: float | None = None
    churn_probability: float | None = None
    segment: str = ""
    anchor: Anchor | None = None
    next_anchor: Anchor | None = None
    pending: tuple[Snapshot, ...] = ()
    last_sample_at: datetime | None = None
    rules: Mapping[str, RuleState] = field(default_factory=_frozen)
    seen: Mapping[str, float] = field(default_factory=_frozen)
    """Recent event ids and their event time (days), for skipping redeliveries."""
    cancelled_at: datetime | None = None
    alerts: int = 0
    """How many alerts this customer has had."""


def _ts(at: datetime | None) -> str | None:
    # Full precision (not format_ts): a state read back from Redis must equal the one written.
    return None if at is None else at.isoformat()


def _at(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _anchor_to(anchor: Anchor | None) -> dict[str, Any] | None:
    if anchor is None:
        return None
    return {
        "at": anchor.at.isoformat(),
        "score": anchor.score,
        "p": anchor.churn_probability,
        "factors": dict(anchor.factors),
    }


def _anchor_from(data: dict[str, Any] | None) -> Anchor | None:
    if data is None:
        return None
    at = _must(_at(data["at"]))
    return Anchor(at, float(data["score"]), float(data["p"]), _frozen(data["factors"]))


def _snapshot_to(snap: Snapshot) -> list[Any]:
    row: list[Any] = [snap.taken_at.isoformat(), snap.kind, dict(snap.x)]
    if snap.horizon is not None:
        row.append(snap.horizon / _DAY)
    return row


def _snapshot_from(row: list[Any]) -> Snapshot:
    # [taken_at, kind, x] or, with its own horizon (days), [taken_at, kind, x, horizon]
    horizon = None if len(row) < 4 else timedelta(days=float(row[3]))
    return Snapshot(_must(_at(row[0])), row[1], _frozen(row[2]), horizon)


def to_dict(state: CustomerState) -> dict[str, str]:
    """
    The state as a flat `dict[str, str]`: the features' own fields plus one JSON field `s`.
    """
    rest = {
        "v": FORMAT_VERSION,
        "customer_id": state.customer_id,
        "last_activity_at": _ts(state.last_activity_at),
        "swept_at": _ts(state.swept_at),
        "scored_at": _ts(state.scored_at),
        "score": state.score,
        "p": state.churn_probability,
        "segment": state.segment,
        "anchor": _anchor_to(state.anchor),
        "next_anchor": _anchor_to(state.next_anchor),
        "pending": [_snapshot_to(s) for s in state.pending],
        "last_sample_at": _ts(state.last_sample_at),
        "rules": {
            name: [rs.armed, _ts(rs.last_fired_at), [h.isoformat() for h in rs.hits]]
            for name, rs in sorted(state.rules.items())
        },
        "seen": dict(state.seen),
        "cancelled_at": _ts(state.cancelled_at),
        "alerts": state.alerts,
    }
    out = feats.to_dict(state.features)
    out[STATE_KEY] = orjson.dumps(rest, option=orjson.OPT_SORT_KEYS).decode()
    return out


def from_dict(data: Mapping[str, str]) -> CustomerState:
    """
    The inverse of `to_dict`.

    Raises:
        ValueError: naming what is missing or malformed.
    """
    if STATE_KEY not in data:
        msg = f"customer state: missing key {STATE_KEY!r}"
        raise ValueError(msg)
    try:
        rest = orjson.loads(data[STATE_KEY])
        if not isinstance(rest, dict):
            msg = f"customer state: field {STATE_KEY!r} is not a JSON object: {_short(rest)}"
            raise ValueError(msg)
        if rest.get("v") != FORMAT_VERSION:
            msg = f"customer state: format version {rest.get('v')!r}, expected {FORMAT_VERSION}"
            raise ValueError(msg)
        features = feats.from_dict({k: v for k, v in data.items() if k != STATE_KEY})
        rules = {
            name: RuleState(bool(armed), _at(fired), tuple(_ts_list(hits)))
            for name, (armed, fired, hits) in rest["rules"].items()
        }
        pending = tuple(_snapshot_from(row) for row in rest["pending"])
        return CustomerState(
            customer_id=rest["customer_id"],
            features=features,
            last_activity_at=_at(rest["last_activity_at"]),
            swept_at=_at(rest["swept_at"]),
            scored_at=_at(rest["scored_at"]),
            score=rest["score"],
            churn_probability=rest["p"],
            segment=rest["segment"],
            anchor=_anchor_from(rest["anchor"]),
            next_anchor=_anchor_from(rest["next_anchor"]),
            pending=pending,
            last_sample_at=_at(rest["last_sample_at"]),
            rules=_frozen(rules),
            seen=_frozen(rest["seen"]),
            cancelled_at=_at(rest["cancelled_at"]),
            alerts=int(rest["alerts"]),
        )
    except (KeyError, TypeError, AttributeError, IndexError, orjson.JSONDecodeError) as exc:
        msg = f"customer state: malformed field {STATE_KEY!r}: {exc!r}"
        raise ValueError(msg) from exc


def _ts_list(items: list[str]) -> list[datetime]:
    return [_must(_at(item)) for item in items]


def _must(at: datetime | None) -> datetime:
    if at is None:
        msg = "customer state: a required time is missing"
        raise ValueError(msg)
    return at


def risk_change(state: CustomerState) -> float | None:
    """
    How far the churn probability moved since the anchor (one to two weeks back; the next
    anchor while there is none yet): the change that alerts and reasons explain. None before
    the customer has a score and an anchor.
    """
    ref = state.anchor if state.anchor is not None else state.next_anchor
    if ref is None or state.churn_probability is None:
        return None
    return round(state.churn_probability - ref.churn_probability, 4)


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
