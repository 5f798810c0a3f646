"""The ingest gateway's part: its HTTP routes (Segment API, pixel, tracker, webhooks). It has no
background workers: a request is answered once the broker acknowledged its events."""

from __future__ import annotations

from services.context import AppContext
from services.gateway.api import router
from services.gateway.webhooks import build_router as build_webhook_router
from services.parts import Part


def build_part(context: AppContext) -> Part:
    """Reads the webhook mappings and secrets; a bad mapping file stops the start."""
    return Part("gateway", routers=[router, build_webhook_router(context.settings)])
