"""The ingest gateway's part: its HTTP routes (Segment API, pixel, tracker, webhooks, Snowplow).
It has no background workers: a request is answered once the broker acknowledged its events."""

from __future__ import annotations

from services.context import AppContext
from services.gateway.api import router
from services.gateway.snowplow import build_router as build_snowplow_router
from services.gateway.webhooks import build_router as build_webhook_router
from services.parts import Part


def build_part(context: AppContext) -> Part:
    """Reads the webhook mappings and secrets and the Snowplow map; a bad file stops the
    start."""
    settings = context.settings
    return Part(
        "gateway",
        routers=[router, build_webhook_router(settings), build_snowplow_router(settings)],
    )
