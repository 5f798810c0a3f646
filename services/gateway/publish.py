"""Publishing normalized events: the answer is 2xx only after the broker acknowledged them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    InvalidTopicError,
    MessageSizeTooLargeError,
    ProducerClosed,
    RecordListTooLargeError,
    TopicAuthorizationFailedError,
)

from schemas.envelope import CloudEvent
from schemas.topics import LEAD_ACTIVITY
from services.bus import Publisher, PublishError, record_for
from services.errors import ApiError

RETRY_AFTER_SECONDS = "5"

REFUSALS = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    InvalidTopicError,
    TopicAuthorizationFailedError,
    ClusterAuthorizationFailedError,
    ProducerClosed,
)
"""Errors that mean the write was refused for good: the producer would not send it, or the
broker refuses it on every attempt, so no earlier attempt can have been recorded either."""


def broker_unavailable() -> ApiError:
    return ApiError(
        503,
        "broker_unavailable",
        "event not accepted, retry later",
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


def refused(error: PublishError) -> bool:
    """Whether the write surely was not recorded. Otherwise (a timeout, a lost connection, a
    retried request) the producer may still deliver it after we stopped waiting."""
    return isinstance(error.__cause__, REFUSALS)


async def produce_activities(publisher: Publisher, events: Sequence[CloudEvent[Any]]) -> None:
    """Produce every event to `lead.activity` (acks=all); PublishError without the broker's
    acknowledgement of all of them."""
    await publisher.publish_many(
        [record_for(LEAD_ACTIVITY, event.subject, event) for event in events]
    )


async def publish_activities(publisher: Publisher, events: Sequence[CloudEvent[Any]]) -> None:
    """Produce every event to `lead.activity` (acks=all) or raise 503 with Retry-After."""
    try:
        await produce_activities(publisher, events)
    except PublishError as exc:
        raise broker_unavailable() from exc
