"""The Segment-compatible HTTP Tracking API: `/v1/track|page|screen|identify|alias|group|batch`
and the one-letter paths analytics.js posts to (`/v1/t`, `/v1/p`, … `/v1/b`). Answered 2xx
only after the broker acknowledged every event of the request."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ValidationError

from schemas.envelope import CloudEvent
from services.deps import ContextDep
from services.errors import ApiError, error_responses, field_errors
from services.gateway.body import MAX_BATCH_BYTES, MAX_EVENT_BYTES, parse_json_object, read_body
from services.gateway.cors import CorsRoute, preflight
from services.gateway.pixel import router as pixel_router
from services.gateway.publish import publish_activities
from services.gateway.sdk_config import router as sdk_config_router
from services.gateway.segment import (
    CALLS,
    InvalidField,
    parse_call,
    parse_time,
    to_activity_event,
)
from services.gateway.stats import GatewayStats, count_bots, stats
from services.gateway.tracker import router as tracker_router
from services.gateway.write_keys import require_write_key
from services.security import DeclareWriteKey, RequireOps

router = APIRouter(tags=["ingest"], route_class=CorsRoute)

SINGLE_PATHS = {
    "track": ("/v1/track", "/v1/t"),
    "page": ("/v1/page", "/v1/p"),
    "screen": ("/v1/screen", "/v1/s"),
    "identify": ("/v1/identify", "/v1/i"),
    "alias": ("/v1/alias", "/v1/a"),
    "group": ("/v1/group", "/v1/g"),
}
BATCH_PATHS = ("/v1/batch", "/v1/b", "/v1/import", "/beacon/v1/batch")
"""`/beacon/v1/batch` is where RudderStack's SDK sends with `navigator.sendBeacon` (its write key
in `?writeKey=`)."""


class Accepted(BaseModel):
    """Segment's answer: the broker acknowledged every event of the request."""

    success: bool


SUCCESS = Accepted(success=True)
TRACKING_ERRORS = error_responses(400, 401, 413, 422, 503)


class _Invalid(Exception):
    def __init__(self, fields: list[dict[str, str]]) -> None:
        super().__init__("invalid")
        self.fields = fields


def _normalize(
    call: str,
    item: dict[str, Any],
    *,
    prefix: list[str],
    channel: str,
    context: ContextDep,
    batch_sent_at: datetime | None = None,
) -> CloudEvent[Any]:
    try:
        message = parse_call(call, item)
        return to_activity_event(
            message,
            channel=channel,
            now=context.clock.now(),
            batch_sent_at=batch_sent_at,
            scanner_seconds=context.settings.email_scanner_seconds,
        )
    except ValidationError as exc:
        raise _Invalid(field_errors(exc.errors(), prefix=prefix)) from exc
    except InvalidField as exc:
        field = ".".join([*prefix, exc.field])
        raise _Invalid([{"field": field, "message": exc.message}]) from exc


def _unprocessable(fields: list[dict[str, str]]) -> ApiError:
    names = ", ".join(sorted({field["field"] for field in fields}))
    return ApiError(422, "invalid_request", f"invalid fields: {names}", fields=fields)


def single_call(call: str, path: str) -> Callable[[Request, ContextDep], Awaitable[Any]]:
    async def endpoint(request: Request, context: ContextDep) -> Accepted:
        payload = parse_json_object(await read_body(request, MAX_EVENT_BYTES))
        require_write_key(request, context.settings.write_keys, body_key=payload.get("writeKey"))
        try:
            event = _normalize(call, payload, prefix=[], channel=f"http:{path}", context=context)
        except _Invalid as exc:
            raise _unprocessable(exc.fields) from exc
        await publish_activities(context.publisher, [event])
        count_bots(request, [event])
        return SUCCESS

    endpoint.__name__ = f"{call}_{path.rsplit('/', 1)[-1]}"
    return endpoint


