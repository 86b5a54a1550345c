"""
Kafka settings for every churnwatch process that talks to the broker (env `CHURNWATCH_KAFKA_`).

Topic names are settings too, with an optional prefix so several deployments (or tests) can share a
cluster. `kafka_kwargs()` gives the connection keyword arguments of every kafka-python client.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from churnwatch.core.events import EVENT_TYPES, EventType
from churnwatch.core.partitioning import DEFAULT_PARTITIONS

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
Idempotence = Literal["auto", "on", "off"]

# Kafka's own rule for topic names (kafka.common.internals.Topic).
_TOPIC_NAME = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")
_REDACTED = "**********"


class _RedactedStr(str):
    """
    A password that kafka-python can use as a str but that prints as stars.

    KafkaAdminClient logs its configuration at DEBUG; this keeps the password out of that line.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        # Only repr: a dict of settings is logged through repr of its values, while
        # kafka-python's SASL code joins and encodes the str itself.
        return repr(_REDACTED)


@dataclass(frozen=True, slots=True)
class TopicNames:
    """
    The full (prefixed) name of every churnwatch topic.
    """

    ingest: Mapping[EventType, str]
    """Where producers publish each event type (the SDK routes by `type`)."""
    events: str
    """The ordered log of record the scoring workers consume."""
    deadletter: str
    alerts: str
    training: str
    alerts_deadletter: str

    def for_event(self, kind: EventType) -> str:
        """
        The ingest topic of an event type.
        """
        return self.ingest[kind]

    def ingest_topics(self) -> tuple[str, ...]:
        """
        The distinct ingest topics, in event-type order.
        """
        return tuple(dict.fromkeys(self.ingest[kind] for kind in EVENT_TYPES))

    def all(self) -> tuple[str, ...]:
        """
        Every topic churnwatch uses, each once: the ingest topics first.
        """
        rest = (self.events, self.deadletter, self.alerts, self.training, self.alerts_deadletter)
        return tuple(dict.fromkeys((*self.ingest_topics(), *rest)))


class KafkaSettings(BaseSettings):
    """
    How to reach the broker, how to produce, and the names and shape of the topics.
    """

    model_config = SettingsConfigDict(env_prefix="CHURNWATCH_KAFKA_", extra="ignore")

    bootstrap: str = Field(
        default="127.0.0.1:9092", description="host:port[,host:port...] of the brokers."
    )
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = Field(
        default=None, description="CA bundle (PEM) that signed the brokers' certificates."
    )
    client_id: str = "churnwatch"
    request_timeout_ms: int = Field(default=30_000, gt=0)

    partitions: int = Field(
        default=DEFAULT_PARTITIONS, ge=1, description="Partitions of every topic (P)."
    )
    replication_factor: int = Field(default=1, ge=1)

    linger_ms: int = Field(
        default=5, ge=0, description="How long the producer waits to fill a batch."
    )
    batch_size: int = Field(default=64 * 1024, gt=0, description="Producer batch size in bytes.")
    max_block_ms: int = Field(
        default=10_000,
        gt=0,
        description="How long send() may block for metadata (e.g. a topic that does not exist).",
    )
    delivery_timeout_ms: int = Field(
        default=120_000, gt=0, description="Upper bound on a record's retries before it fails."
    )
    idempotence: Idempotence = Field(
        default="auto",
        description="Idempotent producer: `auto` uses it when the broker grants a producer id.",
    )

    topic_prefix: str = Field(default="", description="Prepended to every topic name.")
    topic_login: str = "events.login"
    topic_purchase: str = "events.purchase"
    topic_ticket: str = "events.ticket"
    topic_return: str = "events.return"
    topic_account: str = Field(default="events.account", description="Cancellations.")
    topic_events: str = "churn.events"
    topic_deadletter: str = "churn.deadletter"
    topic_alerts: str = "churn.alerts"
    topic_training: str = "churn.training"
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
        names = self.topics()
        for name in (*names.ingest.values(), *names.all()):
            if not _TOPIC_NAME.match(name):
                msg = (
                    f"topic name must be 1-249 characters of a-z A-Z 0-9 . _ -, got {name!r} "
                    f"(prefix {self.topic_prefix!r})"
                )
                raise ValueError(msg)
        outputs = names.all()[len(names.ingest_topics()) :]
        if len(outputs) != 5:
            msg = (
                "the events, deadletter, alerts, training and alerts_deadletter topics must be "
                f"distinct from each other and from the ingest topics, got {names}"
            )
            raise ValueError(msg)
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and self.sasl_mechanism is None:
            msg = f"security_protocol {self.security_protocol} needs sasl_mechanism, got none"
            raise ValueError(msg)
        if not sasl and self.sasl_mechanism is not None:
            msg = (
                f"sasl_mechanism {self.sasl_mechanism} needs security_protocol SASL_PLAINTEXT "
                f"or SASL_SSL, got {self.security_protocol}"
            )
            raise ValueError(msg)
        if sasl and (self.sasl_username is None or self.sasl_password is None):
            msg = f"sasl_mechanism {self.sasl_mechanism} needs sasl_username and sasl_password"
            raise ValueError(msg)
        return self

    def topics(self) -> TopicNames:
        """
        Every topic name, with the prefix applied.
        """
        p = self.topic_prefix
        ingest: dict[EventType, str] = {
            "login": p + self.topic_login,
            "purchase": p + self.topic_purchase,
            "ticket": p + self.topic_ticket,
            "return": p + self.topic_return,
            "cancel": p + self.topic_account,
        }
        return TopicNames(
            ingest=MappingProxyType(ingest),
            events=p + self.topic_events,
            deadletter=p + self.topic_deadletter,
            alerts=p + self.topic_alerts,
            training=p + self.topic_training,
            alerts_deadletter=p + self.topic_alerts_deadletter,
        )

    def bootstrap_servers(self) -> list[str]:
        return [server.strip() for server in self.bootstrap.split(",")]

    def kafka_kwargs(self) -> dict[str, Any]:
        """
        The connection keyword arguments every kafka-python client (producer, consumer, admin,
        KafkaClient) takes. The password is a str that prints as stars, so kafka-python's own
        DEBUG line with its configuration does not show it.
        """
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers(),
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
                secret = self.sasl_password.get_secret_value()
                kwargs["sasl_plain_password"] = _RedactedStr(secret)
        return kwargs

    def describe(self) -> dict[str, object]:
        """
        What to log about the connection: no secret in it.
        """
        return {
            "bootstrap": self.bootstrap,
            "security_protocol": self.security_protocol,
            "sasl_mechanism": self.sasl_mechanism,
            "sasl_username": self.sasl_username,
            "client_id": self.client_id,
            "topic_prefix": self.topic_prefix,
            "partitions": self.partitions,
        }
