"""
Settings of the Redis store (pydantic-settings, env prefix `CHURNWATCH_REDIS_`).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class StoreSettings(BaseSettings):
    """Where Redis is and how the store talks to it; e.g. `CHURNWATCH_REDIS_URL`."""

    model_config = SettingsConfigDict(env_prefix="CHURNWATCH_REDIS_", extra="ignore")

    # repr=False: a URL may carry a password, and settings objects end up in logs.
    url: str = Field(
        default="redis://127.0.0.1:6379/0",
        repr=False,
        description="redis:// or rediss:// URL; in cluster mode, one startup node.",
    )
    cluster: bool = Field(default=False, description="Use Redis Cluster (RedisCluster).")
    cluster_nodes: list[str] = Field(
        default_factory=list,
        description="Cluster startup nodes as host:port; the URL's host when empty.",
    )
    password: SecretStr | None = Field(
        default=None, description="Overrides the URL's password when set. Never logged."
    )
    username: str | None = Field(default=None, description="Overrides the URL's user (ACL).")
    tls: bool = Field(default=False, description="TLS (also implied by a rediss:// URL).")
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    prefix: str = Field(default="churnwatch", description="Prefix of every key.")
    socket_timeout: float = Field(default=5.0, gt=0, description="Seconds per socket op.")
    wait_aof: bool = Field(
        default=True,
        description="WAITAOF 1 0 after each batch write when the server supports it.",
    )
    wait_aof_timeout: float = Field(
        default=2.0,
        gt=0,
        description="Seconds WAITAOF may block; must stay below socket_timeout.",
    )
    checkpoints_kept: int = Field(default=10, ge=1, description="Model checkpoints kept.")
    history_kept: int = Field(
        default=120,
        ge=1,
        description="Scorings kept per customer for its score history (up to 128 stay in "
        "Redis's compact encoding, about 40 bytes a point).",
    )
    alerts_kept: int = Field(
        default=100, ge=1, description="Alerts kept per customer for its alert history."
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in ("redis", "rediss", "unix"):
            msg = f"url: expected a redis://, rediss:// or unix:// URL, got scheme {scheme!r}"
            raise ValueError(msg)
        return value

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        # A brace in the prefix would become the keys' hash tag and put every key in one slot.
        if not value or any(c in value for c in "{} \t\r\n"):
            msg = f"prefix: expected a non-empty string without braces or spaces, got {value!r}"
            raise ValueError(msg)
        return value

    @field_validator("cluster_nodes")
    @classmethod
    def _check_nodes(cls, value: list[str]) -> list[str]:
        for node in value:
            host, sep, port = node.rpartition(":")
            if not sep or not host or not port.isdigit():
                msg = f"cluster_nodes: expected host:port entries, got {node!r}"
                raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _check_timeouts(self) -> StoreSettings:
        if self.wait_aof and self.wait_aof_timeout >= self.socket_timeout:
            msg = (
                f"wait_aof_timeout must be below socket_timeout ({self.socket_timeout}s), "
                f"got {self.wait_aof_timeout}s"
            )
            raise ValueError(msg)
        return self

    @property
    def address(self) -> str:
        """Where the store connects, for logs and errors: host:port list, never credentials."""
        if self.cluster and self.cluster_nodes:
            return ",".join(self.cluster_nodes)
        parts = urlsplit(self.url)
        if parts.scheme == "unix":
            return f"unix:{parts.path}"
        host = parts.hostname or "127.0.0.1"
        try:
            port = parts.port or 6379
        except ValueError:
            port = 6379
        shown = f"[{host}]" if ":" in host else host
        return f"{shown}:{port}"
