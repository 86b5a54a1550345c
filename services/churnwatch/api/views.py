"""
What the at-risk API, the web page and the CLI show, read from the store: the at-risk list,
one customer (score history, features, reasons, alerts with their verdicts), and verdicts given
on alerts. No HTTP here: `api.app` maps these to routes, `cli` to commands.

Reasons are computed as the alerts compute them (`core.engine.factors_of`,
`core.explain.reasons`): the customer's state as of its last scoring, explained by the model
checkpoint that scoring used (the learner's checkpoint of `scoring_epoch`), against the
anchor the change is measured from.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

import orjson

from churnwatch.api import overview as overview_of
from churnwatch.core import explain
from churnwatch.core.alerts import AlertRecord, Reason
from churnwatch.core.engine import Policy, factors_of, score_at
from churnwatch.core.events import format_ts
from churnwatch.core.feedback import VERDICTS, BadVerdictError, check_verdict, verdict_record
from churnwatch.core.learning import scoring_epoch
from churnwatch.core.model import Scorer
from churnwatch.core.partitioning import partition_of
from churnwatch.core.state import CustomerState, risk_change
from churnwatch.metrics import Metrics
from churnwatch.store import RedisStore

Sort = Literal["score", "change"]
SORTS: Final[tuple[Sort, ...]] = ("score", "change")
_OPEN_ALERTS_SHOWN: Final = 20
"""A customer's newest alerts that the list looks at for the open ones."""
Show = Literal["action", "all"]
SHOWS: Final[tuple[Show, ...]] = ("action", "all")
_EVERYONE: Final = "every customer still at risk of churning (not cancelled), whatever the score"
_ORDER_OF: Final[dict[Sort, str]] = {"score": "risk", "change": "change"}
_MODELS_KEPT: Final = 8
_LOOKUP_TTL_S: Final = 10.0
_OVERVIEW_CHUNK: Final = 1000


