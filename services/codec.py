"""Reading and building envelopes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel

from schemas.envelope import CloudEvent
from schemas.registry import Contract

DataT = TypeVar("DataT", bound=BaseModel)


_AnyEvent = CloudEvent[Any]
"""Parametrized once: pydantic builds a class per parametrization lookup otherwise."""


class PoisonRecord(ValueError):
    """Raised by a parser for a record no retry can fix."""


def decode(model: type[CloudEvent[DataT]], value: bytes | None) -> CloudEvent[DataT]:
    if value is None:
        raise PoisonRecord("record has no value")
    return model.model_validate_json(value)


def envelope(
    contract: Contract,
    *,
    event_id: str,
    source: str,
    type_: str,
    time: datetime,
    subject: str,
    data: BaseModel,
) -> CloudEvent[Any]:
    return _AnyEvent(
        id=event_id,
        source=source,
        type=type_,
        time=time,
        subject=subject,
        dataschema=contract.dataschema,
        data=data,
    )
