"""
The alert consumer: one kafka-python consumer group on churn.alerts that turns each alert into
an email or a CSM task, effectively once.

Routing. `action` picks the channel: `email` (SMTP) or `csm_task` (HTTP webhook). The recipient
is the first matching route of `CHURNWATCH_NOTIFY_ROUTES` (segment, severity, rule), else
`default_recipient`; the task carries it as `assignee`. Email alerts of a digest severity
(`low` by default) join the recipient's daily digest, and so do email alerts beyond the
recipient's weekly budget (`weekly_budget` alert emails per ISO week). The digests of days that
have ended (UTC) are sent every `digest_check_seconds` by any consumer of the group, or once
by `churnwatch notify --send-digest`.

Effectively once. Each record goes through these steps, one record at a time:

1. Parse (`AlertRecord.model_validate_json`); a malformed record is dead-lettered (step 6).
2. Claim the delivery in Redis (`{prefix}:d:{alert_id}`, one Lua script): a new alert becomes
   `sending` with a lease (owner = this process, `lease_seconds`); an alert already `sent`,
   `digested` or `dead_lettered` is a redelivery: counted as `duplicate`, nothing is sent.
3. Decide the plan (email / digest / task, recipient, digest day; the budget is taken here)
   and store it in the same hash, so whoever finishes the delivery carries out the same plan.
4. Send, with retries (below). Before each attempt the lease is renewed and the attempt
   counted; if the lease was lost (another consumer took the alert over), stop.
5. Record `sent` (or `digested` after the digest entry is written).
6. Failures: a permanent failure or the last failed retry puts a record on
   churn.alerts.deadletter (acknowledged by the broker) and then records `dead_lettered`.
7. Commit the record's offset.

What a crash (kill -9, power loss) at each point does, once the alert is delivered again:

- before 2, or between 2 and 4: the alert is `sending` with a lease and no attempt; the next
  consumer waits for the lease to run out (at most `lease_seconds`), takes it over and
  delivers it. Nothing was sent, nothing is lost.
- during or after 4, before 5 (sent, not recorded): the alert is `sending` with attempts > 0
  and the lease runs out; the next consumer takes it over and, with `unconfirmed=resend` (the
  default), sends again with the SAME Message-ID (`<alert_id@domain>`) and the SAME
  `Idempotency-Key` (the alert_id). A webhook that honours the key creates no second task; a
  mail system that deduplicates by Message-ID shows one email, others show two. We chose this
  over losing the alert: the window is one Redis round trip wide. With
  `unconfirmed=deadletter` the alert goes to the dead-letter topic as `unconfirmed_delivery`
  for a person to check instead, and is never sent twice.
- after 5, before 7 (recorded, not committed): the redelivered alert is found `sent`:
  counted as a duplicate, nothing is sent again.
- between 6's produce and its record: the alert may be dead-lettered twice (the dead-letter
  topic is at-least-once; its records carry the source topic, partition and offset).

A rebalance while a consumer is still sending (it exceeded max_poll_interval_ms) is the same
story without the crash: the new owner of the partition finds the alert `sending` with a live
lease and waits for it; the old one records the outcome, and the new one sees it.

Offsets are committed after every record, so a restart redelivers at most the record in
flight (alerts are few; the commit is cheap next to an SMTP exchange).
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import kafka.errors
import redis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.structs import OffsetAndMetadata
from redis.cluster import RedisCluster

from churnwatch.core.errors import ChurnwatchError, ConfigError
from churnwatch.metrics import NOTIFICATION_OUTCOMES, Metrics
from churnwatch.notify.delivery import Clock, DeadLetter, Deliverer, Outcome, Sleep, Source
from churnwatch.notify.email import SmtpSender
from churnwatch.notify.logs import Redactor
from churnwatch.notify.settings import NotifySettings
from churnwatch.notify.state import DeliveryStore
from churnwatch.notify.webhook import WebhookSender

log = logging.getLogger(__name__)

ACTIONS = ("email", "csm_task", "digest")


class BrokerError(ChurnwatchError):
    """The broker did not take a dead letter or did not answer at start; do not commit."""


def utc_now() -> datetime:
    """The wall clock, in UTC (the adapters' clock; the core never reads one)."""
    return datetime.now(UTC)


class KafkaDeadLetters:
    """Dead letters on churn.alerts.deadletter, each acknowledged before `publish` returns."""

    def __init__(self, producer: Any, topic: str, *, max_original_bytes: int) -> None:
        self.producer = producer
        self.topic = topic
        self.max_original_bytes = max_original_bytes

    def publish(self, letter: DeadLetter) -> None:
        headers = [("reason", letter.reason.encode()), ("stage", letter.stage.encode())]
        if letter.delivery_id:
            headers.append(("alert_id", letter.delivery_id.encode()))
        value = letter.to_json(max_original_bytes=self.max_original_bytes)
        try:
            self.producer.send(self.topic, key=letter.source.key, value=value, headers=headers).get(
                timeout=30
            )
        except kafka.errors.KafkaError as exc:
            msg = f"dead letter to {self.topic!r} not acknowledged: {type(exc).__name__}"
            raise BrokerError(msg) from exc


def redis_client(settings: NotifySettings) -> Any:
    """A sync redis-py client (decode_responses=True) for the delivery state."""
    r = settings.redis
    kwargs: dict[str, Any] = {"decode_responses": True, "socket_timeout": r.socket_timeout}
    if r.password is not None:
        kwargs["password"] = r.password.get_secret_value()
    if r.username is not None:
        kwargs["username"] = r.username
    if r.cluster:
        return RedisCluster.from_url(r.url, **kwargs)
    return redis.Redis.from_url(r.url, **kwargs)


def ensure_topics(settings: NotifySettings) -> list[str]:
    """Creates churn.alerts and churn.alerts.deadletter when missing; returns those created."""
    k = settings.kafka
    try:
        admin = KafkaAdminClient(**k.kafka_kwargs())
    except kafka.errors.KafkaError as exc:
        msg = f"no Kafka broker answered at {k.bootstrap}: {type(exc).__name__}"
        raise BrokerError(msg) from exc
    created: list[str] = []
    try:
        for name in (k.alerts_topic, k.deadletter_topic):
            topic = NewTopic(
                name, num_partitions=k.partitions, replication_factor=k.replication_factor
            )
            try:
                admin.create_topics([topic], timeout_ms=k.request_timeout_ms)
            except kafka.errors.TopicAlreadyExistsError:
                continue
            except kafka.errors.KafkaError as exc:
                msg = f"creating topic {name!r} failed: {type(exc).__name__}"
                raise ConfigError(msg) from exc
            created.append(name)
    finally:
        admin.close()
    return created


class AlertConsumer:
    """
    The consumer of churn.alerts. Build it (no I/O), `start()` it, then `run(stop)` or call
    `poll_once()` yourself (tests); `close()` in the end.
    """

    def __init__(
        self,
        settings: NotifySettings,
        metrics: Metrics,
        *,
        clock: Clock = utc_now,
        sleep: Sleep = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.sleep = sleep
        self.rng = rng if rng is not None else random.Random(settings.retry_seed)  # noqa: S311  # jitter, not crypto
        self.redactor = Redactor(settings.secrets())
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.consumer: Any = None
        self.producer: Any = None
        self.redis: Any = None
        self.deliverer: Deliverer | None = None
        self._next_digest_at = 0.0
        for action in ACTIONS:
            for outcome in NOTIFICATION_OUTCOMES:
                metrics.notifications.labels(action, outcome)

    def start(self, *, join: bool = True) -> None:
        """
        Connects to Redis and the broker and creates missing topics; with `join`, subscribes
        to the alerts topic (the group join happens in the first polls).
        """
        s = self.settings
        if s.create_topics:
            created = ensure_topics(s)
            if created:
                log.info("topics.created", extra={"topics": created})
        self.redis = redis_client(s)
        store = DeliveryStore(self.redis, prefix=s.redis.prefix, lease=s.lease, ttl=s.delivery_ttl)
        kwargs = s.kafka.kafka_kwargs()
        self.producer = KafkaProducer(**kwargs, acks="all", linger_ms=0, retries=5)
        self.deliverer = Deliverer(
            settings=s,
            store=store,
            smtp=SmtpSender(s.smtp, self.redactor),
            webhook=WebhookSender(s.webhook, self.redactor),
            dead_letters=KafkaDeadLetters(
                self.producer,
                s.kafka.deadletter_topic,
                max_original_bytes=s.deadletter_max_original_bytes,
            ),
            metrics=self.metrics,
            redactor=self.redactor,
            owner=self.owner,
            clock=self.clock,
            sleep=self.sleep,
            rng=self.rng,
        )
        if not join:
            return
        self.consumer = KafkaConsumer(
            **kwargs,
            group_id=s.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            max_poll_interval_ms=s.max_poll_interval_ms,
            max_poll_records=s.max_poll_records,
            fetch_max_wait_ms=s.fetch_max_wait_ms,
        )
        self.consumer.subscribe([s.kafka.alerts_topic])
        log.info(
            "notify.started",
            extra={
                "topic": s.kafka.alerts_topic,
                "deadletter_topic": s.kafka.deadletter_topic,
                "group_id": s.group_id,
                "owner": self.owner,
                "email": s.smtp.host is not None,
                "webhook": s.webhook.url is not None,
            },
        )

    def _deliverer(self) -> Deliverer:
        if self.deliverer is None:
            msg = "AlertConsumer.start() must run before polling"
            raise ChurnwatchError(msg)
        return self.deliverer

    def poll_once(self, on_outcome: Callable[[Outcome], None] | None = None) -> int:
        """
        One poll: delivers every record it returns, committing after each; returns the number
        of records handled. Also sends the digests when they are due.
        """
        deliverer = self._deliverer()
        batches = self.consumer.poll(timeout_ms=self.settings.poll_timeout_ms)
        handled = 0
        for tp, records in batches.items():
            for record in records:
                source = Source(record.topic, record.partition, record.offset, record.key)
                outcome = deliverer.handle(record.value or b"", source)
                handled += 1
                if on_outcome is not None:
                    on_outcome(outcome)
                if not self._commit(tp, record.offset + 1, source):
                    break
        self.maybe_send_digests()
        return handled

    def _commit(self, tp: TopicPartition, offset: int, source: Source) -> bool:
        try:
            self.consumer.commit({tp: OffsetAndMetadata(offset, "", -1)})
        except kafka.errors.CommitFailedError:
            # The group moved on (we took too long): the partition is someone else's now and
            # the rest of this batch will be redelivered there; the delivery state dedupes.
            log.warning("offset.commit_failed", extra=source.context())
            return False
        return True

    def maybe_send_digests(self) -> int:
        """Sends due digests at most every `digest_check_seconds`."""
        now = time.monotonic()
        if now < self._next_digest_at:
            return 0
        self._next_digest_at = now + self.settings.digest_check_seconds
        return self._deliverer().send_due_digests()

    def run(self, stop: threading.Event) -> None:
        """Polls until `stop` is set."""
        while not stop.is_set():
            self.poll_once()

    def close(self) -> None:
        """Leaves the group and closes every connection (offsets are already committed)."""
        if self.consumer is not None:
            self.consumer.close(autocommit=False)
            self.consumer = None
        if self.producer is not None:
            self.producer.close(timeout=5)
            self.producer = None
        if self.redis is not None:
            self.redis.close()
            self.redis = None
