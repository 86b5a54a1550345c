"""
The alert consumers against the real broker and Redis, a real SMTP server (aiosmtpd) and a real
HTTP server (http.server), all on loopback: one email or task per alert, retries, dead letters,
digests, crashes between sending and committing, and secrets kept out of logs.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import os
import random
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from uuid import uuid4

import orjson
import pytest
import redis
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from churnwatch.core.alerts import AlertRecord, Reason, alert_to_json
from churnwatch.metrics import Metrics
from churnwatch.notify.consumer import AlertConsumer
from churnwatch.notify.delivery import DeadLetter, Deliverer, Outcome, Source
from churnwatch.notify.email import SmtpSender
from churnwatch.notify.logs import REDACTED, Redactor
from churnwatch.notify.retry import DeliveryError
from churnwatch.notify.routing import Plan
from churnwatch.notify.settings import (
    NotifyKafkaSettings,
    NotifyRedisSettings,
    NotifySettings,
    RecipientRoute,
    SmtpSettings,
    WebhookSettings,
)
from churnwatch.notify.state import DeliveryStore
from churnwatch.notify.webhook import WebhookSender
from needs import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
DEADLINE_S = 30.0
SMTP_USER = "churnwatch"
SMTP_PASSWORD = f"smtp-secret-{uuid4().hex}"
WEBHOOK_TOKEN = f"hook-secret-{uuid4().hex}"
DEFAULT_RECIPIENT = "csm@example.com"
AT = datetime(2026, 1, 6, 10, 0, tzinfo=UTC)


def make_alert(n: int = 0, **overrides: Any) -> AlertRecord:
    """
    A valid alert with a unique id (from a fresh uuid) and fields overridden.
    """
    base: dict[str, Any] = {
        "alert_id": uuid4().hex,
        "customer_id": f"c{n:06d}",
        "rule": "low_engagement",
        "severity": "high",
        "action": "email",
        "score": 28.0,
        "previous_score": 62.0,
        "threshold": 30.0,
        "churn_probability": 0.72,
        "reasons": [
            Reason(factor="login_trend", contribution=0.09, text="logins down 60%"),
        ],
        "summary": "risk +0.18: logins down 60% (+0.09)",
        "segment": "growth",
        "event_ts": AT,
        "emitted_at": AT,
        "model_version": "logreg-1",
        "rules_version": "2026.11.2",
    }
    return AlertRecord(**(base | overrides))


def plain_text(message: EmailMessage) -> str:
    """
    The text/plain body of a message.
    """
    body = message.get_body(("plain",))
    assert body is not None
    text: str = body.get_content()
    return text


def wait_for(predicate: Callable[[], bool], *, deadline_s: float = DEADLINE_S) -> None:
    """
    Polls `predicate` until it holds, failing at the deadline.
    """
    until = time.monotonic() + deadline_s
    while not predicate():
        if time.monotonic() > until:
            pytest.fail(f"condition not met within {deadline_s}s")
        time.sleep(0.1)


# SMTP (aiosmtpd) --------------------------------------------------------------------------


@dataclass
class Inbox:
    """
    An aiosmtpd handler that keeps every accepted message; `replies` scripts failures per
    recipient (popped one per attempt; an empty script accepts).
    """

    messages: list[EmailMessage] = field(default_factory=list)
    replies: dict[str, list[str]] = field(default_factory=dict)
    sessions: list[tuple[bool, bool]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            script = self.replies.get(envelope.rcpt_tos[0], [])
            if script:
                return script.pop(0)
            message = email.message_from_bytes(envelope.content, policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            self.messages.append(message)
            self.sessions.append((session.ssl is not None, bool(session.authenticated)))
        return "250 OK"

    def to(self, recipient: str) -> list[EmailMessage]:
        with self.lock:
            return [m for m in self.messages if m["To"] == recipient]

    def count(self) -> int:
        with self.lock:
            return len(self.messages)


@dataclass
class SmtpServer:
    port: int
    inbox: Inbox
    cafile: Path | None = None


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """
    A plain aiosmtpd server on loopback (no TLS, no AUTH).
    """
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield SmtpServer(controller.port, inbox)
    finally:
        controller.stop()


def _authenticate(
    server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == SMTP_USER.encode()
        and auth_data.password == SMTP_PASSWORD.encode()
    )
    return AuthResult(success=ok, handled=False)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """
    A self-signed certificate for 127.0.0.1 (openssl), and its key.
    """
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"],
            *["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"],
            *["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def tls_smtp_server(certificate: tuple[Path, Path]) -> Iterator[SmtpServer]:
    """
    An aiosmtpd server that requires STARTTLS and AUTH (user SMTP_USER, SMTP_PASSWORD).
    """
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    inbox = Inbox()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=free_port(),
        tls_context=context,
        require_starttls=True,
        authenticator=_authenticate,
        auth_require_tls=True,
    )
    controller.start()
    try:
        yield SmtpServer(controller.port, inbox, cafile=cert)
    finally:
        controller.stop()


# HTTP webhook (http.server) ---------------------------------------------------------------


@dataclass
class HookRequest:
    headers: dict[str, str]
    body: dict[str, Any]
    status: int


@dataclass
class Hook:
    """
    A task webhook: answers each POST from `script` ((status, body); body "ECHO" echoes the
    request headers), then 201; keeps every request.
    """

    url: str = ""
    script: list[tuple[int, str]] = field(default_factory=list)
    requests: list[HookRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def tasks(self) -> dict[str, HookRequest]:
        """Tasks the receiver created: one per Idempotency-Key answered 2xx."""
        with self.lock:
            return {r.headers["Idempotency-Key"]: r for r in self.requests if 200 <= r.status < 300}

    def count(self) -> int:
        with self.lock:
            return len(self.requests)


class _HookHandler(BaseHTTPRequestHandler):
    server: Any

    def do_POST(self) -> None:
        hook: Hook = self.server.hook
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with hook.lock:
            status, text = hook.script.pop(0) if hook.script else (201, '{"created": true}')
            if text == "ECHO":
                text = json.dumps({"error": "bad request", "you_sent": dict(self.headers)})
            hook.requests.append(HookRequest(dict(self.headers), orjson.loads(body), status))
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def hook() -> Iterator[Hook]:
    """
    The webhook server in a thread on 127.0.0.1.
    """
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HookHandler)
    state = Hook(url=f"http://127.0.0.1:{server.server_port}/tasks")
    server.hook = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# Kafka, Redis, settings -------------------------------------------------------------------


@dataclass
class Topics:
    alerts: str
    deadletter: str


@pytest.fixture
def topics(kafka_admin: KafkaAdminClient) -> Iterator[Topics]:
    """
    A fresh alerts topic (3 partitions) and dead-letter topic (1 partition).
    """
    name = f"cw-it-{uuid4().hex}"
    made = Topics(alerts=f"{name}.alerts", deadletter=f"{name}.alerts.deadletter")
    kafka_admin.create_topics(
        [
            NewTopic(made.alerts, num_partitions=3, replication_factor=1),
            NewTopic(made.deadletter, num_partitions=1, replication_factor=1),
        ],
        timeout_ms=10_000,
    )
    try:
        yield made
    finally:
        kafka_admin.delete_topics([made.alerts, made.deadletter], timeout_ms=10_000)


@pytest.fixture
def producer(kafka_bootstrap: str) -> Iterator[KafkaProducer]:
    """
    A plain producer (acks=all) for putting records on the alerts topic.
    """
    made = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=0)
    try:
        yield made
    finally:
        made.close(timeout=5)


def publish(producer: KafkaProducer, topic: str, record: AlertRecord | bytes, key: str) -> Any:
    """
    Puts an alert (as alert_to_json) or raw bytes on a topic; returns the record metadata.
    """
    value = alert_to_json(record) if isinstance(record, AlertRecord) else record
    return producer.send(topic, key=key.encode(), value=value).get(timeout=10)


def dead_letters(bootstrap: str, topic: str, expected: int) -> list[tuple[bytes, dict[str, Any]]]:
    """
    Reads `expected` records of the dead-letter topic (raw value and parsed JSON).
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    found: list[tuple[bytes, dict[str, Any]]] = []
    until = time.monotonic() + DEADLINE_S
    try:
        while len(found) < expected and time.monotonic() < until:
            for records in consumer.poll(timeout_ms=200).values():
                found += [(r.value, orjson.loads(r.value)) for r in records]
    finally:
        consumer.close()
    assert expected == len(found)
    return found


