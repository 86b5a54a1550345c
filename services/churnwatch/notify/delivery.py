"""
One alert in, one email or task (or a digest entry, or a dead letter) out: the delivery state
machine the consumer runs for every record, and the sender of the daily digests.

The steps and what a crash at each point does are described in churnwatch.notify.consumer.
Nothing here reads a clock or sleeps on its own: `clock`, `sleep` and the jitter's `rng` are
passed in, so tests drive time.
"""

from __future__ import annotations

import base64
import logging
import os
import random
import signal
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Literal, Protocol

import orjson
from pydantic import ValidationError

from churnwatch.core.alerts import AlertRecord
from churnwatch.metrics import Metrics
from churnwatch.notify.email import SmtpSender, build_message
from churnwatch.notify.logs import Redactor
from churnwatch.notify.retry import Backoff, DeadLetterReason, DeliveryError
from churnwatch.notify.routing import (
    Plan,
    budget_week,
    choose_recipient,
    digest_id,
    message_id,
    message_id_domain,
    needs_budget,
    plan_for,
)
from churnwatch.notify.settings import NotifySettings
from churnwatch.notify.state import Claim, DeliveryStore
from churnwatch.notify.templates import DigestItem, render_alert, render_digest, task_payload
from churnwatch.notify.webhook import WebhookSender

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
Sleep = Callable[[float], None]
Outcome = Literal["sent", "digested", "duplicate", "dead_lettered", "handed_over"]
Stage = Literal["notify", "digest"]
_PERMANENT: DeadLetterReason = "permanent_failure"
_EXHAUSTED: DeadLetterReason = "retries_exhausted"


@dataclass(frozen=True, slots=True)
class Source:
    """Where a record came from (None for all of them when unknown)."""

    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    key: bytes | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}

    def context(self) -> dict[str, Any]:
        """Log context: every line triggered by a record names its topic, partition, offset."""
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """
    A record the consumers gave up on. Its JSON (`to_json`) is what lands on
    churn.alerts.deadletter, keyed by the original key.
    """

    reason: DeadLetterReason
    message: str
    source: Source
    original: bytes
    stage: Stage
    action: str | None = None
    delivery_id: str | None = None
    attempts: int = 0

    def to_json(self, *, max_original_bytes: int) -> bytes:
        kept = self.original[:max_original_bytes]
        return orjson.dumps(
            {
                "reason": self.reason,
                "message": self.message,
                "source": self.source.to_dict(),
                "original_b64": base64.b64encode(kept).decode(),
                "original_truncated": len(kept) < len(self.original),
                "stage": self.stage,
                "action": self.action,
                "alert_id": self.delivery_id,
                "attempts": self.attempts,
            }
        )


class DeadLetterSink(Protocol):
    """Where dead letters go; `publish` returns once the record is durable (or raises)."""

    def publish(self, letter: DeadLetter) -> None: ...


class _GaveUpError(Exception):
    def __init__(self, reason: DeadLetterReason, message: str, attempts: int) -> None:
        super().__init__(message)
        self.reason: DeadLetterReason = reason
        self.message = message
        self.attempts = attempts


class _LeaseLostError(Exception):
    """Another consumer took the delivery over (our lease ran out): it is theirs to finish."""


