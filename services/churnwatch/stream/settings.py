"""
Settings of the streaming processes (pydantic-settings, env prefix `CHURNWATCH_`).

`WorkerSettings` (`churnwatch worker`: the ingest and scoring agents) and `LearnerSettings`
(`churnwatch learner`) embed the core's settings (they subclass `CoreSettings`), the broker's
(`kafka`, env `CHURNWATCH_KAFKA_*`) and Redis's (`redis`, env `CHURNWATCH_REDIS_*`), plus the
faust consumer's timeouts. The partition count of every topic is `kafka.partitions`
(`CHURNWATCH_KAFKA_PARTITIONS`); the core's own `partitions` is for the replay, which mirrors it.

Tansu (the local broker) holds every JoinGroup for the member's rebalance timeout, so the
defaults are short; against Apache Kafka they may be raised freely.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, model_validator

from churnwatch.metrics import DEFAULT_METRICS_PORTS
from churnwatch.sdk.settings import KafkaSettings
from churnwatch.settings import CoreSettings
from churnwatch.store.settings import StoreSettings

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["console", "json"]


class StreamSettings(CoreSettings):
    """What every faust process of churnwatch needs."""

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    redis: StoreSettings = Field(default_factory=StoreSettings)

    broker_session_timeout: float = Field(
        default=10.0, gt=0, description="Seconds without heartbeats before the group drops us."
    )
    broker_rebalance_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds the broker waits for members to rejoin (Tansu waits this long "
        "on every JoinGroup).",
    )
    broker_heartbeat_interval: float = Field(default=1.0, gt=0)
    store_retry_max_seconds: float = Field(
        default=5.0,
        gt=0,
        description="While Redis does not answer, calls are retried after 0.1 s, then twice as "
        "long each time, up to this; nothing is committed meanwhile.",
    )
    broker_commit_interval: float = Field(
        default=2.8, gt=0, description="Seconds between commits of the acknowledged offsets."
    )
    deadletter_max_original_bytes: int = Field(
        default=256 * 1024,
        ge=0,
        description="Original bytes kept in a dead-letter record; longer ones are cut (the "
        "record says so).",
    )
    batch_max_records: int = Field(default=500, ge=1, description="Records per batch at most.")
    batch_within_seconds: float = Field(
        default=0.2, gt=0, description="A batch is handled after this long even if not full."
    )
    fetch_max_wait_ms: int = Field(
        default=100,
        ge=0,
        description="How long a fetch may wait at the broker for records; the latency of "
        "every hop when a topic is quiet.",
    )
    stream_buffer_maxsize: int = Field(
        default=4096,
        ge=1,
        description="Records faust buffers per stream; at 80% it stops fetching the partition.",
    )
    consumer_max_fetch_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="Bytes fetched per partition per request: small, so a backlog arrives "
        "interleaved across partitions (the ingest merge buffers less, no stream starves).",
    )
    broker_max_poll_records: int = Field(
        default=500,
        ge=1,
        description="Records per fetch handed to faust at most; keep it under a fifth of "
        "stream_buffer_maxsize, or a full stream blocks delivery to every other stream.",
    )
    metrics_host: str = Field(default="127.0.0.1", description="Address of /metrics.")
    log_level: LogLevel = "info"
    log_format: LogFormat = "console"
    data_dir: Path | None = Field(
        default=None, description="faust's data directory; a fresh temporary one when unset."
    )

    @model_validator(mode="after")
    def _check_timeouts(self) -> Self:
        if self.broker_heartbeat_interval >= self.broker_session_timeout:
            msg = (
                f"broker_heartbeat_interval must be below broker_session_timeout "
                f"({self.broker_session_timeout}s), got {self.broker_heartbeat_interval}s"
            )
            raise ValueError(msg)
        return self

    @property
    def partitions_count(self) -> int:
        """P: the partition count of every topic."""
        return self.kafka.partitions

    @property
    def request_timeout(self) -> float:
        """The broker request timeout in seconds; faust needs it above the session timeout."""
        return max(self.kafka.request_timeout_ms / 1000.0, self.broker_session_timeout + 5.0)


class WorkerSettings(StreamSettings):
    """`churnwatch worker`: one process of the consumer group running ingest and scoring."""

    group_id: str = Field(default="churnwatch-worker", description="The consumer group.")
    metrics_port: int = Field(default=DEFAULT_METRICS_PORTS["worker"], ge=0, le=65535)
    sweep_interval_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How often idle partitions are swept to their watermark (and the "
        "watermark record is published again).",
    )
    model_wait_seconds: float = Field(
        default=60.0,
        ge=0,
        description="How long a scorer waits for the checkpoint it should use before it falls "
        "back to the newest earlier one (counted in churnwatch_model_fallback_total; the "
        "scores then differ from the replay's). Keep it above a takeover (the session "
        "timeout plus a rebalance): a checkpoint waits for every partition's watermark, and "
        "a partition moving to another worker sends none meanwhile.",
    )
    model_poll_seconds: float = Field(default=0.05, gt=0)
    state_cache_customers: int = Field(
        default=5000,
        ge=0,
        description="Customer states each owned partition keeps in memory between batches, "
        "as written to Redis (least recently used out first; 0: none). A batch reads only the "
        "others from Redis; after an assignment or a Redis outage all are read again.",
    )
    ingest_idle_seconds: float = Field(
        default=10.0,
        ge=0,
        description="The ingest merge waits for an ingest topic that has not caught up "
        "(records behind its high watermark not delivered yet) as long as it delivers "
        "something at least this often; then it forwards the others' events up to the "
        "stalled topic's last event time plus the allowed lateness (so that the stalled "
        "topic's next events are not too late for the scorer), and waits for the rest.",
    )
    ingest_stall_seconds: float = Field(
        default=300.0,
        ge=0,
        description="After this long without a delivery from an ingest topic that has not "
        "caught up, the merge forwards the other topics' events without waiting for it at "
        "all (a stalled topic delays, never stops, the others; its events may then be "
        "dead-lettered too_late by the scorer).",
    )

    @property
    def model_epoch(self) -> timedelta:
        return timedelta(hours=self.model_epoch_hours)


class LearnerSettings(StreamSettings):
    """`churnwatch learner`: the one process that learns the model from churn.training."""

    group_id: str = Field(
        default="churnwatch-learner",
        description="Prefix of the learner's consumer group; each start reads churn.training "
        "from the beginning under a fresh group and rebuilds from the latest checkpoint.",
    )
    metrics_port: int = Field(default=DEFAULT_METRICS_PORTS["learner"], ge=0, le=65535)
    batch_within_seconds: float = Field(default=0.05, gt=0)
    quality_window: int = Field(
        default=5000, ge=1, description="Examples in the progressive-validation window."
    )
