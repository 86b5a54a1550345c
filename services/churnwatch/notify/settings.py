"""
Settings of the alert consumers (`churnwatch notify`), pydantic-settings.

`NotifySettings` (env `CHURNWATCH_NOTIFY_*`) embeds four groups, each read from its own
prefix so that every process of churnwatch shares the broker and Redis variables:

| group    | env prefix                     | e.g.                                  |
| -------- | ------------------------------ | ------------------------------------- |
| kafka    | `CHURNWATCH_KAFKA_`            | `CHURNWATCH_KAFKA_BOOTSTRAP`          |
| redis    | `CHURNWATCH_REDIS_`            | `CHURNWATCH_REDIS_URL`                |
| smtp     | `CHURNWATCH_NOTIFY_SMTP_`      | `CHURNWATCH_NOTIFY_SMTP_PASSWORD`     |
| webhook  | `CHURNWATCH_NOTIFY_WEBHOOK_`   | `CHURNWATCH_NOTIFY_WEBHOOK_TOKEN`     |

Lists and mappings (`CHURNWATCH_NOTIFY_ROUTES`) are JSON. Every secret is a `SecretStr`.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from churnwatch.core.alerts import AlertSeverity
from churnwatch.core.partitioning import DEFAULT_PARTITIONS
from churnwatch.metrics import DEFAULT_METRICS_PORTS
from churnwatch.settings import is_loopback

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["console", "json"]
Unconfirmed = Literal["resend", "deadletter"]
ExitPoint = Literal["send", "record"]


class _RedactedStr(str):
    """A password kafka-python uses as a str, whose repr (its DEBUG config line) is stars."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr("**********")


