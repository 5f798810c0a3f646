"""Reading and building envelopes."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

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


OtherT = TypeVar("OtherT", bound=BaseModel)


def decode_either(
    first: type[CloudEvent[DataT]], second: type[CloudEvent[OtherT]], value: bytes | None
) -> CloudEvent[DataT] | CloudEvent[OtherT]:
    """One of two event kinds that share a topic, told apart by their data; a record that is
    neither is reported as not being the first."""
    try:
        return decode(first, value)
    except ValidationError as not_first:
        try:
            return decode(second, value)
        except ValidationError:
            raise not_first from None


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
