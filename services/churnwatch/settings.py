"""
Settings, read from the environment with the `CHURNWATCH_` prefix (pydantic-settings).

Each service has one settings class, built once in its `main()` and passed down; the core
never sees a settings object, only the frozen values they build (`to_engine_config`).
"""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from churnwatch.core.engine import EngineConfig, Policy
from churnwatch.core.model import ModelConfig
from churnwatch.core.partitioning import DEFAULT_PARTITIONS
from churnwatch.core.rules import RulesFile, default_rules, load_rules


class CoreSettings(BaseSettings):
    """What every process that runs the core needs: the rules and the engine's knobs."""

    model_config = SettingsConfigDict(
        env_prefix="CHURNWATCH_", env_nested_delimiter="__", extra="ignore"
    )

    rules_file: Path | None = Field(
        default=None, description="YAML rules file; the packaged default when unset."
    )
    horizon_days: float = Field(
        default=30.0,
        gt=0,
        description=(
            "Label horizon H in days: the least the learned horizon can be, or H itself with "
            "learn_horizon false."
        ),
    )
    learn_horizon: bool = Field(
        default=True,
        description="Learn H from the gaps between activities (their 90th percentile).",
    )
    lateness_seconds: float = Field(default=3600.0, ge=0, description="Allowed lateness.")
    max_future_seconds: float = Field(
        default=7 * 86400.0, gt=0, description="Reject events this far past the latest event time."
    )
    max_event_bytes: int = Field(default=64 * 1024, gt=0, description="Largest accepted payload.")
    snapshot_every_days: float = Field(default=7.0, gt=0)
    model_epoch_hours: float = Field(default=24.0, gt=0)
    model_seed: int = 42
    partitions: int = Field(
        default=DEFAULT_PARTITIONS,
        ge=1,
        validation_alias=AliasChoices(
            "CHURNWATCH_KAFKA_PARTITIONS", "CHURNWATCH_PARTITIONS", "partitions"
        ),
        description="Partitions of every topic, the workers' setting: a replay mirrors them, "
        "because the watermarks, and so the result, are per partition "
        "(CHURNWATCH_PARTITIONS is an older name of the same setting).",
    )

    def to_engine_config(self) -> EngineConfig:
        return EngineConfig(
            horizon=timedelta(days=self.horizon_days),
            learn_horizon=self.learn_horizon,
            lateness=timedelta(seconds=self.lateness_seconds),
            max_future=timedelta(seconds=self.max_future_seconds),
            max_event_bytes=self.max_event_bytes,
            snapshot_every=timedelta(days=self.snapshot_every_days),
            model_epoch=timedelta(hours=self.model_epoch_hours),
            model=ModelConfig(seed=self.model_seed),
        )

    def load_rules(self) -> RulesFile:
        return default_rules() if self.rules_file is None else load_rules(self.rules_file)

    def to_policy(self) -> Policy:
        return Policy.build(self.load_rules(), self.to_engine_config())


def is_loopback(host: str) -> bool:
    """Whether `host` names a loopback address (127.0.0.0/8, ::1 or localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
