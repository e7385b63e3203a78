"""One typed settings object, read from the environment (and `.env`) when asked, never at import."""

from __future__ import annotations

import ipaddress
from functools import cached_property
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PEER_DEFAULTS = {
    "mongodb_service": "http://127.0.0.1:12000",
    "auth_service": "http://127.0.0.1:10000",
    "blob_service": "http://127.0.0.1:13000",
    "user_service": "http://127.0.0.1:8500",
    "user_manager_service": "http://127.0.0.1:7000",
}

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(ValueError):
    """A setting has a bad value; the message names the environment variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        case_sensitive=False,
        extra="ignore",
    )

    port: int = Field(7500, ge=1, le=65535)
    database_url: str = Field(
        "postgresql+psycopg://postgres@127.0.0.1:5432/session_supervisor", repr=False
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", repr=False)
    celery_broker_url: str = Field("", repr=False)
    user_manager_broker_url: str = Field("amqp://guest:guest@127.0.0.1:5672//", repr=False)

    mongodb_service: str = PEER_DEFAULTS["mongodb_service"]
    auth_service: str = PEER_DEFAULTS["auth_service"]
    blob_service: str = PEER_DEFAULTS["blob_service"]
    user_service: str = PEER_DEFAULTS["user_service"]
    user_manager_service: str = PEER_DEFAULTS["user_manager_service"]

    privileged_ips: Annotated[tuple[IPNetwork, ...], NoDecode] = (
        ipaddress.ip_network("127.0.0.1/32"),
    )
    admin_token: str | None = Field(None, repr=False)

    peer_timeout_seconds: float = Field(10.0, gt=0, le=600)
    peer_retries: int = Field(3, ge=0, le=20)
    max_request_bytes: int = Field(64 * 1024, ge=1024)
    max_blend_bytes: int = Field(4 * 1024**3, ge=1024)
    blend_parse_timeout_seconds: float = Field(10.0, gt=0, le=600)
    blend_parse_memory_bytes: int = Field(1024**3, ge=64 * 1024**2)
    max_user_count: int = Field(10_000, ge=1)
    max_frames: int = Field(2_000_000, ge=1)
    initial_user_count: int = Field(4, ge=1)
    progress_mapping_limit: int = Field(100, ge=0)
    trusted_proxy_count: int = Field(0, ge=0, le=10)
    max_frames_per_assignment: int = Field(50, ge=1, le=100_000)
    max_frame_bytes: int = Field(4 * 1024**3, ge=1024)
    thumbnail_max_source_bytes: int = Field(256 * 1024**2, ge=1024)
    stale_frame_seconds: float = Field(900.0, gt=0)
    speculative_extra_percent: int = Field(10, ge=0, le=100)
    speculate_after_paces: float = Field(2.0, ge=1.0, le=100.0)
    validate_frames: bool = True
    frame_content_check_max_bytes: int = Field(64 * 1024**2, ge=0)
    max_frame_refusals: int = Field(3, ge=1, le=100)
    redemand_seconds: float = Field(30.0, gt=0)
    stall_seconds: float = Field(30.0, gt=0)
    claim_timeout_seconds: float = Field(300.0, gt=0)
    max_user_failures: int = Field(3, ge=1)
    forgive_user_seconds: float = Field(3600.0, gt=0)
    completion_settle_seconds: float = Field(2.0, ge=0, le=60)
    stuck_start_seconds: float = Field(120.0, gt=0)
    reclaim_interval_seconds: float = Field(10.0, gt=0)
    demand_interval_seconds: float = Field(15.0, gt=0)
    rebalance_interval_seconds: float = Field(10.0, gt=0)
    unbind_grace_seconds: float = Field(120.0, ge=0)
    workload_retention_seconds: float = Field(7 * 24 * 3600.0, gt=0)
    inbox_redispatch_seconds: float = Field(120.0, gt=0)
    broker_visibility_timeout_seconds: int = Field(600, ge=30)
    intake_queue: str = Field("session-supervisor.user-manager-events", min_length=1)
    dead_letter_queue: str = Field("session-supervisor.dead-letter", min_length=1)

    @field_validator(*PEER_DEFAULTS, mode="before")
    @classmethod
    def _peer_url_or_default(cls, value: Any, info: Any) -> str:
        """The contract: empty or non-http(s) values fall back to the default."""
        text = str(value or "").strip()
        if not text.startswith(("http://", "https://")):
            return PEER_DEFAULTS[info.field_name]
        return text.rstrip("/")

    @field_validator("privileged_ips", mode="before")
    @classmethod
    def _parse_networks(cls, value: Any) -> tuple[IPNetwork, ...]:
        items = value.split(",") if isinstance(value, str) else value
        networks = []
        for item in items:
            text = str(item).strip()
            if text:
                networks.append(ipaddress.ip_network(text, strict=False))
        return tuple(networks)

    @field_validator("admin_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: Any) -> Any:
        return value or None

    @field_validator("database_url")
    @classmethod
    def _sqlalchemy_driver(cls, value: str) -> str:
        """Accept the usual `postgresql://` and `postgres://` forms; we talk psycopg 3."""
        for prefix in ("postgres://", "postgresql://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix) :]
        if not value.startswith("postgresql+"):
            raise ValueError("must be a postgresql:// URL")
        return value

    @cached_property
    def broker_url(self) -> str:
        return self.celery_broker_url or self.redis_url


def load_settings(**overrides: Any) -> Settings:
    """Read the settings; a bad value raises ConfigError naming the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']).upper() or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None
