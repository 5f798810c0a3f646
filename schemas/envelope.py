"""The CloudEvents 1.0 envelope every leadflow event travels in (JSON structured mode)."""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

DataT = TypeVar("DataT", bound=BaseModel)

CONTENT_TYPE = "application/json"


def dataschema_uri(name: str, version: int) -> str:
    """The `dataschema` value naming the versioned JSON Schema of an event's data."""
    return f"urn:leadflow:schema:{name}:v{version}"


class CloudEvent(BaseModel, Generic[DataT]):
    """One event on one Kafka record; `id` is stable across retries and is the dedupe key."""

    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(min_length=1, max_length=200)
    source: str = Field(min_length=1)
    type: str = Field(min_length=1)
    time: AwareDatetime
    subject: str = Field(min_length=1)
    datacontenttype: Literal["application/json"] = "application/json"
    dataschema: str
    data: DataT
