"""Publishing normalized events: the answer is 2xx only after the broker acknowledged them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from schemas.envelope import CloudEvent
from schemas.topics import LEAD_ACTIVITY
from services.bus import Publisher, PublishError, record_for
from services.errors import ApiError

RETRY_AFTER_SECONDS = "5"


def broker_unavailable() -> ApiError:
    return ApiError(
        503,
        "broker_unavailable",
        "event not accepted, retry later",
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


async def publish_activities(publisher: Publisher, events: Sequence[CloudEvent[Any]]) -> None:
    """Produce every event to `lead.activity` (acks=all) or raise 503 with Retry-After."""
    try:
        await publisher.publish_many(
            [record_for(LEAD_ACTIVITY, event.subject, event) for event in events]
        )
    except PublishError as exc:
        raise broker_unavailable() from exc
