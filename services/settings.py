"""The one settings object. Every value comes from a `LEADFLOW_*` variable or a CLI flag."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


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
    roster: Path = Field(default=Path("examples/roster.yaml"), description="Reps for routing.")
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
    consumer_batch_size: int = Field(default=500, ge=1)
    consumer_session_timeout_ms: int = Field(
        default=6000, ge=1000, description="Consumer group session timeout; joins take about half."
    )
    outbox_batch_size: int = Field(default=500, ge=1)
    poll_interval_seconds: float = Field(default=0.2, gt=0)

    @field_validator("write_keys", mode="before")
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