def committed(bootstrap: str, group: str, tp: TopicPartition) -> int | None:
    """
    The group's committed offset of a partition (None when nothing was committed).
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        offset: int | None = consumer.committed(tp)
        return offset
    finally:
        consumer.close(autocommit=False)


@dataclass
class Env:
    """
    Everything a test's consumer needs: addresses, names and the servers' ports.
    """

    kafka: str
    redis_url: str
    prefix: str
    group: str
    topics: Topics
    smtp: SmtpServer
    hook: Hook

    def settings(self, **overrides: Any) -> NotifySettings:
        """
        NotifySettings for an in-process consumer, short timeouts, overridable.
        """
        smtp = overrides.pop(
            "smtp",
            SmtpSettings(host="127.0.0.1", port=self.smtp.port, starttls=False, timeout_seconds=3),
        )
        values: dict[str, Any] = {
            "kafka": NotifyKafkaSettings(
                bootstrap=self.kafka,
                topic_alerts=self.topics.alerts,
                topic_alerts_deadletter=self.topics.deadletter,
                request_timeout_ms=10_000,
            ),
            "redis": NotifyRedisSettings(url=self.redis_url, prefix=self.prefix),
            "smtp": smtp,
            "webhook": WebhookSettings(
                url=self.hook.url, token=SecretStr(WEBHOOK_TOKEN), timeout_seconds=3
            ),
            "default_recipient": DEFAULT_RECIPIENT,
            "group_id": self.group,
            "create_topics": False,
            "session_timeout_ms": 6_000,
            "heartbeat_interval_ms": 1_000,
            "max_poll_interval_ms": 3_000,
            "poll_timeout_ms": 200,
            "retry_base_seconds": 0.01,
            "retry_max_seconds": 0.05,
            "retry_seed": 7,
            "lease_seconds": 4,
            "weekly_budget": None,
        }
        return NotifySettings(**(values | overrides))

    def environ(self, **extra: str) -> dict[str, str]:
        """
        The environment of a `python -m churnwatch.notify` subprocess with the same settings.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHURNWATCH_")}
        env |= {
            "CHURNWATCH_KAFKA_BOOTSTRAP": self.kafka,
            "CHURNWATCH_KAFKA_TOPIC_ALERTS": self.topics.alerts,
            "CHURNWATCH_KAFKA_TOPIC_ALERTS_DEADLETTER": self.topics.deadletter,
            "CHURNWATCH_KAFKA_REQUEST_TIMEOUT_MS": "10000",
            "CHURNWATCH_REDIS_URL": self.redis_url,
            "CHURNWATCH_REDIS_PREFIX": self.prefix,
            "CHURNWATCH_NOTIFY_SMTP_HOST": "127.0.0.1",
            "CHURNWATCH_NOTIFY_SMTP_PORT": str(self.smtp.port),
            "CHURNWATCH_NOTIFY_SMTP_STARTTLS": "false",
            "CHURNWATCH_NOTIFY_SMTP_TIMEOUT_SECONDS": "2",
            "CHURNWATCH_NOTIFY_WEBHOOK_URL": self.hook.url,
            "CHURNWATCH_NOTIFY_WEBHOOK_TOKEN": WEBHOOK_TOKEN,
            "CHURNWATCH_NOTIFY_WEBHOOK_TIMEOUT_SECONDS": "2",
            "CHURNWATCH_NOTIFY_DEFAULT_RECIPIENT": DEFAULT_RECIPIENT,
            "CHURNWATCH_NOTIFY_GROUP_ID": self.group,
            "CHURNWATCH_NOTIFY_CREATE_TOPICS": "false",
            "CHURNWATCH_NOTIFY_SESSION_TIMEOUT_MS": "3000",
            "CHURNWATCH_NOTIFY_HEARTBEAT_INTERVAL_MS": "500",
            "CHURNWATCH_NOTIFY_MAX_POLL_INTERVAL_MS": "3000",
            "CHURNWATCH_NOTIFY_POLL_TIMEOUT_MS": "200",
            "CHURNWATCH_NOTIFY_RETRY_BASE_SECONDS": "0.01",
            "CHURNWATCH_NOTIFY_LEASE_SECONDS": "2.5",
            "CHURNWATCH_NOTIFY_METRICS_PORT": "0",
            "CHURNWATCH_NOTIFY_LOG_LEVEL": "debug",
        }
        return env | extra