def _sent_at(payload: dict[str, Any]) -> datetime | None:
    value = payload.get("sentAt")
    if value in (None, ""):
        return None
    try:
        return parse_time(value)
    except ValidationError as exc:
        raise _unprocessable(field_errors(exc.errors(), prefix=["sentAt"])) from exc


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def batch_events(payload: dict[str, Any], path: str, context: ContextDep) -> list[CloudEvent[Any]]:
    """Every message of a batch, normalized; one bad message refuses the whole batch."""
    items = payload.get("batch")
    if not isinstance(items, list) or not items:
        raise _unprocessable([{"field": "batch", "message": "a non-empty list of messages"}])
    batch_sent_at = _sent_at(payload)
    shared_context = _object(payload.get("context"))
    events: list[CloudEvent[Any]] = []
    problems: list[dict[str, str]] = []
    for index, item in enumerate(items):
        prefix = ["batch", str(index)]
        if not isinstance(item, dict):
            problems.append({"field": ".".join(prefix), "message": "not a JSON object"})
            continue
        size = len(json.dumps(item, separators=(",", ":")).encode())
        if size > MAX_EVENT_BYTES:
            raise ApiError(
                413,
                "payload_too_large",
                f"batch.{index} is {size} bytes; limit per message is {MAX_EVENT_BYTES}",
                fields=[{"field": ".".join(prefix), "message": "message too large"}],
            )
        call = item.get("type")
        if not isinstance(call, str) or call not in CALLS:
            problems.append(
                {"field": ".".join([*prefix, "type"]), "message": f"one of {', '.join(CALLS)}"}
            )
            continue
        if shared_context:
            item = {**item, "context": {**shared_context, **_object(item.get("context"))}}
        try:
            events.append(
                _normalize(
                    call,
                    item,
                    prefix=prefix,
                    channel=f"http:{path}",
                    context=context,
                    batch_sent_at=batch_sent_at,
                )
            )
        except _Invalid as exc:
            problems.extend(exc.fields)
    if problems:
        raise _unprocessable(problems)
    return events


def batch_call(path: str) -> Callable[[Request, ContextDep], Awaitable[Any]]:
    async def endpoint(request: Request, context: ContextDep) -> Accepted:
        payload = parse_json_object(await read_body(request, MAX_BATCH_BYTES))
        require_write_key(request, context.settings.write_keys, body_key=payload.get("writeKey"))
        events = batch_events(payload, path, context)
        await publish_activities(context.publisher, events)
        count_bots(request, events)
        return SUCCESS

    endpoint.__name__ = f"batch_{path.rsplit('/', 1)[-1]}"
    return endpoint


for _call, _paths in SINGLE_PATHS.items():
    for _index, _path in enumerate(_paths):
        router.add_api_route(
            _path,
            single_call(_call, _path),
            methods=["POST"],
            summary=f"Segment {_call} call",
            include_in_schema=_index == 0,
            dependencies=[DeclareWriteKey],
            responses=TRACKING_ERRORS,
        )
for _index, _path in enumerate(BATCH_PATHS):
    router.add_api_route(
        _path,
        batch_call(_path),
        methods=["POST"],
        summary="Segment batch: up to 500 KB of track/page/identify/alias/group calls",
        include_in_schema=_index == 0,
        dependencies=[DeclareWriteKey],
        responses=TRACKING_ERRORS,
    )


@router.options("/v1/{path:path}", include_in_schema=False)
@router.options("/beacon/v1/{path:path}", include_in_schema=False)
async def cors_preflight(request: Request, path: str) -> Response:
    return preflight(request)


@router.get(
    "/gateway/stats",
    tags=["ops"],
    dependencies=[RequireOps],
    summary="Gateway counters since this process started",
    response_model_exclude_defaults=True,  # a counter still at 0 is left out
    responses=error_responses(401, 403),
)
async def gateway_stats(request: Request) -> GatewayStats:
    return GatewayStats.model_validate(stats(request))


router.include_router(pixel_router)
router.include_router(tracker_router)
router.include_router(sdk_config_router)
