"""
Settings of the at-risk API (`churnwatch api`), pydantic-settings, env prefix `CHURNWATCH_API_`.

Redis comes from `CHURNWATCH_REDIS_*` (the store's settings) and the partition count from
`CHURNWATCH_KAFKA_PARTITIONS`, as in every other process; the rules file and the model epoch
from the core's `CHURNWATCH_*` settings.
"""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from churnwatch.metrics import DEFAULT_METRICS_PORTS
from churnwatch.settings import CoreSettings
from churnwatch.store.settings import StoreSettings


class ApiSettings(CoreSettings):
    """Where the API listens and how much it hands out per request."""

    model_config = SettingsConfigDict(env_prefix="CHURNWATCH_API_", extra="ignore")

    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(
        default=DEFAULT_METRICS_PORTS["api"],
        ge=0,
        le=65535,
        description="Port of the API, the web page and /metrics (0: any free port).",
    )
    topic_partitions: int = Field(
        default=6,
        ge=1,
        validation_alias=AliasChoices("CHURNWATCH_KAFKA_PARTITIONS", "topic_partitions"),
        description="Partitions of churn.events: the at-risk list merges one order per partition.",
    )
    default_limit: int = Field(default=50, ge=1, description="Page size when none is asked.")
    max_limit: int = Field(default=500, ge=1, description="Largest page size accepted.")
    history_points: int = Field(default=500, ge=1, description="Scorings in a customer's chart.")
    redis: StoreSettings = Field(default_factory=StoreSettings)
