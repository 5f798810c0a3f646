"""`GET /t.gif`: the tracking pixel. It always answers the 1x1 GIF with `Cache-Control: no-store`,
whatever goes wrong, so it never breaks a page or an email. Problems are counted on
`/gateway/stats` and logged, never shown.

The pixel waits for the broker's acknowledgement before answering (a pixel has no retry, so
answering first could only lose data it pretended to take). Without it the GIF is still
returned and the hit counted: `pixel_publish_failed` when the write was refused for good (not
recorded), `pixel_publish_unconfirmed` otherwise (no acknowledgement within
`LEADFLOW_PRODUCE_TIMEOUT_SECONDS`, or a lost connection: the Kafka client may still deliver it,
so it may or may not be recorded).
"""

from __future__ import annotations

import base64
import logging
import re
import uuid
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.bus import PublishError
from services.deps import ContextDep, get_context
from services.gateway.clean import CleanId, id_problem
from services.gateway.publish import produce_activities, refused
from services.gateway.segment import InvalidField, SegmentMessage, parse_call, to_activity_event
from services.gateway.stats import count_bots, stats
from services.gateway.write_keys import is_accepted

log = logging.getLogger(__name__)

router = APIRouter(tags=["ingest"])

GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
COOKIE_MAX_AGE_SECONDS = 400 * 24 * 3600  # the longest browsers keep a cookie
UTM_FIELDS = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")
CAMPAIGN_KEYS = {
    "utm_source": "source",
    "utm_medium": "medium",
    "utm_campaign": "name",
    "utm_term": "term",
    "utm_content": "content",
}
COOKIE_VALUE = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]{1,200}")
"""RFC 6265 cookie-octets: an `aid` outside them is recorded but not kept as the cookie."""


class PixelQuery(BaseModel):
    """The pixel's query parameters."""

    model_config = ConfigDict(extra="ignore")

    wk: str = Field(min_length=1, max_length=200, description="write key")
    event: str = Field(default="page_view", min_length=1, max_length=200)
    url: str | None = Field(default=None, max_length=4096)
    title: str | None = Field(default=None, max_length=1000)
    referrer: str | None = Field(default=None, max_length=4096)
    utm_source: str | None = Field(default=None, max_length=200)
    utm_medium: str | None = Field(default=None, max_length=200)
    utm_campaign: str | None = Field(default=None, max_length=200)
    utm_term: str | None = Field(default=None, max_length=200)
    utm_content: str | None = Field(default=None, max_length=200)
    email: str | None = Field(default=None, max_length=320)
    uid: CleanId | None = Field(default=None, max_length=200)
    aid: CleanId | None = Field(default=None, max_length=200)
    mid: CleanId | None = Field(default=None, max_length=200)


def pixel_message(query: PixelQuery, anonymous_id: str, user_agent: str | None) -> SegmentMessage:
    """The pixel hit as the Segment call it stands for: a page call, or a track call."""
    page = {"url": query.url, "title": query.title, "referrer": query.referrer}
    page = {key: value for key, value in page.items() if value}
    campaign = {
        CAMPAIGN_KEYS[field]: getattr(query, field) for field in UTM_FIELDS if getattr(query, field)
    }
    context: dict[str, Any] = {"library": {"name": "leadflow-pixel"}, "page": page}
    if campaign:
        context["campaign"] = campaign
    if user_agent:
        context["userAgent"] = user_agent
    properties: dict[str, Any] = {
        **page,
        **{field: getattr(query, field) for field in UTM_FIELDS if getattr(query, field)},
    }
    payload: dict[str, Any] = {
        "anonymousId": anonymous_id,
        "userId": query.uid or None,
        "messageId": query.mid or None,
        "properties": properties,
        "context": context,
    }
    if query.email:
        payload["traits"] = {"email": query.email}
    if query.event == "page_view":
        return parse_call("page", payload)
    return parse_call("track", {**payload, "event": query.event})


def _gif(request: Request, set_cookie: str | None) -> Response:
    response = Response(
        content=GIF,
        media_type="image/gif",
        headers={"Cache-Control": "no-store, max-age=0", "Pragma": "no-cache"},
    )
    if set_cookie:
        response.set_cookie(
            get_context(request).settings.anonymous_id_cookie,
            set_cookie,
            max_age=COOKIE_MAX_AGE_SECONDS,
            path="/",
            samesite="lax",
            secure=request.url.scheme == "https",
        )
    return response


def _locations(error: ValidationError) -> str:
    """The fields a validation error names, without their values (which may be emails)."""
    return ", ".join(sorted({".".join(map(str, item["loc"])) for item in error.errors()}))


def _reject(request: Request, reason: str) -> None:
    stats(request)["pixel_rejected"] += 1
    # parameter names only: values carry the write key and e-mail addresses
    names = ",".join(sorted(request.query_params.keys()))[:500]
    log.info("pixel hit not recorded: %s (parameters %s)", reason, names)


@router.get(
    "/t.gif",
    summary="Tracking pixel (always a 1x1 GIF; problems are counted on /gateway/stats)",
    response_class=Response,
)
@router.head("/t.gif", response_class=Response, include_in_schema=False)
async def pixel(request: Request, context: ContextDep) -> Response:
    settings = context.settings
    cookie = request.cookies.get(settings.anonymous_id_cookie)
    if cookie is not None and (not 0 < len(cookie) <= 200 or id_problem(cookie)):
        cookie = None
    try:
        query = PixelQuery.model_validate(dict(request.query_params))
    except ValidationError as exc:
        _reject(request, f"invalid parameters: {_locations(exc)}")
        return _gif(request, None if cookie else str(uuid.uuid4()))
    anonymous_id = query.aid or cookie or str(uuid.uuid4())
    new_cookie = None if cookie or not COOKIE_VALUE.fullmatch(anonymous_id) else anonymous_id
    if not is_accepted(query.wk, settings.write_keys):
        _reject(request, "unknown write key (wk)")
        return _gif(request, new_cookie)
    try:
        message = pixel_message(query, anonymous_id, request.headers.get("user-agent"))
        event = to_activity_event(
            message,
            channel="http:/t.gif",
            now=context.clock.now(),
            bot_reason="head_request" if request.method == "HEAD" else None,
            scanner_seconds=settings.email_scanner_seconds,
        )
    except ValidationError as exc:
        _reject(request, f"invalid parameters: {_locations(exc)}")
        return _gif(request, new_cookie)
    except InvalidField as exc:
        _reject(request, f"invalid parameters: {exc}")
        return _gif(request, new_cookie)
    try:
        await produce_activities(context.publisher, [event])
    except PublishError as exc:
        if refused(exc):
            stats(request)["pixel_publish_failed"] += 1
            log.warning("pixel hit %s not recorded: %s", event.id, exc)
        else:
            stats(request)["pixel_publish_unconfirmed"] += 1
            log.warning("pixel hit %s unconfirmed (may be recorded later): %s", event.id, exc)
    else:
        stats(request)["pixel_recorded"] += 1
        count_bots(request, [event])
    return _gif(request, new_cookie)