@dataclass
class Deliverer:
    """
    Runs the delivery of alerts and digests. Build it with its collaborators; it holds no
    connection of its own.
    """

    settings: NotifySettings
    store: DeliveryStore
    smtp: SmtpSender
    webhook: WebhookSender
    dead_letters: DeadLetterSink
    metrics: Metrics
    redactor: Redactor
    owner: str
    clock: Clock
    sleep: Sleep
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        s = self.settings
        self.backoff = Backoff(
            attempts=s.retry_attempts,
            base=timedelta(seconds=s.retry_base_seconds),
            cap=timedelta(seconds=s.retry_max_seconds),
            jitter=s.retry_jitter,
        )
        self.domain = message_id_domain(s.smtp.sender, s.message_id_domain)

    # One alert.

    def handle(self, value: bytes, source: Source) -> Outcome:
        """
        Delivers one record of churn.alerts; returns once it reached a final outcome (or was
        found finished before, or is another live consumer's to finish).

        Raises:
            StoreUnavailableError: Redis failed; nothing was recorded, do not commit.
        """
        ctx = source.context()
        try:
            alert = AlertRecord.model_validate_json(value)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}"
                for e in exc.errors(include_url=False, include_input=False)
            )
            letter = DeadLetter(
                reason="malformed_alert",
                message=f"expected an alert (churnwatch.core.alerts.AlertRecord), got: {problems}",
                source=source,
                original=value,
                stage="notify",
            )
            self._dead_letter(letter, label="unknown")
            return "dead_lettered"
        action = alert.action
        ctx |= {"alert_id": alert.alert_id, "action": action, "customer_id": alert.customer_id}
        claim = self._claim(alert.alert_id, action, ctx)
        if claim is None:
            log.warning("delivery.handed_over", extra=ctx)
            return "handed_over"
        if claim.kind == "done":
            self.metrics.notifications.labels(action, "duplicate").inc()
            log.info("delivery.duplicate", extra=ctx | {"state": claim.state})
            return "duplicate"
        plan = claim.plan
        if claim.kind == "takeover":
            log.warning(
                "delivery.takeover",
                extra=ctx | {"attempts_before": claim.attempts, "plan": plan and plan.kind},
            )
            if (
                plan is not None
                and plan.kind in ("email", "task")
                and claim.attempts > 0
                and self.settings.unconfirmed == "deadletter"
            ):
                msg = (
                    f"a consumer died after {claim.attempts} attempt(s) without recording the "
                    "outcome; the email or task may or may not exist (unconfirmed=deadletter)"
                )
                self._give_up(alert, value, source, "unconfirmed_delivery", msg, claim.attempts)
                return "dead_lettered"
        if plan is None:
            plan = self._plan(alert)
            self.store.save_plan(alert.alert_id, plan)
        ctx |= {"plan": plan.kind, "recipient": plan.recipient}
        missing = self._missing_config(plan)
        if missing:
            self._give_up(alert, value, source, "not_configured", missing, 0)
            return "dead_lettered"
        if plan.kind == "digest":
            return self._to_digest(alert, value, source, plan, ctx)
        try:
            attempts = self._attempts(alert.alert_id, action, self._sender(alert, plan), ctx)
        except _LeaseLostError:
            log.warning("delivery.lease_lost", extra=ctx)
            return "handed_over"
        except _GaveUpError as exc:
            self._give_up(alert, value, source, exc.reason, exc.message, exc.attempts)
            return "dead_lettered"
        self._test_exit("send")
        self.store.finish(alert.alert_id, "sent", now=self.clock(), detail=f"{attempts} attempt(s)")
        self.metrics.notifications.labels(action, "sent").inc()
        log.info("delivery.sent", extra=ctx | {"attempts": attempts})
        self._test_exit("record")
        return "sent"

    def _claim(self, delivery_id: str, action: str, ctx: dict[str, Any]) -> Claim | None:
        """Claims, waiting out another consumer's live lease (a rebalance while it sends)."""
        while True:
            now = self.clock()
            claim = self.store.claim(delivery_id, action=action, owner=self.owner, now=now)
            if claim.kind != "busy":
                return claim
            lease_until = claim.lease_until
            if lease_until is None:  # a busy claim always carries its lease; a bug otherwise
                msg = f"delivery {delivery_id}: a busy claim without a lease"
                raise RuntimeError(msg)
            wait = (lease_until - now).total_seconds()
            log.info("delivery.busy", extra=ctx | {"wait_seconds": round(wait, 3)})
            self.sleep(min(max(wait, 0.0) + 0.05, 1.0))

    def _plan(self, alert: AlertRecord) -> Plan:
        s = self.settings
        now = self.clock()
        recipient = choose_recipient(alert, s.routes, s.default_recipient)
        within = True
        if (
            recipient is not None
            and s.weekly_budget is not None
            and needs_budget(alert, s.digest_severities)
        ):
            within = self.store.take_budget(
                recipient, budget_week(now), alert.alert_id, s.weekly_budget
            )
        return plan_for(
            alert,
            recipient=recipient,
            digest_severities=s.digest_severities,
            within_budget=within,
            at=now,
        )

    def _missing_config(self, plan: Plan) -> str | None:
        s = self.settings
        if plan.kind in ("email", "digest") and (s.smtp.host is None or plan.recipient is None):
            return "email alerts need smtp.host and a recipient (routes or default_recipient)"
        if plan.kind == "task" and s.webhook.url is None:
            return "csm_task alerts need webhook.url (CHURNWATCH_NOTIFY_WEBHOOK_URL)"
        return None

    def _sender(self, alert: AlertRecord, plan: Plan) -> Callable[[], None]:
        if plan.kind == "task":
            payload = task_payload(alert, assignee=plan.recipient)

            def post() -> None:
                self.webhook.post(payload, idempotency_key=alert.alert_id)

            return post
        content = render_alert(alert)
        recipient = plan.recipient or ""

        def send() -> None:
            message = build_message(
                content,
                sender=self.settings.smtp.sender,
                recipient=recipient,
                message_id=message_id(alert.alert_id, self.domain),
                sent_at=self.clock(),
                delivery_id=alert.alert_id,
            )
            self.smtp.send(message)

        return send

    def _attempts(
        self, delivery_id: str, label: str, send: Callable[[], None], ctx: dict[str, Any]
    ) -> int:
        """Attempts with backoff; returns the attempts used."""
        for attempt in range(1, self.backoff.attempts + 1):
            if not self.store.renew(delivery_id, owner=self.owner, now=self.clock()):
                raise _LeaseLostError
            try:
                send()
            except DeliveryError as exc:
                if not exc.transient:
                    raise _GaveUpError(_PERMANENT, exc.message, attempt) from exc
                if attempt == self.backoff.attempts:
                    msg = f"{attempt} attempts failed, the last: {exc.message}"
                    raise _GaveUpError(_EXHAUSTED, msg, attempt) from exc
                delay = self.backoff.delay(attempt, self.rng)
                self.metrics.notifications.labels(label, "retried").inc()
                log.warning(
                    "delivery.retry",
                    extra=ctx
                    | {
                        "attempt": attempt,
                        "error": exc.message,
                        "delay_seconds": round(delay.total_seconds(), 3),
                    },
                )
                self.sleep(delay.total_seconds())
            else:
                return attempt
        msg = "unreachable: the loop returns or raises"
        raise AssertionError(msg)  # pragma: no cover

    def _to_digest(
        self,
        alert: AlertRecord,
        value: bytes,
        source: Source,
        plan: Plan,
        ctx: dict[str, Any],
    ) -> Outcome:
        if plan.day is None:  # the caller routes only digest plans here
            msg = "delivery: a digest entry without its digest day"
            raise RuntimeError(msg)
        entry = orjson.dumps(
            {
                "recipient": plan.recipient,
                "why": plan.why,
                "alert": value.decode(),
                "source": source.to_dict(),
            }
        ).decode()
        self.store.digest_add(plan.day, alert.alert_id, entry)
        self.store.finish(alert.alert_id, "digested", now=self.clock(), detail=plan.to_json())
        self.metrics.notifications.labels(alert.action, "digested").inc()
        log.info("delivery.digested", extra=ctx | {"day": plan.day.isoformat(), "why": plan.why})
        self._test_exit("record")
        return "digested"

    def _give_up(
        self,
        alert: AlertRecord,
        value: bytes,
        source: Source,
        reason: DeadLetterReason,
        message: str,
        attempts: int,
    ) -> None:
        letter = DeadLetter(
            reason=reason,
            message=self.redactor.scrub(message),
            source=source,
            original=value,
            stage="notify",
            action=alert.action,
            delivery_id=alert.alert_id,
            attempts=attempts,
        )
        self.metrics.notifications.labels(alert.action, "failed").inc()
        self._dead_letter(letter, label=alert.action)
        self.store.finish(alert.alert_id, "dead_lettered", now=self.clock(), detail=reason)

    def _dead_letter(self, letter: DeadLetter, *, label: str) -> None:
        letter = DeadLetter(
            reason=letter.reason,
            message=self.redactor.scrub(letter.message),
            source=letter.source,
            original=letter.original,
            stage=letter.stage,
            action=letter.action,
            delivery_id=letter.delivery_id,
            attempts=letter.attempts,
        )
        self.dead_letters.publish(letter)
        self.metrics.notifications.labels(label, "dead_lettered").inc()
        log.warning(
            "delivery.dead_lettered",
            extra=letter.source.context()
            | {
                "reason": letter.reason,
                "detail": letter.message,
                "alert_id": letter.delivery_id,
                "stage": letter.stage,
            },
        )

    def _test_exit(self, point: str) -> None:
        if self.settings.test_exit_after == point:
            log.warning("test.exit", extra={"after": point})
            for handler in logging.getLogger().handlers:
                handler.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    # Digests.

    def send_due_digests(self) -> int:
        """
        Sends the digest of every day that has ended, one email per recipient; returns the
        digests sent. Entries leave the store once their digest was sent or dead-lettered.
        """
        sent = 0
        for day in self.store.digest_days_due(self.clock()):
            by_recipient: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
            for alert_id, raw in self.store.digest_entries(day).items():
                entry = orjson.loads(raw)
                by_recipient[entry["recipient"]].append((alert_id, entry))
            for recipient, entries in sorted(by_recipient.items()):
                if self._send_digest(day, recipient, entries):
                    sent += 1
        return sent

    def _send_digest(
        self, day: date, recipient: str, entries: list[tuple[str, dict[str, Any]]]
    ) -> bool:
        ids = sorted(alert_id for alert_id, _ in entries)
        delivery_id = digest_id(day, recipient, ids)
        ctx: dict[str, Any] = {
            "delivery_id": delivery_id,
            "day": day.isoformat(),
            "recipient": recipient,
            "alerts": len(ids),
        }
        claim = self.store.claim(delivery_id, action="digest", owner=self.owner, now=self.clock())
        if claim.kind == "busy":
            log.info("digest.busy", extra=ctx)
            return False
        if claim.kind == "done":
            self.store.digest_remove(day, ids)
            return False
        items = [
            DigestItem(AlertRecord.model_validate_json(entry["alert"]), entry["why"])
            for _, entry in entries
        ]
        content = render_digest(day, items)

        def send() -> None:
            message = build_message(
                content,
                sender=self.settings.smtp.sender,
                recipient=recipient,
                message_id=message_id(delivery_id, self.domain),
                sent_at=self.clock(),
                delivery_id=delivery_id,
            )
            self.smtp.send(message)

        try:
            attempts = self._attempts(delivery_id, "digest", send, ctx)
        except _LeaseLostError:
            return False
        except _GaveUpError as exc:
            self.metrics.notifications.labels("digest", "failed").inc()
            for alert_id, entry in entries:
                src = entry.get("source") or {}
                letter = DeadLetter(
                    reason=exc.reason,
                    message=f"daily digest {day.isoformat()} to {recipient}: {exc.message}",
                    source=Source(src.get("topic"), src.get("partition"), src.get("offset")),
                    original=entry["alert"].encode(),
                    stage="digest",
                    action="email",
                    delivery_id=alert_id,
                    attempts=exc.attempts,
                )
                self._dead_letter(letter, label="digest")
            self.store.finish(delivery_id, "dead_lettered", now=self.clock(), detail=exc.reason)
            self.store.digest_remove(day, ids)
            return False
        self.store.finish(delivery_id, "sent", now=self.clock(), detail=f"{attempts} attempt(s)")
        self.metrics.notifications.labels("digest", "sent").inc()
        log.info("digest.sent", extra=ctx | {"attempts": attempts})
        self.store.digest_remove(day, ids)
        return True
