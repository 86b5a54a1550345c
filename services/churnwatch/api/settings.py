"""
Settings of the at-risk API (`churnwatch api`), pydantic-settings: its own as
`CHURNWATCH_API_*` (`CHURNWATCH_API_PORT`), Redis from `CHURNWATCH_REDIS_*` (the store's
settings), the partition count from `CHURNWATCH_KAFKA_PARTITIONS` and the core's (the rules
file, the model epoch) from `CHURNWATCH_*`, as in every other process.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, SecretStr

from churnwatch.core.errors import ConfigError
from churnwatch.core.partitioning import DEFAULT_PARTITIONS
from churnwatch.metrics import DEFAULT_METRICS_PORTS
from churnwatch.settings import CoreSettings, is_loopback
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
    auth: Literal["tokens", "off"] = Field(
        validation_alias=_env("auth"),
        default="tokens",
        description="`tokens`: every /api/ route asks for a bearer token (the read or the "
        "write token); `off`: none, for a demo on a loopback address only.",
    )
    read_token: SecretStr | None = Field(
        validation_alias=_env("read_token"),
        default=None,
        description="The bearer token that may read the /api/ routes (never logged).",
    )
    write_token: SecretStr | None = Field(
        validation_alias=_env("write_token"),
        default=None,
        description="The bearer token that may read and give verdicts (never logged).",
    )
    redis: StoreSettings = Field(default_factory=StoreSettings)

    def check_auth(self) -> None:
        """
        Refuse to serve customers' data unguarded: tokens unless auth is `off`, and `off`
        only on a loopback host.

        Raises:
            ConfigError: the settings would serve /api/ to whoever reaches the port.
        """
        if self.auth == "off":
            if not is_loopback(self.host):
                msg = (
                    f"CHURNWATCH_API_AUTH=off serves customers' data to anyone who can reach "
                    f"the port: only for a loopback host (127.0.0.1, ::1, localhost), got "
                    f"CHURNWATCH_API_HOST={self.host!r}; set CHURNWATCH_API_READ_TOKEN and "
                    f"CHURNWATCH_API_WRITE_TOKEN instead"
                )
                raise ConfigError(msg)
            return
        tokens = [t.get_secret_value() for t in (self.read_token, self.write_token) if t]
        if not tokens:
            msg = (
                "the API needs its tokens: set CHURNWATCH_API_READ_TOKEN (reads) and "
                "CHURNWATCH_API_WRITE_TOKEN (reads and verdicts), or CHURNWATCH_API_AUTH=off "
                "for a demo on a loopback host"
            )
            raise ConfigError(msg)
        if any(not t.strip() for t in tokens) or len(set(tokens)) != len(tokens):
            msg = (
                "CHURNWATCH_API_READ_TOKEN and CHURNWATCH_API_WRITE_TOKEN: expected non-blank "
                "tokens, different from each other"
            )
            raise ConfigError(msg)