@pytest.fixture
def env(
    kafka_bootstrap: str,
    redis_url: str,
    redis_prefix: str,
    kafka_group_id: str,
    topics: Topics,
    smtp_server: SmtpServer,
    hook: Hook,
) -> Env:
    """
    The per-test environment: fresh topics, group, key prefix, SMTP and webhook servers.
    """
    return Env(kafka_bootstrap, redis_url, redis_prefix, kafka_group_id, topics, smtp_server, hook)


@dataclass
class Running:
    """
    An in-process consumer with the outcomes it reported and the sleeps it asked for.
    """

    consumer: AlertConsumer
    metrics: Metrics
    outcomes: list[Outcome]
    sleeps: list[float]

    def drain(self, until: Callable[[], bool]) -> None:
        """
        Polls until `until` holds, failing at the deadline.
        """
        deadline = time.monotonic() + DEADLINE_S
        while not until():
            if time.monotonic() > deadline:
                pytest.fail(f"not done within {DEADLINE_S}s; outcomes so far: {self.outcomes}")
            self.consumer.poll_once(self.outcomes.append)

    def count(self, action: str, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "churnwatch_notifications_total", {"action": action, "outcome": outcome}
        )
        return value or 0.0


@pytest.fixture
def run_consumer() -> Iterator[Callable[[NotifySettings], Running]]:
    """
    Starts in-process consumers; every one is closed after the test.
    """
    started: list[AlertConsumer] = []

    def start(settings: NotifySettings) -> Running:
        metrics = Metrics(CollectorRegistry())
        sleeps: list[float] = []

        def sleep(seconds: float) -> None:
            sleeps.append(seconds)
            time.sleep(seconds)

        consumer = AlertConsumer(settings, metrics, sleep=sleep, rng=random.Random(7))
        started.append(consumer)
        consumer.start()
        return Running(consumer, metrics, [], sleeps)

    try:
        yield start
    finally:
        for consumer in started:
            consumer.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[[dict[str, str], str], subprocess.Popen[bytes]]]:
    """
    Starts `python -m churnwatch.notify` subprocesses (stderr to a file); kills leftovers.
    """
    started: list[subprocess.Popen[bytes]] = []

    def start(environ: dict[str, str], name: str) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"{name}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "churnwatch.notify"],
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )
        log.close()
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)


