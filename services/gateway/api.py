"""Ingest HTTP API: Segment-style tracking calls, answered only after the broker acked."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError

from schemas.topics import LEAD_ACTIVITY
from services.bus import PublishError, record_for
from services.deps import ContextDep
from services.errors import ApiError, invalid
from services.gateway.auth import require_write_key
from services.gateway.segment import MAX_EVENT_BYTES, InvalidEmail, SegmentTrack, to_activity_event

router = APIRouter(tags=["ingest"])

RETRY_AFTER_SECONDS = "5"


async def _json_body(request: Request, limit: int) -> Any:
    body = await request.body()
    if len(body) > limit:
        raise ApiError(413, "payload_too_large", f"body is {len(body)} bytes; limit is {limit}")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {exc}") from exc


@router.post("/v1/track", summary="Record an activity (Segment track call)")
async def track(request: Request, context: ContextDep) -> dict[str, bool]:
    require_write_key(request, context.settings.write_keys)
    payload = await _json_body(request, MAX_EVENT_BYTES)
    if not isinstance(payload, dict):
        raise ApiError(400, "invalid_json", "body must be a JSON object")
    try:
        body = SegmentTrack.model_validate(payload)
        event = to_activity_event(body, channel="http:/v1/track", now=context.clock.now())
    except ValidationError as exc:
        raise invalid(exc) from exc
    except InvalidEmail as exc:
        raise ApiError(
            422,
            "invalid_request",
            str(exc),
            fields=[{"field": exc.field, "message": "not a valid email address"}],
        ) from exc
    try:
        await context.publisher.publish(record_for(LEAD_ACTIVITY, event.subject, event))
    except PublishError as exc:
        raise ApiError(
            503,
            "broker_unavailable",
            "event not accepted, retry later",
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        ) from exc
    return {"success": True}
