"""
Settings of the at-risk API (`churnwatch api`), pydantic-settings: its own as
`CHURNWATCH_API_*` (`CHURNWATCH_API_PORT`), Redis from `CHURNWATCH_REDIS_*` (the store's
settings), the partition count from `CHURNWATCH_KAFKA_PARTITIONS` and the core's (the rules
file, the model epoch) from `CHURNWATCH_*`, as in every other process.
"""

from __future__ import annotations

from pydantic import AliasChoices, Field

from churnwatch.core.partitioning import DEFAULT_PARTITIONS
from churnwatch.metrics import DEFAULT_METRICS_PORTS
from churnwatch.settings import CoreSettings
from churnwatch.store.settings import StoreSettings


def _env(name: str) -> AliasChoices:
    """`CHURNWATCH_API_<NAME>` in the environment, `name` in code."""
    return AliasChoices(f"CHURNWATCH_API_{name.upper()}", name)


class ApiSettings(CoreSettings):
    """Where the API listens and how much it hands out per request."""

    host: str = Field(
        validation_alias=_env("host"), default="127.0.0.1", description="Address to listen on."
    )
    port: int = Field(
        validation_alias=_env("port"),
        default=DEFAULT_METRICS_PORTS["api"],
        ge=0,
        le=65535,
        description="Port of the API, the web page and /metrics (0: any free port).",
    )
    topic_partitions: int = Field(
        default=DEFAULT_PARTITIONS,
        ge=1,
        validation_alias=AliasChoices("CHURNWATCH_KAFKA_PARTITIONS", "topic_partitions"),
        description="Partitions of churn.events: the at-risk list merges one order per partition.",
    )
    default_limit: int = Field(
        validation_alias=_env("default_limit"),
        default=50,
        ge=1,
        description="Page size when none is asked.",
    )
    max_limit: int = Field(
        validation_alias=_env("max_limit"),
        default=500,
        ge=1,
        description="Largest page size accepted.",
    )
    history_points: int = Field(
        validation_alias=_env("history_points"),
        default=120,
        ge=1,
        description="Scorings in a customer's chart.",
    )
    overview_cache_seconds: float = Field(
        validation_alias=_env("overview_cache_seconds"),
        default=10.0,
        ge=0.0,
        description="How long the overview (a read of every customer) is served from memory "
        "before it is computed again (0: every request).",
    )
    redis: StoreSettings = Field(default_factory=StoreSettings)
