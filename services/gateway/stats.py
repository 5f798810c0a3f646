"""Counters of what the gateway did that no response shows (pixel problems, bots flagged),
kept per process and served on `GET /gateway/stats`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

from fastapi import Request
from pydantic import BaseModel, Field

from schemas.envelope import CloudEvent

StatName = Literal[
    "bots_flagged",
    "pixel_publish_failed",
    "pixel_publish_unconfirmed",
    "pixel_recorded",
    "pixel_rejected",
    "snowplow_events",
    "snowplow_refused_app",
    "snowplow_rejected",
    "snowplow_unrecorded",
    "webhook_events",
    "webhooks_duplicate",
    "webhooks_refused_signature",
]


class GatewayStats(BaseModel):
    """The gateway's counters since this process started; one still at 0 is left out."""

    bots_flagged: int = Field(default=0, description="Events flagged as bots, and published")
    pixel_publish_failed: int = Field(
        default=0, description="Pixel hits the broker refused for good: not recorded"
    )
    pixel_publish_unconfirmed: int = Field(
        default=0, description="Pixel hits not acknowledged in time: may or may not be recorded"
    )
    pixel_recorded: int = Field(default=0, description="Pixel hits the broker acknowledged")
    pixel_rejected: int = Field(default=0, description="Pixel hits refused (bad key or values)")
    snowplow_events: int = Field(default=0, description="Snowplow events the broker acknowledged")
    snowplow_refused_app: int = Field(
        default=0, description="Snowplow events of an app id not in LEADFLOW_SNOWPLOW_APPS"
    )
    snowplow_rejected: int = Field(
        default=0, description="Snowplow events refused for invalid fields (whole requests)"
    )
    snowplow_unrecorded: int = Field(
        default=0, description="Snowplow `/i` hits the broker did not acknowledge"
    )
    webhook_events: int = Field(default=0, description="Events from webhooks, acknowledged")
    webhooks_duplicate: int = Field(default=0, description="Redelivered webhooks (not produced)")
    webhooks_refused_signature: int = Field(
        default=0, description="Webhooks refused for their signature or timestamp"
    )


def stats(request: Request) -> Counter[StatName]:
    """The counters of the app serving this request (one set per app, created on first use)."""
    state = request.app.state
    counters: Counter[StatName] | None = getattr(state, "gateway_stats", None)
    if counters is None:
        counters = Counter()
        state.gateway_stats = counters
    return counters


def count_bots(request: Request, events: Sequence[CloudEvent[Any]]) -> None:
    """Count the events flagged as bot traffic, once the broker has acknowledged them."""
    flagged = sum(1 for event in events if event.data.is_bot)
    if flagged:
        stats(request)["bots_flagged"] += flagged