class NotifyKafkaSettings(BaseSettings):
    """The broker and the two topics of the alert consumers (same env names as the SDK's)."""

    model_config = SettingsConfigDict(env_prefix="CHURNWATCH_KAFKA_", extra="ignore")

    bootstrap: str = Field(default="127.0.0.1:9092", description="host:port[,host:port...].")
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    client_id: str = "churnwatch-notify"
    request_timeout_ms: int = Field(default=30_000, gt=0)
    partitions: int = Field(
        default=DEFAULT_PARTITIONS, ge=1, description="Partitions when a topic is created."
    )
    replication_factor: int = Field(default=1, ge=1)
    topic_prefix: str = ""
    topic_alerts: str = "churn.alerts"
    topic_alerts_deadletter: str = "churn.alerts.deadletter"

    @field_validator("bootstrap")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                msg = f"expected host:port[,host:port...], got {value!r}"
                raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.alerts_topic == self.deadletter_topic:
            msg = f"the alerts and dead-letter topics must differ, both are {self.alerts_topic!r}"
            raise ValueError(msg)
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and (self.sasl_mechanism is None or self.sasl_username is None):
            msg = f"security_protocol {self.security_protocol} needs sasl_mechanism and username"
            raise ValueError(msg)
        return self

    @property
    def alerts_topic(self) -> str:
        return self.topic_prefix + self.topic_alerts

    @property
    def deadletter_topic(self) -> str:
        return self.topic_prefix + self.topic_alerts_deadletter

    def kafka_kwargs(self) -> dict[str, Any]:
        """The connection keyword arguments of every kafka-python client."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in self.bootstrap.split(",")],
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
        }
        if self.ssl_cafile is not None:
            kwargs["ssl_cafile"] = str(self.ssl_cafile)
        if self.sasl_mechanism is not None:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            if self.sasl_password is not None:
                kwargs["sasl_plain_password"] = _RedactedStr(self.sasl_password.get_secret_value())
        return kwargs


class NotifyRedisSettings(BaseSettings):
    """Where the delivery state lives (same env names as the store's, `CHURNWATCH_REDIS_*`)."""

    model_config = SettingsConfigDict(env_prefix="CHURNWATCH_REDIS_", extra="ignore")

    # repr=False: a URL may carry a password.
    url: str = Field(default="redis://127.0.0.1:6379/0", repr=False)
    cluster: bool = Field(default=False, description="Use Redis Cluster (every key is tagged).")
    username: str | None = None
    password: SecretStr | None = Field(default=None, description="Overrides the URL's password.")
    prefix: str = Field(default="churnwatch", description="Prefix of every key.")
    socket_timeout: float = Field(default=5.0, gt=0)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in ("redis", "rediss", "unix"):
            msg = f"expected a redis://, rediss:// or unix:// URL, got scheme {scheme!r}"
            raise ValueError(msg)
        return value

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not value or any(c in value for c in "{} \t\r\n"):
            msg = f"expected a non-empty prefix without braces or spaces, got {value!r}"
            raise ValueError(msg)
        return value


class SmtpSettings(BaseSettings):
    """The SMTP relay for alert and digest emails (`CHURNWATCH_NOTIFY_SMTP_*`)."""

    model_config = SettingsConfigDict(env_prefix="CHURNWATCH_NOTIFY_SMTP_", extra="ignore")

    host: str | None = Field(default=None, description="Unset: email alerts are dead-lettered.")
    port: int = Field(default=587, ge=1, le=65535)
    starttls: bool = Field(default=True, description="Upgrade with STARTTLS before anything.")
    tls_ca_file: Path | None = Field(
        default=None, description="CA bundle (PEM) to trust instead of the system's."
    )
    username: str | None = None
    password: SecretStr | None = None
    allow_plaintext_login: bool = Field(
        default=False, description="Allow LOGIN without STARTTLS to a non-loopback host."
    )
    sender: str = Field(default="churnwatch@localhost", description="The From address.")
    timeout_seconds: float = Field(default=10.0, gt=0, description="Per socket operation.")

    @model_validator(mode="after")
    def _check(self) -> Self:
        if (self.username is None) != (self.password is None):
            msg = "smtp username and password go together, got only one of them"
            raise ValueError(msg)
        if (
            self.username is not None
            and not self.starttls
            and not self.allow_plaintext_login
            and not is_loopback(self.host or "")
        ):
            msg = (
                f"smtp login to {self.host} would send the password in clear: expected "
                "starttls=true (or allow_plaintext_login=true), got starttls=false"
            )
            raise ValueError(msg)
        return self


class WebhookSettings(BaseSettings):
    """The CSM task webhook (`CHURNWATCH_NOTIFY_WEBHOOK_*`)."""

    model_config = SettingsConfigDict(env_prefix="CHURNWATCH_NOTIFY_WEBHOOK_", extra="ignore")

    url: str | None = Field(default=None, description="Unset: csm_task alerts are dead-lettered.")
    auth_header: str = Field(default="Authorization", description="The header for the token.")
    auth_scheme: str = Field(
        default="Bearer", description="Put before the token (`Bearer t`); empty for the raw token."
    )
    token: SecretStr | None = None
    tls_ca_file: Path | None = None
    timeout_seconds: float = Field(default=10.0, gt=0, description="Connect and read timeout.")

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("http", "https"):
            msg = f"expected an http:// or https:// URL, got {value!r}"
            raise ValueError(msg)
        return value

    def auth_value(self) -> str | None:
        """The auth header's value, or None without a token."""
        if self.token is None:
            return None
        token = self.token.get_secret_value()
        return f"{self.auth_scheme} {token}" if self.auth_scheme else token


class RecipientRoute(BaseModel):
    """
    Who receives an alert: the first route whose every given condition matches wins.
    e.g. `{"segment": ["enterprise"], "severity": ["high"], "recipient": "vip@example.com"}`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    segment: tuple[str, ...] | None = None
    severity: tuple[AlertSeverity, ...] | None = None
    rule: tuple[str, ...] | None = None
    recipient: str = Field(min_length=3, pattern=r"^[^@\s]+@[^@\s]+$")


class NotifySettings(BaseSettings):
    """`churnwatch notify`: the consumer group that turns alerts into emails and CSM tasks."""

    model_config = SettingsConfigDict(
        env_prefix="CHURNWATCH_NOTIFY_", env_nested_delimiter="__", extra="ignore"
    )

    kafka: NotifyKafkaSettings = Field(default_factory=NotifyKafkaSettings)
    redis: NotifyRedisSettings = Field(default_factory=NotifyRedisSettings)
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    webhook: WebhookSettings = Field(default_factory=WebhookSettings)

    group_id: str = Field(default="churnwatch-notify", description="The one consumer group.")
    create_topics: bool = Field(default=True, description="Create missing topics at start.")
    session_timeout_ms: int = Field(default=10_000, gt=0)
    heartbeat_interval_ms: int = Field(default=1_000, gt=0)
    max_poll_interval_ms: int = Field(
        default=60_000,
        gt=0,
        description="Longest time between polls before the group drops us; a rebalance after a "
        "crash also waits this long for the dead member. Keep it above max_poll_records x the "
        "longest delivery (attempts x timeout + backoff); beyond it the lease still dedupes.",
    )
    max_poll_records: int = Field(
        default=1,
        ge=1,
        description="Records per poll; one keeps max_poll_interval_ms a bound on one delivery "
        "(kafka-python still fetches in batches).",
    )
    poll_timeout_ms: int = Field(default=500, gt=0)
    fetch_max_wait_ms: int = Field(default=100, ge=0)

    routes: tuple[RecipientRoute, ...] = Field(
        default=(), description="Recipient routing (JSON list), first match wins."
    )
    default_recipient: str | None = Field(
        default=None, description="Recipient when no route matches; required with SMTP."
    )
    digest_severities: tuple[AlertSeverity, ...] = Field(
        default=("low",), description="Email alerts of these severities go to the daily digest."
    )
    weekly_budget: int | None = Field(
        default=25,
        ge=0,
        description="Alert emails per recipient per ISO week (UTC); beyond it alerts go to the "
        "digest. Unset: no budget.",
    )
    digest_check_seconds: float = Field(
        default=300.0, gt=0, description="How often the consumer sends digests of ended days."
    )

    lease_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How long a 'sending' claim holds off other consumers; renewed before each "
        "attempt, so it must exceed one attempt's timeout.",
    )
    unconfirmed: Unconfirmed = Field(
        default="resend",
        description="An alert found 'sending' with an expired lease (its sender died between "
        "sending and recording): resend with the same Message-ID / Idempotency-Key, or "
        "dead-letter it as unconfirmed_delivery for a person to check.",
    )
    delivery_ttl_days: float = Field(default=30.0, gt=0, description="How long state is kept.")
    retry_attempts: int = Field(default=5, ge=1, description="Attempts per delivery in all.")
    retry_base_seconds: float = Field(default=0.5, gt=0, description="First backoff.")
    retry_max_seconds: float = Field(default=30.0, gt=0, description="Largest backoff.")
    retry_jitter: float = Field(
        default=0.5, ge=0, le=1, description="Each backoff is cut by up to this share, at random."
    )
    retry_seed: int | None = Field(default=None, description="Seed of the jitter (tests).")
    deadletter_max_original_bytes: int = Field(default=256 * 1024, ge=0)
    message_id_domain: str | None = Field(
        default=None, description="Domain of Message-IDs; the sender's domain when unset."
    )

    metrics_port: int = Field(default=DEFAULT_METRICS_PORTS["notify"], ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    log_level: LogLevel = "info"
    log_format: LogFormat = "console"

    test_exit_after: ExitPoint | None = Field(
        default=None,
        description="TESTS ONLY: SIGKILL the process right after an email or task was sent "
        "('send') or right after 'sent' was recorded ('record'), before the offset commit.",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.smtp.host is not None and self.default_recipient is None:
            msg = "default_recipient is required when smtp.host is set, got none"
            raise ValueError(msg)
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            msg = (
                f"heartbeat_interval_ms must be below session_timeout_ms "
                f"({self.session_timeout_ms}), got {self.heartbeat_interval_ms}"
            )
            raise ValueError(msg)
        slowest = max(self.smtp.timeout_seconds, self.webhook.timeout_seconds)
        if self.lease_seconds <= slowest:
            msg = (
                f"lease_seconds must exceed the send timeouts ({slowest}s), "
                f"got {self.lease_seconds}"
            )
            raise ValueError(msg)
        return self

    @property
    def lease(self) -> timedelta:
        return timedelta(seconds=self.lease_seconds)

    @property
    def delivery_ttl(self) -> timedelta:
        return timedelta(days=self.delivery_ttl_days)

    def secrets(self) -> tuple[str, ...]:
        """Every secret value, to scrub from anything that is logged or dead-lettered."""
        values = [
            self.smtp.password,
            self.webhook.token,
            self.redis.password,
            self.kafka.sasl_password,
        ]
        found = [v.get_secret_value() for v in values if v is not None]
        found.append(urlsplit(self.redis.url).password or "")
        return tuple(sorted({v for v in found if v}, key=len, reverse=True))