def stop(process: subprocess.Popen[bytes]) -> None:
    """
    SIGTERM, then wait for a clean exit.
    """
    process.send_signal(signal.SIGTERM)
    assert 0 == process.wait(timeout=DEADLINE_S)


# Through the broker, in process -----------------------------------------------------------


def test_one_alert_gives_one_email_or_task_even_when_delivered_twice(
    env: Env, producer: KafkaProducer, run_consumer: Callable[[NotifySettings], Running]
) -> None:
    """
    Each alert published twice gives exactly one email or one task, and the copies count as
    duplicates.
    """
    mail = make_alert(1, action="email")
    task = make_alert(2, action="csm_task")
    for record in (mail, task, mail, task):
        publish(producer, env.topics.alerts, record, record.customer_id)
    running = run_consumer(env.settings())
    running.drain(lambda: len(running.outcomes) == 4)

    assert ["duplicate", "duplicate", "sent", "sent"] == sorted(running.outcomes)
    assert 1 == env.smtp.inbox.count()
    message = env.smtp.inbox.messages[0]
    assert f"<{mail.alert_id}@localhost>" == message["Message-ID"]
    assert DEFAULT_RECIPIENT == message["To"]
    assert "customer c000001" in message["Subject"]
    assert "28 of 100, down 34 points from 62" in plain_text(message)
    assert [task.alert_id] == list(env.hook.tasks())
    request = env.hook.requests[0]
    assert f"Bearer {WEBHOOK_TOKEN}" == request.headers["Authorization"]
    assert (task.alert_id, "c000002") == (request.body["task_id"], request.body["customer_id"])
    expected = {("email", "sent"): 1, ("csm_task", "sent"): 1}
    expected |= {("email", "duplicate"): 1, ("csm_task", "duplicate"): 1}
    assert expected == {key: running.count(*key) for key in expected}


