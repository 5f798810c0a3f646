"""The one settings object. Every value comes from a `LEADFLOW_*` variable or a CLI flag."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_APP_ID = re.compile(r"[^\x00-\x20\x7f-\x9f,=]{1,200}")
_SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEADFLOW_", extra="ignore")

    kafka_bootstrap: str | None = Field(
        default=None, description="Kafka bootstrap servers; unset starts the embedded broker."
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy async URL; unset uses SQLite in the data dir."
    )
    data_dir: Path = Field(default=Path(".leadflow"), description="Where local state lives.")
    rulebook: Path = Field(default=Path("examples/rulebook.yaml"), description="Scoring rules.")
    routing: Path = Field(
        default=Path("examples/routing.yaml"),
        description="Routing rules, pools and the reps they seed (the roster's successor).",
    )
    crm_mappings: Path = Field(
        default=Path("examples/crm"),
        description="Folder of <source>.yaml files mapping a CRM's status webhooks to rep "
        "actions; a CRM's secret is `crm:<source>=whsec_...` in LEADFLOW_WEBHOOK_SECRETS.",
    )
    sla_policy: Path = Field(default=Path("examples/sla.yaml"), description="SLA clocks.")
    write_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated write keys the gateway accepts."
    )
    topic_prefix: str = Field(default="", description="Prefix for every topic name.")
    topic_partitions: int = Field(default=3, ge=1, description="Partitions for new topics.")
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=0, le=65535)
    broker_port: int | None = Field(default=None, ge=0, le=65535)
    produce_timeout_seconds: float = Field(default=5.0, gt=0)
    consumer_batch_size: int = Field(
        default=5000,
        ge=1,
        description="Most records a consumer applies in one transaction; under a backlog, "
        "bigger batches amortize per-lead work (a quiet stream gives small batches anyway).",
    )
    consumer_fetch_max_wait_ms: int = Field(
        default=100, ge=1, description="Longest a fetch waits for new records (latency bound)."
    )
    consumer_session_timeout_ms: int = Field(
        default=6000, ge=1000, description="Consumer group session timeout; joins take about half."
    )
    outbox_batch_size: int = Field(default=500, ge=1)
    mql_hold_seconds: float = Field(
        default=3.0,
        ge=0,
        description="How long a qualification waits for older facts still on their way "
        "(another partition, a lagging worker) before its lead.mql goes out; 0: at once.",
    )
    poll_interval_seconds: float = Field(default=0.2, gt=0)

    # --- gateway (owned by the ingest gateway; keep its settings in this block) ---
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated origins allowed to call the API."
    )
    anonymous_id_cookie: str = Field(
        default="lf_aid",
        pattern=r"^[A-Za-z0-9_\-]{1,64}$",
        description="Name of the first-party anonymous-id cookie the pixel and leadflow.js set.",
    )
    webhook_secrets: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="Comma-separated source=whsec_... pairs: the Standard Webhooks secrets.",
    )
    webhook_mappings: Path = Field(
        default=Path("examples/webhooks"),
        description="Folder of <source>.yaml files mapping a tool's webhook payload to activities.",
    )
    webhook_tolerance_seconds: int = Field(
        default=300, ge=1, description="Replay window: how far webhook-timestamp may be from now."
    )
    email_scanner_seconds: float = Field(
        default=10.0,
        ge=0,
        description="An email click this soon after delivery is flagged as a link scanner's.",
    )
    snowplow_apps: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="Comma-separated app_id=source pairs (or a bare app_id, its own source): "
        "the Snowplow app ids the collector accepts; events of any other app are refused.",
    )
    snowplow_mapping: Path = Field(
        default=Path("examples/snowplow.yaml"),
        description="YAML file mapping Snowplow structured and self-describing events to "
        "activities; a missing file maps nothing (defaults apply).",
    )

    @field_validator("webhook_secrets", mode="before")
    @classmethod
    def _split_pairs(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        pairs: dict[str, str] = {}
        for item in value.split(","):
            if not item.strip():
                continue
            source, sep, secret = item.partition("=")
            if not sep or not source.strip() or not secret.strip():
                raise ValueError(f"expected source=secret, got {item.strip()!r}")
            pairs[source.strip()] = secret.strip()
        return pairs

    @field_validator("snowplow_apps", mode="before")
    @classmethod
    def _split_apps(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        apps: dict[str, str] = {}
        for item in value.split(","):
            if not item.strip():
                continue
            app_id, _, source = item.partition("=")
            apps[app_id.strip()] = source.strip() or app_id.strip()
        return apps

    @field_validator("snowplow_apps", mode="after")
    @classmethod
    def _check_apps(cls, value: dict[str, str]) -> dict[str, str]:
        for app_id, source in value.items():
            if not _APP_ID.fullmatch(app_id):
                raise ValueError(f"app id {app_id!r}: 1-200 printable characters, no comma")
            if not _SOURCE_NAME.fullmatch(source):
                raise ValueError(f"source {source!r} of app {app_id!r}: letters, digits, . _ -")
        return value

    @field_validator("write_keys", "cors_origins", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "leadflow.db"

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.sqlite_path.resolve()}"

    def topic(self, name: str) -> str:
        """The real topic name for a contract topic, with this installation's prefix."""
        return f"{self.topic_prefix}{name}"
