"""
Explanations: which factors moved a customer's churn probability, in plain words with numbers.

A scoring produces `factors`: for every feature, its signed share of the churn probability
(in probability units) relative to the model's and the prior's baseline. An alert's reasons
are the factors' change between the anchor (the score one to two weeks earlier) and now,
scaled so that they add up to the change of the probability.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from churnwatch.core.alerts import Reason
from churnwatch.core.events import Event, ReturnEvent, TicketEvent
from churnwatch.core.rules import PRIOR_INPUT, EventRule

_EPS: Final = 1e-9


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _logit(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log(p / (1 - p))


def model_factors(model_probability: float, contributions: Mapping[str, float]) -> dict[str, float]:
    """
    Split the model's probability above its baseline among the features.

    The model's logit is its bias plus the sum of the contributions; the baseline is the
    probability at the bias alone. The difference is shared in proportion to each feature's
    contribution to the logit.
    """
    total = sum(contributions.values())
    if abs(total) < _EPS:
        return {}
    base = _sigmoid(_logit(model_probability) - total)
    spread = model_probability - base
    return {name: spread * c / total for name, c in contributions.items() if c != 0.0}


def blend_factors(
    model: Mapping[str, float], prior: Mapping[str, float], *, weight: float
) -> dict[str, float]:
    """
    The factors of the blended probability: `weight` of the model's, the rest of the prior's.
    """
    out: dict[str, float] = {}
    rest = 1 - weight
    model_get = model.get
    prior_get = prior.get
    for name in sorted({*model, *prior}):
        value = weight * model_get(name, 0.0) + rest * prior_get(name, 0.0)
        if value != 0.0:
            out[name] = value
    return out


def _pct(value: float) -> float:
    return abs(1.0 - value) * 100


def _trend(noun: str, window: str) -> Callable[[float], str]:
    def text(v: float) -> str:
        way = "down" if v < 1 else "up"
        return f"{noun} {way} {_pct(v):.0f}% vs. the {window} average"

    return text


def _plural(n: float, one: str, many: str | None = None) -> str:
    count = round(n)
    word = one if count == 1 else (many or one + "s")
    return f"{count} {word}"


_TEXTS: Final[dict[str, Callable[[float], str]]] = {
    "days_since_event": lambda v: f"no activity for {v:.0f} days",
    "days_since_login": lambda v: f"no login for {v:.0f} days",
    "days_since_purchase": lambda v: f"no purchase for {v:.0f} days",
    "days_since_ticket": lambda v: f"last support ticket {v:.0f} days ago",
    "days_since_return": lambda v: f"last return {v:.0f} days ago",
    "login_rate_short": lambda v: f"{v * 7:.1f} logins a week lately",
    "login_rate_long": lambda v: f"{v * 30:.0f} logins a month on average",
    "login_trend": _trend("logins", "30-day"),
    "purchase_rate_short": lambda v: f"{v * 30:.1f} purchases a month lately",
    "purchase_rate_long": lambda v: f"{v * 30:.1f} purchases a month on average",
    "purchase_trend": _trend("purchases", "90-day"),
    "spend_rate_long": lambda v: f"spending {v * 30:.0f} a month over 90 days",
    "ticket_load": lambda v: f"{v * 7:.1f} severity-weighted support tickets a week",
    "return_rate": lambda v: f"{v * 30:.1f} returns a month lately",
    "return_ratio": lambda v: f"{v:.0%} of purchases returned",
    "open_tickets": lambda v: f"{_plural(v, 'support ticket')} open",
    "open_urgent_tickets": lambda v: f"{_plural(v, 'urgent ticket')} open",
    "oldest_open_ticket_days": lambda v: f"oldest open ticket unanswered for {v:.0f} days",
    "csat_avg": lambda v: f"satisfaction {v:.1f} of 5",
    "csat_low": lambda v: f"{_plural(v, 'low satisfaction rating')} lately",
    "has_csat": lambda v: "has rated support" if v else "never rated support",
    "tenure_days": lambda v: f"customer for {v:.0f} days",
    "event_count": lambda v: f"{_plural(v, 'event')} in all",
    "purchase_count": lambda v: f"{_plural(v, 'purchase')} in all",
    "ltv": lambda v: f"lifetime value {v:,.0f}",
    "log_ltv": lambda v: f"lifetime value {math.expm1(v):,.0f}",
    "avg_purchase_gap_days": lambda v: f"usually buys every {v:.0f} days",
    "purchase_gap_ratio": lambda v: f"{v:.1f}x the usual gap since the last purchase",
    "repeat_buyer": lambda v: "repeat buyer" if v else "one-time buyer",
    "last_gap_days": lambda v: f"{v:.0f} days between the last two activities",
    "gap_ratio": lambda v: f"silent {v:.1f}x the usual gap between activities",
    PRIOR_INPUT: lambda v: f"health points {100.0 * (1.0 - _sigmoid(v)):.0f} of 100 by the rules",
}


def describe(feature: str, x: Mapping[str, float]) -> str:
    """
    A feature's value in plain words with numbers (`login_trend` 0.4 -> "logins down 60% ...").
    """
    value = x.get(feature, 0.0)
    text = _TEXTS.get(feature)
    return text(value) if text else f"{feature} = {value:.3g}"


MIN_CHANGE: Final = 0.02
"""Below this change of probability, an alert explains the level of risk, not its change."""

_ZERO_SPEAKS: Final = frozenset({"repeat_buyer", "has_csat", "login_trend", "purchase_trend"})
"""Features whose value 0 is itself news ("one-time buyer", "logins down 100%")."""
_NUMBER: Final = re.compile(r"\d[\d,]*(?:\.\d+)?")


def informative(feature: str, x: Mapping[str, float], text: str) -> bool:
    """
    Whether a factor says something: not a value of 0 ("0 low satisfaction ratings lately",
    "no activity for 0 days"), not a text whose every number reads 0, unless its zero is news
    (`_ZERO_SPEAKS`).
    """
    if feature in _ZERO_SPEAKS:
        return True
    if x.get(feature, 0.0) == 0.0:
        return False
    numbers = _NUMBER.findall(text)
    return not numbers or any(float(n.replace(",", "")) != 0.0 for n in numbers)


def _trigger_feature(rule: EventRule) -> str:
    if rule.event == "ticket":
        severities = set(rule.where.get("severity", ()))
        return "open_urgent_tickets" if severities & {"urgent", "high"} else "open_tickets"
    if rule.event == "return":
        return "return_rate"
    if rule.event == "purchase":
        return "purchase_rate_short"
    return "login_rate_short"


def trigger_reason(rule: EventRule, event: Event, factors: Mapping[str, float]) -> Reason:
    """
    The first reason of an event rule's alert: the event that fired it, in words (the factor
    is the feature the event moves, with its share of the probability now).
    """
    feature = _trigger_feature(rule)
    if isinstance(event, TicketEvent):
        what = f"{event.severity} ticket {event.ticket_id} {event.status}"
        noun = "tickets"
    elif isinstance(event, ReturnEvent):
        what = f"return of order {event.order_id} ({event.reason})"
        noun = "returns"
    else:
        what = f"{event.type} {event.event_id}"
        noun = f"{event.type}s"
    article = "an" if what[:1] in "aeiou" else "a"
    if rule.count > 1 and rule.within_days is not None:
        text = f"{rule.count} {noun} within {rule.within_days:g} days, the latest {article} {what}"
    else:
        text = f"{article} {what}"
    return Reason(factor=feature, contribution=round(factors.get(feature, 0.0), 4), text=text)


def reasons(
    now: Mapping[str, float],
    before: Mapping[str, float] | None,
    *,
    change: float,
    x: Mapping[str, float],
    top: int = 3,
) -> list[Reason]:
    """
    The factors behind a customer's risk, largest first.

    Args:
        now: the factors of the current score.
        before: the factors at the anchor, or None when there is no anchor yet.
        change: the change of churn probability from the anchor to now.
        x: the current feature values, for the words.
        top: how many reasons to give.

    Returns:
        When the risk rose by at least `MIN_CHANGE` since the anchor: up to `top` factors that
        pushed it up, each with its signed share of `change` (the factors' deltas, scaled so
        that all of them together add up to `change`). Otherwise (no anchor, or an event rule
        fired while the risk held or fell): the factors that raise the risk now, each with its
        share of the probability above the baseline.
    """
    if before is None or change < MIN_CHANGE:
        shares = dict(now)
    else:
        deltas = {n: now.get(n, 0.0) - before.get(n, 0.0) for n in set(now) | set(before)}
        total = sum(deltas.values())
        if total > _EPS:
            shares = {name: d * change / total for name, d in deltas.items()}
        else:
            shares = dict(now)
    ranked = sorted(shares.items(), key=lambda item: (-item[1], item[0]))
    out: list[Reason] = []
    for name, share in ranked:
        if len(out) == top or share < 0.005:
            break
        text = describe(name, x)
        if informative(name, x, text):
            out.append(Reason(factor=name, contribution=round(share, 4), text=text))
    return out


def summary(change: float | None, items: Iterable[Reason], *, level: float) -> str:
    """
    One sentence. When the risk rose: "risk +0.18: logins down 60% vs. the 30-day average
    (+0.09), ...". Otherwise the level: "risk 0.42 (change -0.03): 2 urgent tickets open
    (+0.20), ..." or, with no earlier score, "risk 0.42: ...".
    """
    parts = [f"{r.text} ({r.contribution:+.2f})" for r in items]
    if change is None:
        head = f"risk {level:.2f}"
    elif change >= MIN_CHANGE:
        head = f"risk {change:+.2f}"
    else:
        head = f"risk {level:.2f} (change {change:+.2f})"
    return f"{head}: {', '.join(parts)}" if parts else head