class BadParameterError(ValueError):
    """A request parameter that is missing, malformed or out of range (an HTTP 400)."""

    def __init__(self, *, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.message = message


class NotFoundError(LookupError):
    """A customer or alert the store does not hold (an HTTP 404)."""

    def __init__(self, *, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.message = message


@dataclass(frozen=True, slots=True)
class ListQuery:
    """One page of the at-risk list."""

    sort: Sort = "score"
    segment: str | None = None
    limit: int = 50
    offset: int = 0
    show: Show = "action"
    """`action`: the customers who need action (see `Views.definition`); `all`: everyone."""


def _int(query: Mapping[str, str], name: str, default: int, low: int, high: int | None) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadParameterError(
            parameter=name, message=f"{name}: expected an integer, got {raw!r}"
        ) from None
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        raise BadParameterError(
            parameter=name, message=f"{name}: expected an integer {bounds}, got {value}"
        )
    return value


def parse_list_query(
    query: Mapping[str, str], *, segments: Sequence[str], default_limit: int, max_limit: int
) -> ListQuery:
    """
    The at-risk list's query parameters, checked.

    Raises:
        BadParameterError: naming the first parameter that is unknown, malformed or out of range.
    """
    known = ("sort", "segment", "limit", "offset", "show")
    for name in query:
        if name not in known:
            msg = f"{name}: unknown parameter (expected {', '.join(known)})"
            raise BadParameterError(parameter=name, message=msg)
    sort = query.get("sort") or "score"
    if sort not in SORTS:
        msg = f"sort: expected one of {', '.join(SORTS)}, got {sort!r}"
        raise BadParameterError(parameter="sort", message=msg)
    segment = query.get("segment") or None
    if segment is not None and segment not in segments:
        msg = f"segment: expected one of {', '.join(segments)}, got {segment!r}"
        raise BadParameterError(parameter="segment", message=msg)
    show = query.get("show") or "action"
    if show not in SHOWS:
        msg = f"show: expected one of {', '.join(SHOWS)}, got {show!r}"
        raise BadParameterError(parameter="show", message=msg)
    return ListQuery(
        sort="score" if sort == "score" else "change",
        segment=segment,
        limit=_int(query, "limit", default_limit, 1, max_limit),
        offset=_int(query, "offset", 0, 0, None),
        show="all" if show == "all" else "action",
    )


class Views:
    """The reads and the one write (verdicts) of the API, over one store and one policy."""

    def __init__(
        self,
        store: RedisStore,
        policy: Policy,
        *,
        partitions: int,
        metrics: Metrics | None = None,
        history_points: int = 120,
        overview_cache_seconds: float = 10.0,
    ) -> None:
        self.store = store
        self.policy = policy
        self.partitions = range(partitions)
        self.segments = tuple(segment.name for segment in policy.rules.segments)
        # A customer needs action above the probability at which its segment's score rules
        # fire (engagement score below the highest threshold), or with an open alert.
        score_rules = policy.rules.score_rules
        self.bounds = {
            s: 1.0 - max(rule.threshold_for(s) for rule in score_rules) / 100.0
            for s in self.segments
            if score_rules
        }
        if score_rules:
            limits = ", ".join(
                f"{s} below {max(rule.threshold_for(s) for rule in score_rules):g}"
                for s in self.segments
            )
            self.definition = (
                f"customers who need action: an engagement score below their segment's "
                f"threshold ({limits}), or an alert without a verdict"
            )
        else:
            self.definition = "customers who need action: an alert without a verdict"
        self.metrics = metrics
        self.history_points = history_points
        self.overview_cache_seconds = overview_cache_seconds
        self._overviews: dict[int, tuple[float, dict[str, Any]]] = {}
        self._initial = Scorer(policy.config.model)
        self._models: dict[int, Scorer] = {}
        self._lookups: dict[int, tuple[float, Scorer]] = {}

    # -- models ---------------------------------------------------------------------------
    async def _model_at(self, at: datetime) -> Scorer:
        """
        The checkpoint a scoring at `at` used: the newest one up to its scoring epoch. Which
        checkpoint stands for an epoch is looked up again after `_LOOKUP_TTL_S` (the learner
        may not have written it yet); the models themselves are kept by epoch.
        """
        epoch = scoring_epoch(at, self.policy.config.model_epoch)
        now = time.monotonic()
        known = self._lookups.get(epoch)
        if known is not None and now - known[0] < _LOOKUP_TTL_S:
            return known[1]
        found = await self.store.latest_checkpoint(at_most=epoch)
        model = self._initial
        if found is not None:
            got, data = found
            cached = self._models.get(got)
            if cached is None:
                cached = self._models[got] = Scorer.from_bytes(data)
                for old in sorted(self._models)[:-_MODELS_KEPT]:
                    del self._models[old]
            model = cached
        self._lookups[epoch] = (now, model)
        for old in sorted(self._lookups)[: -_MODELS_KEPT * 8]:
            del self._lookups[old]
        return model

    async def explain(self, state: CustomerState) -> tuple[list[Reason], str, dict[str, float]]:
        """The reasons of the customer's current risk, the summary and the feature vector."""
        if state.scored_at is None or state.churn_probability is None:
            return [], "not scored yet", {}
        model = await self._model_at(state.scored_at)
        x, scoring = score_at(state.features, at=state.scored_at, model=model, policy=self.policy)
        factors = factors_of(scoring, x, model)
        ref = state.anchor if state.anchor is not None else state.next_anchor
        change = risk_change(state)
        items = explain.reasons(
            factors,
            None if ref is None else ref.factors,
            change=0.0 if change is None else change,
            x=x,
            top=self.policy.config.top_reasons,
        )
        summary = explain.summary(change, items, level=state.churn_probability)
        return items, summary, x

    # -- reads ----------------------------------------------------------------------------
    async def at_risk(self, query: ListQuery) -> dict[str, Any]:
        """One page of the at-risk list (the shape of GET /api/v1/at-risk)."""
        order = _ORDER_OF[query.sort]
        everyone = await self.store.at_risk_total(
            partitions=self.partitions, segment=query.segment, sort="risk"
        )
        if query.show == "all":
            ranked = await self.store.at_risk(
                limit=query.limit,
                offset=query.offset,
                partitions=self.partitions,
                segment=query.segment,
                sort=order,
            )
            total = await self.store.at_risk_total(
                partitions=self.partitions, segment=query.segment, sort=order
            )
        else:
            needing = await self.store.needing_action(
                partitions=self.partitions,
                bounds=self.bounds,
                segment=query.segment,
                sort=order,
            )
            ranked = needing[query.offset : query.offset + query.limit]
            total = len(needing)
        ids = [cid for cid, _ in ranked]
        states = await self.store.load_states(ids)
        alerts = await self.store.alerts_of(ids, limit=_OPEN_ALERTS_SHOWN)
        verdicts = await self.store.verdicts(
            orjson.loads(raw)["alert_id"] for found in alerts.values() for raw in found
        )
        items = []
        for cid in ids:
            if cid not in states:
                continue  # removed between the two reads
            state = states[cid][0]
            reasons, _, _ = await self.explain(state)
            items.append(
                {
                    **_headline(state),
                    "top_reasons": [r.model_dump() for r in reasons],
                    "open_alerts": [
                        _alert_brief(a)
                        for a in (orjson.loads(raw) for raw in alerts.get(cid, []))
                        if a["alert_id"] not in verdicts
                    ],
                }
            )
        end = query.offset + len(ranked)
        return {
            "items": items,
            "limit": query.limit,
            "offset": query.offset,
            "next_offset": end if end < total else None,
            "total": total,
            "others": max(everyone - total, 0) if query.show == "action" else 0,
            "show": query.show,
            "definition": self.definition if query.show == "action" else _EVERYONE,
            "sort": query.sort,
            "segment": query.segment,
            "segments": list(self.segments),
        }

    async def customer(self, customer_id: str) -> dict[str, Any]:
        """One customer (the shape of GET /api/v1/customers/{id}). Raises NotFoundError."""
        state = await self.store.load_state(customer_id)
        if state is None:
            msg = f"customer_id: no customer {customer_id!r} in the store"
            raise NotFoundError(parameter="customer_id", message=msg)
        reasons, summary, x = await self.explain(state)
        history = await self.store.score_history(customer_id, limit=self.history_points)
        raw_alerts = await self.store.customer_alerts(customer_id)
        alerts = [orjson.loads(raw) for raw in raw_alerts]
        verdicts = await self.store.verdicts(a["alert_id"] for a in alerts)
        for alert in alerts:
            alert["verdict"] = _verdict_view(verdicts.get(alert["alert_id"]))
        return {
            **_headline(state),
            "last_activity_at": _ts(state.last_activity_at),
            "cancelled_at": _ts(state.cancelled_at),
            "summary": summary,
            "reasons": [r.model_dump() for r in reasons],
            "features": x,
            "history": history,
            "alerts": alerts,
        }

    async def alert(self, alert_id: str) -> AlertRecord:
        """An alert the store holds, as published. Raises NotFoundError."""
        customer_id = await self.store.alert_customer(alert_id)
        if customer_id is not None:
            for raw in await self.store.customer_alerts(customer_id, limit=10_000):
                data = orjson.loads(raw)
                if data["alert_id"] == alert_id:
                    return AlertRecord.model_validate(data)
        msg = f"alert_id: no alert {alert_id!r} in the store"
        raise NotFoundError(parameter="alert_id", message=msg)

    async def overview(self, weeks: int = overview_of.DEFAULT_WEEKS) -> dict[str, Any]:
        """
        The whole base (the shape of GET /api/v1/overview; `api.overview` says what each
        figure is): a read of every customer's state, kept scorings and alerts, in chunks of
        `_OVERVIEW_CHUNK`, served from memory for `overview_cache_seconds`.
        """
        if not 1 <= weeks <= overview_of.MAX_WEEKS:
            msg = f"weeks: expected an integer between 1 and {overview_of.MAX_WEEKS}, got {weeks}"
            raise BadParameterError(parameter="weeks", message=msg)
        now = time.monotonic()
        cached = self._overviews.get(weeks)
        if cached is not None and now - cached[0] < self.overview_cache_seconds:
            return cached[1]
        ids = await self.store.customer_ids()
        facts: list[overview_of.Facts] = []
        for start in range(0, len(ids), _OVERVIEW_CHUNK):
            chunk = ids[start : start + _OVERVIEW_CHUNK]
            states = await self.store.load_states(chunk, corrupt=[])
            facts += [overview_of.facts_of(state) for state, _ in states.values()]
        end = overview_of.as_of(facts)
        if end is None:
            data = {"as_of": None, "weeks": weeks, "customers": len(facts)}
        else:
            since = overview_of.week_starts(end, weeks)[0]
            histories: dict[str, list[tuple[datetime, float]]] = {}
            alerts: list[overview_of.AlertFact] = []
            known = [f.customer_id for f in facts]
            for start in range(0, len(known), _OVERVIEW_CHUNK):
                chunk = known[start : start + _OVERVIEW_CHUNK]
                histories |= await self.store.histories_since(chunk, since)
                for cid, found in (await self.store.alerts_since(chunk, since)).items():
                    for raw in found:
                        a = orjson.loads(raw)
                        at = datetime.fromisoformat(a["event_ts"].replace("Z", "+00:00"))
                        alerts.append(overview_of.AlertFact(a["alert_id"], cid, a["rule"], at))
            data = overview_of.build(
                facts,
                end=end,
                weeks=weeks,
                segments=self.segments,
                bounds=self.bounds,
                open_alerts=await self.store.open_alert_customers(self.partitions),
                histories=histories,
                alerts=alerts,
                verdicts=await self.store.all_verdicts(),
                definition=self.definition,
            )
        self._overviews[weeks] = (time.monotonic(), data)
        return data

    # -- the one write --------------------------------------------------------------------
    async def latest_alert_id(self, customer_id: str, rule: str) -> str:
        """
        The id of the customer's newest alert of `rule`: a verdict can name the alert by the
        customer and the rule instead of its id.

        Raises:
            NotFoundError: no such customer, or none of its alerts is of that rule (the message
                names the rules it has alerts of).
        """
        raw = await self.store.customer_alerts(customer_id)
        alerts = [orjson.loads(item) for item in raw]
        for alert in alerts:  # newest first
            if alert["rule"] == rule:
                return str(alert["alert_id"])
        if not alerts:
            msg = f"customer_id: customer {customer_id!r} has no alerts in the store"
            raise NotFoundError(parameter="customer_id", message=msg)
        rules = ", ".join(sorted({a["rule"] for a in alerts}))
        msg = f"rule: customer {customer_id!r} has no {rule!r} alert (its alerts: {rules})"
        raise NotFoundError(parameter="rule", message=msg)

    async def give_verdict(
        self, alert_id: str, verdict: object, *, by: str = "", note: str = ""
    ) -> dict[str, Any]:
        """
        Store a verdict on an alert, once per alert (the same verdict again changes nothing).

        Raises:
            BadParameterError: the verdict is not one of VERDICTS (or `by`/`note` too long).
            NotFoundError: the store holds no such alert.
        """
        try:
            checked = check_verdict(verdict)
        except BadVerdictError as exc:
            raise BadParameterError(parameter="verdict", message=str(exc)) from None
        alert = await self.alert(alert_id)
        try:
            record = verdict_record(alert, checked, by=by, note=note, given_at=datetime.now(UTC))
        except BadVerdictError as exc:
            field = str(exc).split(":", 1)[0]
            raise BadParameterError(parameter=field, message=str(exc)) from None
        data = record.model_dump(mode="json")
        data["given_at"] = format_ts(record.given_at)
        previous, changed = await self.store.set_verdict(
            alert_id, verdict=checked, rule=alert.rule, record=data
        )
        if self.metrics is not None:
            self.metrics.feedback.labels(checked, "yes" if changed else "no").inc()
        await self._close_if_judged(alert.customer_id)
        self._overviews.clear()  # a verdict moves the saved, churned and open counts
        return {
            "alert_id": alert_id,
            "customer_id": alert.customer_id,
            "rule": alert.rule,
            "verdict": checked,
            "previous": previous,
            "changed": changed,
        }

    async def _close_if_judged(self, customer_id: str) -> None:
        """The customer leaves the open-alert set once its listed alerts all have verdicts."""
        raw = await self.store.alerts_of([customer_id], limit=_OPEN_ALERTS_SHOWN)
        ids = [orjson.loads(item)["alert_id"] for item in raw.get(customer_id, [])]
        judged = await self.store.verdicts(ids)
        partition = partition_of(customer_id, len(self.partitions))
        await self.store.close_alert(customer_id, partition, [a for a in ids if a not in judged])

    async def refresh_metrics(self) -> None:
        """Set churnwatch_alert_verdicts from the counts in the store (before a scrape)."""
        if self.metrics is None:
            return
        counts = await self.store.verdict_counts()
        gauge = self.metrics.alert_verdicts
        gauge.clear()
        for (rule, verdict), n in sorted(counts.items()):
            if verdict in VERDICTS:
                gauge.labels(rule, verdict).set(n)


def _ts(at: datetime | None) -> str | None:
    return None if at is None else format_ts(at)


def _headline(state: CustomerState) -> dict[str, Any]:
    return {
        "customer_id": state.customer_id,
        "segment": state.segment,
        "churn_probability": state.churn_probability,
        "engagement_score": state.score,
        "change": risk_change(state),
        "scored_at": _ts(state.scored_at),
    }


def _alert_brief(alert: Mapping[str, Any]) -> dict[str, Any]:
    return {k: alert[k] for k in ("alert_id", "rule", "severity", "event_ts", "summary")}


def _verdict_view(record: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {k: record.get(k, "") for k in ("verdict", "by", "note", "given_at")}