def test_a_webhook_failing_twice_with_500_then_200_gives_one_task_after_retries(
    env: Env, producer: KafkaProducer, run_consumer: Callable[[NotifySettings], Running]
) -> None:
    """
    Two 500s then a 200 give one task, three requests with one Idempotency-Key, two retries.
    """
    env.hook.script += [(500, "oops"), (500, "oops"), (200, "{}")]
    task = make_alert(3, action="csm_task")
    publish(producer, env.topics.alerts, task, task.customer_id)
    running = run_consumer(env.settings())
    running.drain(lambda: len(running.outcomes) == 1)

    assert ["sent"] == running.outcomes
    assert [task.alert_id] * 3 == [r.headers["Idempotency-Key"] for r in env.hook.requests]
    assert [500, 500, 200] == [r.status for r in env.hook.requests]
    assert [task.alert_id] == list(env.hook.tasks())
    assert (2.0, 1.0) == (running.count("csm_task", "retried"), running.count("csm_task", "sent"))
    # Seeded jitter: the waits are the backoff's, 0.01 then 0.02 s cut by up to half.
    assert 2 == len(running.sleeps)
    assert 0.005 <= running.sleeps[0] <= 0.01
    assert 0.01 <= running.sleeps[1] <= 0.02


def test_a_webhook_answering_400_dead_letters_the_alert_and_the_consumer_goes_on(
    env: Env,
    producer: KafkaProducer,
    run_consumer: Callable[[NotifySettings], Running],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """
    A 400 puts the alert on the dead-letter topic with the reason, the source and the original
    bytes, never the token (even when the receiver echoes it), and the next alert is delivered.
    """
    caplog.set_level("DEBUG")
    env.hook.script.append((400, "ECHO"))
    task = make_alert(4, action="csm_task")
    mail = make_alert(4, action="email")
    sent = publish(producer, env.topics.alerts, task, task.customer_id)
    publish(producer, env.topics.alerts, mail, mail.customer_id)
    running = run_consumer(env.settings())
    running.drain(lambda: len(running.outcomes) == 2)

    assert ["dead_lettered", "sent"] == running.outcomes
    assert 1 == env.smtp.inbox.count()
    ((raw, letter),) = dead_letters(env.kafka, env.topics.deadletter, 1)
    expected = {
        "reason": "permanent_failure",
        "source": {"topic": env.topics.alerts, "partition": sent.partition, "offset": sent.offset},
        "stage": "notify",
        "action": "csm_task",
        "alert_id": task.alert_id,
        "attempts": 1,
    }
    assert expected == {k: letter[k] for k in expected}
    assert alert_to_json(task) == base64.b64decode(letter["original_b64"])
    assert "answered 400" in letter["message"]
    assert REDACTED in letter["message"]
    assert WEBHOOK_TOKEN.encode() not in raw
    assert WEBHOOK_TOKEN not in caplog.text
    for record in caplog.records:
        assert WEBHOOK_TOKEN not in repr(vars(record))
    expected_counts = {("csm_task", "failed"): 1, ("csm_task", "dead_lettered"): 1}
    assert expected_counts == {key: running.count(*key) for key in expected_counts}


def test_a_malformed_record_is_dead_lettered_and_the_consumer_goes_on(
    env: Env, producer: KafkaProducer, run_consumer: Callable[[NotifySettings], Running]
) -> None:
    """
    Records that are not alerts go to the dead-letter topic with their bytes; the next alert
    on the same partition is still emailed.
    """
    good = make_alert(5)
    bad = [b"not json at all", b'{"alert_id": "x", "action": "fax"}']
    for raw in bad:
        publish(producer, env.topics.alerts, raw, good.customer_id)
    publish(producer, env.topics.alerts, good, good.customer_id)
    running = run_consumer(env.settings())
    running.drain(lambda: len(running.outcomes) == 3)

    assert ["dead_lettered", "dead_lettered", "sent"] == running.outcomes
    assert 1 == env.smtp.inbox.count()
    letters = dead_letters(env.kafka, env.topics.deadletter, 2)
    assert bad == [base64.b64decode(letter["original_b64"]) for _, letter in letters]
    assert ["malformed_alert"] * 2 == [letter["reason"] for _, letter in letters]
    assert "action" in letters[1][1]["message"]
    assert 2.0 == running.count("unknown", "dead_lettered")


def test_smtp_4xx_is_retried_and_5xx_is_dead_lettered(
    env: Env, producer: KafkaProducer, run_consumer: Callable[[NotifySettings], Running]
) -> None:
    """
    A 451 reply is retried and the email arrives; a 550 reply dead-letters the alert at once.
    """
    env.smtp.inbox.replies["flaky@example.com"] = ["451 4.3.0 try again later"]
    env.smtp.inbox.replies["gone@example.com"] = ["550 5.1.1 no such mailbox"] * 5
    routes = (
        RecipientRoute(segment=("growth",), recipient="flaky@example.com"),
        RecipientRoute(segment=("starter",), recipient="gone@example.com"),
    )
    flaky = make_alert(6, segment="growth")
    gone = make_alert(6, segment="starter")
    for record in (flaky, gone):
        publish(producer, env.topics.alerts, record, record.customer_id)
    running = run_consumer(env.settings(routes=routes))
    running.drain(lambda: len(running.outcomes) == 2)

    assert ["sent", "dead_lettered"] == running.outcomes
    assert 1 == len(env.smtp.inbox.to("flaky@example.com"))
    ((_, letter),) = dead_letters(env.kafka, env.topics.deadletter, 1)
    assert ("permanent_failure", gone.alert_id) == (letter["reason"], letter["alert_id"])
    assert "550" in letter["message"]
    expected = {("email", "retried"): 1, ("email", "sent"): 1, ("email", "dead_lettered"): 1}
    assert expected == {key: running.count(*key) for key in expected}


# SMTP with STARTTLS and AUTH ---------------------------------------------------------------


def test_email_goes_over_starttls_with_login_and_a_wrong_password_is_permanent(
    tls_smtp_server: SmtpServer,
) -> None:
    """
    The sender upgrades with STARTTLS, logs in and delivers; a wrong password fails for good
    without the password in the error.
    """
    settings = SmtpSettings(
        host="127.0.0.1",
        port=tls_smtp_server.port,
        starttls=True,
        tls_ca_file=tls_smtp_server.cafile,
        username=SMTP_USER,
        password=SecretStr(SMTP_PASSWORD),
        timeout_seconds=5,
    )
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "cw@example.com", "a@example.com", "hi"
    message.set_content("hello")
    SmtpSender(settings, Redactor([SMTP_PASSWORD])).send(message)
    assert [(True, True)] == tls_smtp_server.inbox.sessions

    wrong = settings.model_copy(update={"password": SecretStr("not-the-password")})
    with pytest.raises(DeliveryError) as caught:
        SmtpSender(wrong, Redactor(["not-the-password"])).send(message)
    assert (False, True) == (caught.value.transient, "535" in caught.value.message)
    assert "not-the-password" not in caught.value.message


# Delivery state without the broker (fake clock) -------------------------------------------


@dataclass
class FakeClock:
    at: datetime
    slept: list[float] = field(default_factory=list)

    def __call__(self) -> datetime:
        return self.at

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.at += timedelta(seconds=seconds)


@dataclass
class ListSink:
    letters: list[DeadLetter] = field(default_factory=list)

    def publish(self, letter: DeadLetter) -> None:
        self.letters.append(letter)


def deliverer(
    settings: NotifySettings, client: redis.Redis, clock: FakeClock, sink: ListSink, owner: str
) -> Deliverer:
    """
    A Deliverer on real Redis, SMTP and HTTP, with a fake clock and a list for dead letters.
    """
    redactor = Redactor(settings.secrets())
    return Deliverer(
        settings=settings,
        store=DeliveryStore(
            client, prefix=settings.redis.prefix, lease=settings.lease, ttl=settings.delivery_ttl
        ),
        smtp=SmtpSender(settings.smtp, redactor),
        webhook=WebhookSender(settings.webhook, redactor),
        dead_letters=sink,
        metrics=Metrics(CollectorRegistry()),
        redactor=redactor,
        owner=owner,
        clock=clock,
        sleep=clock.sleep,
        rng=random.Random(7),
    )


def test_low_severity_and_over_budget_alerts_go_to_one_daily_digest_per_recipient(
    env: Env, redis_client: redis.Redis
) -> None:
    """
    Low-severity alerts and those beyond the weekly budget join the day's digest, which is sent
    once after the day ends; tasks ignore the budget.
    """
    clock, sink = FakeClock(AT), ListSink()
    settings = env.settings(weekly_budget=1)
    d = deliverer(settings, redis_client, clock, sink, "me")
    first = make_alert(7, severity="medium")
    over = make_alert(8, severity="medium", score=22.0)
    low = make_alert(9, severity="low")
    task = make_alert(10, severity="low", action="csm_task")
    outcomes = [d.handle(alert_to_json(a), Source("t", 0, n)) for n, a in enumerate([first, over])]
    outcomes += [d.handle(alert_to_json(a), Source("t", 0, 5)) for a in (low, task, over)]
    assert ["sent", "digested", "digested", "sent", "duplicate"] == outcomes
    assert 1 == env.smtp.inbox.count()
    assert 1 == len(env.hook.tasks())

    clock.at = datetime(2026, 1, 6, 23, 59, tzinfo=UTC)
    assert 0 == d.send_due_digests()
    clock.at = datetime(2026, 1, 7, 0, 1, tzinfo=UTC)
    assert 1 == d.send_due_digests()
    assert 0 == d.send_due_digests()

    digest = env.smtp.inbox.messages[-1]
    assert "[churnwatch] Daily digest for 2026-01-06: 2 alerts" == digest["Subject"]
    assert digest["Message-ID"].startswith("<digest-")
    text = plain_text(digest)
    assert (True, True) == (over.alert_id in text, low.alert_id in text)
    assert [] == list(redis_client.scan_iter(match=f"{env.prefix}:n:{{digest}}*"))
    assert [] == sink.letters


def test_a_claim_whose_owner_died_is_waited_out_then_taken_over(
    env: Env, redis_client: redis.Redis
) -> None:
    """
    An alert claimed by a consumer that died before sending is sent once its lease runs out.
    """
    clock, sink = FakeClock(AT), ListSink()
    settings = env.settings()
    alert = make_alert(11)
    store = DeliveryStore(redis_client, prefix=env.prefix, lease=settings.lease, ttl=timedelta(1))
    assert "new" == store.claim(alert.alert_id, action="email", owner="dead", now=AT).kind
    clock.at = AT + timedelta(seconds=1)

    d = deliverer(settings, redis_client, clock, sink, "me")
    assert "sent" == d.handle(alert_to_json(alert), Source("t", 0, 0))
    assert 1 == env.smtp.inbox.count()
    assert AT + settings.lease <= clock.at
    state = store.state_of(alert.alert_id)
    assert ("sent", "1", "me") == (state["state"], state["takeovers"], state["owner"])


def test_an_unconfirmed_send_is_dead_lettered_when_configured_so(
    env: Env, redis_client: redis.Redis
) -> None:
    """
    With unconfirmed=deadletter, an alert whose sender died after an attempt is dead-lettered as
    unconfirmed_delivery and not sent again.
    """
    clock, sink = FakeClock(AT), ListSink()
    settings = env.settings(unconfirmed="deadletter")
    alert = make_alert(12)
    store = DeliveryStore(redis_client, prefix=env.prefix, lease=settings.lease, ttl=timedelta(1))
    store.claim(alert.alert_id, action="email", owner="dead", now=AT)
    store.save_plan(alert.alert_id, Plan("email", DEFAULT_RECIPIENT))
    assert store.renew(alert.alert_id, owner="dead", now=AT)
    clock.at = AT + timedelta(minutes=5)

    d = deliverer(settings, redis_client, clock, sink, "me")
    assert "dead_lettered" == d.handle(alert_to_json(alert), Source("t", 1, 9, b"k"))
    assert 0 == env.smtp.inbox.count()
    assert ["unconfirmed_delivery"] == [letter.reason for letter in sink.letters]
    assert "dead_lettered" == store.state_of(alert.alert_id)["state"]


# Processes killed at controlled points ----------------------------------------------------


def test_a_consumer_killed_after_recording_sent_does_not_send_again_on_restart(
    env: Env,
    producer: KafkaProducer,
    redis_client: redis.Redis,
    spawn: Callable[[dict[str, str], str], subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    """
    kill -9 after 'sent' is recorded and before the commit: the restarted consumer gets the
    alert again, finds it sent, and sends no second email.
    """
    alert = make_alert(13)
    meta = publish(producer, env.topics.alerts, alert, alert.customer_id)
    tp = TopicPartition(env.topics.alerts, meta.partition)

    first = spawn(env.environ(CHURNWATCH_NOTIFY_TEST_EXIT_AFTER="record"), "first")
    assert -signal.SIGKILL == first.wait(timeout=DEADLINE_S)
    assert 1 == env.smtp.inbox.count()
    assert None is committed(env.kafka, env.group, tp)
    key = f"{env.prefix}:d:{{{alert.alert_id}}}"
    assert "sent" == redis_client.hget(key, "state")

    second = spawn(env.environ(), "second")
    wait_for(lambda: committed(env.kafka, env.group, tp) == meta.offset + 1)
    stop(second)
    assert 1 == env.smtp.inbox.count()
    assert "delivery.duplicate" in (tmp_path / "second.log").read_text()


def test_a_consumer_killed_after_sending_resends_once_with_the_same_message_id(
    env: Env,
    producer: KafkaProducer,
    redis_client: redis.Redis,
    spawn: Callable[[dict[str, str], str], subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    """
    kill -9 after sending and before recording: the restarted consumer takes the expired lease
    over and resends with the same Message-ID (the documented choice: never lose an alert).
    """
    alert = make_alert(14)
    meta = publish(producer, env.topics.alerts, alert, alert.customer_id)
    tp = TopicPartition(env.topics.alerts, meta.partition)
    key = f"{env.prefix}:d:{{{alert.alert_id}}}"

    first = spawn(env.environ(CHURNWATCH_NOTIFY_TEST_EXIT_AFTER="send"), "first")
    assert -signal.SIGKILL == first.wait(timeout=DEADLINE_S)
    assert 1 == env.smtp.inbox.count()
    assert ("sending", "1") == (redis_client.hget(key, "state"), redis_client.hget(key, "attempts"))

    second = spawn(env.environ(), "second")
    wait_for(lambda: committed(env.kafka, env.group, tp) == meta.offset + 1)
    stop(second)
    ids = [m["Message-ID"] for m in env.smtp.inbox.messages]
    assert [f"<{alert.alert_id}@localhost>"] * 2 == ids
    assert ("sent", "1") == (redis_client.hget(key, "state"), redis_client.hget(key, "takeovers"))
    assert "delivery.takeover" in (tmp_path / "second.log").read_text()


def test_secrets_never_reach_the_process_logs_or_the_dead_letters(
    env: Env,
    producer: KafkaProducer,
    tls_smtp_server: SmtpServer,
    spawn: Callable[[dict[str, str], str], subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    """
    With STARTTLS + AUTH and a webhook that echoes the token back in a 400, the debug log and
    the dead-letter record hold neither the SMTP password nor the token.
    """
    env.hook.script.append((400, "ECHO"))
    mail = make_alert(15)
    task = make_alert(16, action="csm_task")
    for record in (mail, task):
        publish(producer, env.topics.alerts, record, record.customer_id)
    environ = env.environ(
        CHURNWATCH_NOTIFY_SMTP_PORT=str(tls_smtp_server.port),
        CHURNWATCH_NOTIFY_SMTP_STARTTLS="true",
        CHURNWATCH_NOTIFY_SMTP_TLS_CA_FILE=str(tls_smtp_server.cafile),
        CHURNWATCH_NOTIFY_SMTP_USERNAME=SMTP_USER,
        CHURNWATCH_NOTIFY_SMTP_PASSWORD=SMTP_PASSWORD,
    )
    process = spawn(environ, "notify")
    wait_for(lambda: tls_smtp_server.inbox.count() == 1 and env.hook.count() == 1)
    ((raw, letter),) = dead_letters(env.kafka, env.topics.deadletter, 1)
    stop(process)

    assert [(True, True)] == tls_smtp_server.inbox.sessions
    assert "permanent_failure" == letter["reason"]
    log = (tmp_path / "notify.log").read_text()
    assert "delivery.dead_lettered" in log
    for secret in (SMTP_PASSWORD, WEBHOOK_TOKEN):
        assert (secret, False, False) == (secret, secret in log, secret.encode() in raw)


def test_the_send_digest_command_sends_the_digests_of_ended_days(
    env: Env, redis_client: redis.Redis
) -> None:
    """
    `python -m churnwatch.notify --send-digest` sends yesterday's digest and exits.
    """
    yesterday = datetime.now(UTC) - timedelta(days=1)
    d = deliverer(env.settings(), redis_client, FakeClock(yesterday), ListSink(), "me")
    low = make_alert(17, severity="low")
    assert "digested" == d.handle(alert_to_json(low), Source("t", 0, 0))

    done = subprocess.run(
        [sys.executable, "-m", "churnwatch.notify", "--send-digest"],
        env=env.environ(),
        capture_output=True,
        timeout=DEADLINE_S,
        cwd=REPO_ROOT,
        check=False,
    )
    assert (0, "digests sent: 1") == (done.returncode, done.stdout.decode().strip())
    ((message),) = env.smtp.inbox.messages
    assert message["Subject"].endswith(": 1 alert")
