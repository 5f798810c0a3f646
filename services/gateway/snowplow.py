"""A Snowplow collector: `POST /com.snowplowanalytics.snowplow/tp2` (the tracker protocol's
`{"schema": …/payload_data/…, "data": [events]}`, what the JavaScript and Python trackers post)
and `GET /i` (one event in the query string, the pixel form), so a site's Snowplow trackers
need only their collector URL changed.

Snowplow has no write key: an app id (`aid`) is accepted only when `LEADFLOW_SNOWPLOW_APPS`
names it (app id -> source name); events of any other app are refused (403 on `tp2`, the GIF
still on `/i`) and counted on `/gateway/stats`. Answers are Snowplow's: 200 once the broker
acknowledged every event, the 1x1 GIF always for `/i`. Browsers call `tp2` with credentials,
so it answers CORS with `Access-Control-Allow-Credentials: true` for the origins in
`LEADFLOW_CORS_ORIGINS`. Like Snowplow's collector, the gateway keeps a network user id in its
own `sp` cookie (not when the tracker sends `SP-Anonymous`).

Events: `e=pv` page views are `page_view`, `e=pp` page pings the custom activity `page_ping`
(one per heartbeat while the page is in use), `e=se` structured events and `e=ue`
self-describing events what the Snowplow map (services.gateway.snowplow_map) says, custom
activities otherwise. Identities: `uid` is the user id, `duid` (else `tnuid`/`nuid`, else the
network cookie) the anonymous id, and an email only from a mapped event (a tracked form's email
field). Page fields (`url`, `page`, `refr`) and the page address's UTM parameters become
properties and `context.page`/`context.campaign`. `eid` is the event id, so a retry is one
event; event time is `ttm`, else `dtm` corrected for the device's clock with `stm`. Identity
and id fields (`uid`, `duid`, `nuid`, `tnuid`, `tna`, `aid`, `eid`, `sid`) holding a control
character are refused naming the field (`data.0.uid`); every other string is cleaned."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from fastapi import APIRouter, Request, Response

from schemas.envelope import CloudEvent
from schemas.events import ActivityType, Identity
from services.bus import PublishError
from services.deps import ContextDep
from services.errors import ApiError, ErrorBody, error_responses
from services.gateway import bots
from services.gateway.body import MAX_BATCH_BYTES, MAX_EVENT_BYTES, parse_json_object, read_body
from services.gateway.clean import MAX_DEPTH, activity_event, clean_text, depth, id_problem
from services.gateway.cors import CredentialedCorsRoute, preflight
from services.gateway.publish import produce_activities, publish_activities, refused
from services.gateway.segment import (
    InvalidField,
    activity_type_for,
    checked_email,
    corrected_time,
    lead_attributes,
)
from services.gateway.snowplow_map import (
    STRUCTURED_FIELDS,
    SelfDescribingRule,
    SnowplowMap,
    at_path,
    load_snowplow_map,
)
from services.gateway.stats import count_bots, stats
from services.settings import Settings

log = logging.getLogger(__name__)

COLLECTOR_PATH = "/com.snowplowanalytics.snowplow/tp2"
PIXEL_PATH = "/i"
PAYLOAD_SCHEMA = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-"
NETWORK_COOKIE = "sp"
NETWORK_COOKIE_MAX_AGE_SECONDS = 365 * 24 * 3600  # as Snowplow's collector
GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
ID_FIELDS = ("aid", "eid", "tna", "uid", "duid", "tnuid", "nuid", "sid")
"""Fields that are ids or identities: refused with a control character, never cleaned."""
MAX_ID_LENGTH = 200
MAX_TEXT_LENGTH = 8192
UTM_FIELDS = {
    "utm_source": "source",
    "utm_medium": "medium",
    "utm_campaign": "name",
    "utm_term": "term",
    "utm_content": "content",
}
PAGE_PING_FIELDS = ("pp_mix", "pp_max", "pp_miy", "pp_may")
WEB_PAGE_SCHEMA = "iglu:com.snowplowanalytics.snowplow/web_page/"
EMAIL_FIELD_NAMES = ("email", "e-mail", "email_address", "emailaddress", "work_email")
UNSTRUCT_KEYS = ("ue_pr", "ue_px")
CONTEXT_KEYS = ("co", "cx")


class AppRefused(Exception):
    """An event of an app id that LEADFLOW_SNOWPLOW_APPS does not name."""

    def __init__(self, app_id: str | None) -> None:
        super().__init__(f"app id {app_id!r} is not allowed")
        self.app_id = app_id


@dataclass(frozen=True)
class Arrival:
    """What a request tells about its events besides their parameters."""

    now: datetime
    channel: str
    network_id: str
    user_agent: str | None
    scanner_seconds: float


def _text(name: str, value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value or None
    if isinstance(value, bool | int | float):
        return str(value).lower() if isinstance(value, bool) else str(value)
    raise InvalidField(name, "must be a string (the tracker protocol's values are strings)")


def _fields(params: dict[str, Any]) -> dict[str, str]:
    """Every parameter as text: ids checked (refused naming the field), the rest cleaned."""
    fields: dict[str, str] = {}
    for name, value in params.items():
        if not isinstance(name, str) or id_problem(name) is not None:
            continue  # a key with control characters is no protocol field
        text = _text(name, value)
        if text is None:
            continue
        limit = MAX_ID_LENGTH if name in ID_FIELDS else MAX_TEXT_LENGTH
        if len(text) > limit:
            raise InvalidField(name, f"at most {limit} characters")
        if name in ID_FIELDS:
            problem = id_problem(text)
            if problem is not None:
                raise InvalidField(name, problem)
        else:
            text = clean_text(text)
        fields[name] = text
    return fields


def _millis(fields: dict[str, str], name: str) -> datetime | None:
    value = fields.get(name)
    if value is None:
        return None
    try:
        return datetime.fromtimestamp(int(value) / 1000, tz=UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise InvalidField(name, "milliseconds since the Unix epoch") from exc


def _decoded_json(fields: dict[str, str], plain: str, encoded: str) -> tuple[str, Any] | None:
    """The JSON of a field sent plain (`ue_pr`, `co`) or base64url-encoded (`ue_px`, `cx`)."""
    if plain in fields:
        name, text = plain, fields[plain]
    elif encoded in fields:
        name = encoded
        raw = fields[encoded].replace("+", "-").replace("/", "_").strip()
        try:
            text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        except (binascii.Error, ValueError) as exc:
            raise InvalidField(name, "not base64url-encoded UTF-8 JSON") from exc
    else:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidField(name, "not valid JSON") from exc
    if depth(value) > MAX_DEPTH:
        raise InvalidField(name, f"nests more than {MAX_DEPTH} levels deep")
    return name, value


def _self_describing(value: Any, name: str) -> tuple[str, dict[str, Any]]:
    if not (isinstance(value, dict) and isinstance(value.get("schema"), str)):
        raise InvalidField(name, "a self-describing JSON: {schema, data}")
    data = value.get("data")
    return value["schema"], data if isinstance(data, dict) else {}


def _contexts(fields: dict[str, str]) -> list[Any]:
    found = _decoded_json(fields, *CONTEXT_KEYS)
    if found is None:
        return []
    name, value = found
    items = value.get("data") if isinstance(value, dict) else None
    if not isinstance(items, list):
        raise InvalidField(name, "a contexts JSON: {schema, data: [...]}")
    return items


def _page_view_id(contexts: list[Any]) -> str | None:
    for item in contexts:
        if isinstance(item, dict) and str(item.get("schema", "")).startswith(WEB_PAGE_SCHEMA):
            data = item.get("data")
            page_view_id = data.get("id") if isinstance(data, dict) else None
            if isinstance(page_view_id, str):
                return page_view_id
    return None


def _number(value: str) -> float | int | str:
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() and abs(number) < 2**53 else number


def _page(fields: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The page (url, title, referrer, path, search) and its UTM campaign."""
    page: dict[str, Any] = {}
    campaign: dict[str, str] = {}
    url = fields.get("url")
    if url:
        page["url"] = url
        parts = urlsplit(url)
        page["path"] = parts.path or "/"
        if parts.query:
            page["search"] = f"?{parts.query}"
        for key, value in parse_qsl(parts.query):
            if key in UTM_FIELDS and value:
                campaign[UTM_FIELDS[key]] = value
    if fields.get("page"):
        page["title"] = fields["page"]
    if fields.get("refr"):
        page["referrer"] = fields["refr"]
    return page, campaign


def _form_fields(elements: Any, where: str) -> tuple[list[tuple[str, Any]], dict[str, Any]]:
    """Email candidates and lead attributes from a form's fields ([{name, value, type}])."""
    emails: list[tuple[str, Any]] = []
    attributes: dict[str, Any] = {}
    if not isinstance(elements, list):
        return emails, attributes
    for index, element in enumerate(elements):
        if not isinstance(element, dict):
            continue
        name, value = element.get("name"), element.get("value")
        if not isinstance(name, str) or not name or value in (None, ""):
            continue
        if str(element.get("type", "")).lower() == "password":
            continue
        if element.get("type") == "email" or name.strip().lower() in EMAIL_FIELD_NAMES:
            emails.append((f"{where}.{index}.value", value))
        else:
            attributes[name] = value
    return emails, lead_attributes(attributes)


@dataclass
class _Mapped:
    activity_type: ActivityType
    event_name: str
    properties: dict[str, Any]
    attributes: dict[str, Any]
    email: str | None = None
    user_id: str | None = None


def _unstructured(fields: dict[str, str], mapping: SnowplowMap) -> _Mapped:
    found = _decoded_json(fields, *UNSTRUCT_KEYS)
    if found is None:
        raise InvalidField("ue_pr", "a self-describing event needs ue_pr or ue_px")
    name, envelope = found
    _, inner = _self_describing(envelope, name)
    schema, data = _self_describing(inner, f"{name}.data")
    try:
        short_name, rule = mapping.for_schema(schema)
    except ValueError as exc:
        raise InvalidField(f"{name}.data.schema", str(exc)) from exc
    rule = rule or SelfDescribingRule(activity=activity_type_for(short_name))
    properties: dict[str, Any] = dict(data) if rule.copy_data else {}
    for prop, path in rule.properties.items():
        properties[prop] = at_path(data, path)
    properties["schema"] = schema
    where = f"{name}.data.data"
    emails: list[tuple[str, Any]] = []
    attributes: dict[str, Any] = {}
    if rule.form_fields:
        emails, attributes = _form_fields(
            at_path(data, rule.form_fields), f"{where}.{rule.form_fields}"
        )
        if rule.copy_data:
            properties.pop(rule.form_fields.split(".", 1)[0], None)
    if rule.email:
        emails.insert(0, (f"{where}.{rule.email}", at_path(data, rule.email)))
    for attribute, path in rule.attributes.items():
        attributes[attribute] = at_path(data, path)
    user_id = None
    if rule.user_id:
        value = _text(f"{where}.{rule.user_id}", at_path(data, rule.user_id))
        if value is not None:
            problem = id_problem(value)
            if problem is not None or len(value) > MAX_ID_LENGTH:
                raise InvalidField(
                    f"{where}.{rule.user_id}", problem or f"at most {MAX_ID_LENGTH} characters"
                )
            user_id = value
    return _Mapped(
        activity_type=rule.activity,
        event_name=rule.event_name or short_name,
        properties={key: value for key, value in properties.items() if value is not None},
        attributes={key: value for key, value in attributes.items() if value is not None},
        email=checked_email(emails),
        user_id=user_id,
    )


def _structured(fields: dict[str, str], mapping: SnowplowMap) -> _Mapped:
    values = {name: fields.get(key) for name, key in STRUCTURED_FIELDS.items()}
    category, action = values["category"], values["action"]
    if not action:
        raise InvalidField("se_ac", "a structured event needs an action")
    rule = mapping.for_structured(category, action)
    properties: dict[str, Any] = {
        name: _number(value) if name == "value" else value
        for name, value in values.items()
        if value is not None
    }
    if rule is not None:
        for prop, name in rule.properties.items():
            if values[name] is not None:
                properties[prop] = properties[name]
    return _Mapped(
        activity_type=rule.activity if rule else activity_type_for(action),
        event_name=(rule.event_name if rule else None) or action,
        properties=properties,
        attributes={},
    )


def _mapped(kind: str, fields: dict[str, str], mapping: SnowplowMap) -> _Mapped:
    if kind == "pv":
        return _Mapped(ActivityType.PAGE_VIEW, "page_view", {}, {})
    if kind == "pp":
        scroll = {name: _number(fields[name]) for name in PAGE_PING_FIELDS if name in fields}
        return _Mapped(ActivityType.CUSTOM, "page_ping", scroll, {})
    if kind == "se":
        return _structured(fields, mapping)
    if kind == "ue":
        return _unstructured(fields, mapping)
    return _Mapped(ActivityType.CUSTOM, kind, {}, {})


def to_activity(
    params: dict[str, Any], *, apps: dict[str, str], mapping: SnowplowMap, arrival: Arrival
) -> CloudEvent[Any]:
    """One tracker-protocol event as a `lead.activity` event (pure). InvalidField names the
    parameter; AppRefused when its app id is not configured."""
    fields = _fields(params)
    app_id = fields.get("aid")
    if app_id is None or app_id not in apps:
        raise AppRefused(app_id)
    kind = fields.get("e")
    if not kind:
        raise InvalidField("e", "Field required (pv, pp, se, ue, …)")
    if len(kind) > 20:
        raise InvalidField("e", "an event type (pv, pp, se, ue, …)")
    contexts = _contexts(fields)
    mapped = _mapped(kind, fields, mapping)
    page, campaign = _page(fields)
    properties: dict[str, Any] = dict(page)
    for parameter, key in UTM_FIELDS.items():
        if key in campaign:
            properties[parameter] = campaign[key]
    page_view_id = _page_view_id(contexts)
    if page_view_id and kind in ("pv", "pp"):
        properties["page_view_id"] = page_view_id
    properties.update(mapped.properties)

    timestamp = _millis(fields, "dtm")
    sent_at = _millis(fields, "stm")
    true_time = _millis(fields, "ttm")
    try:
        event_time = true_time or corrected_time(timestamp, sent_at, arrival.now)
    except OverflowError as exc:
        raise InvalidField("dtm", "too far from stm to correct the clock") from exc

    user_agent = fields.get("ua") or arrival.user_agent
    snowplow: dict[str, Any] = {"app_id": app_id}
    for key, name in (("tna", "namespace"), ("p", "platform"), ("sid", "session_id")):
        if key in fields:
            snowplow[name] = fields[key]
    if "vid" in fields:
        snowplow["session_index"] = _number(fields["vid"])
    if contexts:
        snowplow["contexts"] = contexts
    context: dict[str, Any] = {"library": {"name": "snowplow", "version": fields.get("tv")}}
    context["snowplow"] = snowplow
    if page:
        context["page"] = page
    if campaign:
        context["campaign"] = campaign
    for key, name in (
        ("lang", "locale"),
        ("tz", "timezone"),
        ("res", "screen"),
        ("vp", "viewport"),
    ):
        if key in fields:
            context[name] = fields[key]
    if user_agent:
        context["userAgent"] = user_agent
    if true_time is None and timestamp is not None and sent_at is not None:
        context["original_timestamp"] = timestamp.isoformat()

    identity = Identity(
        email=mapped.email,
        user_id=fields.get("uid") or mapped.user_id,
        anonymous_id=fields.get("duid")
        or fields.get("tnuid")
        or fields.get("nuid")
        or arrival.network_id,
    )
    return activity_event(
        event_id=fields.get("eid") or f"sp-{uuid.uuid4()}",
        source=f"leadflow/gateway/snowplow/{apps[app_id]}",
        time=event_time,
        identity=identity,
        activity_type=mapped.activity_type,
        event_name=mapped.event_name,
        properties=properties,
        attributes=mapped.attributes,
        context=context,
        channel=arrival.channel,
        received_at=arrival.now,
        bot_reason=bots.detect(
            flagged=None,
            user_agent=user_agent,
            activity_type=mapped.activity_type,
            time=event_time,
            delivered_at=None,
            scanner_seconds=arrival.scanner_seconds,
        ),
    )


def _network_id(request: Request) -> tuple[str, bool]:
    """The network user id from the `sp` cookie, or a new one (True: set the cookie). With
    `SP-Anonymous` the cookie is neither read nor set."""
    if request.headers.get("sp-anonymous"):
        return str(uuid.uuid4()), False
    cookie = request.cookies.get(NETWORK_COOKIE)
    if cookie and len(cookie) <= MAX_ID_LENGTH and id_problem(cookie) is None:
        return cookie, False
    return str(uuid.uuid4()), True


def _set_network_cookie(request: Request, response: Response, network_id: str) -> None:
    secure = request.url.scheme == "https"
    response.set_cookie(
        NETWORK_COOKIE,
        network_id,
        max_age=NETWORK_COOKIE_MAX_AGE_SECONDS,
        path="/",
        samesite="none" if secure else "lax",  # SameSite=None needs Secure
        secure=secure,
        httponly=True,
    )


def _arrival(request: Request, context: ContextDep, channel: str, network_id: str) -> Arrival:
    return Arrival(
        now=context.clock.now(),
        channel=channel,
        network_id=network_id,
        user_agent=request.headers.get("user-agent"),
        scanner_seconds=context.settings.email_scanner_seconds,
    )


def _refused_app(request: Request, refused_apps: set[str | None], count: int) -> ApiError:
    stats(request)["snowplow_refused_app"] += count
    names = ", ".join(sorted(repr(app) for app in refused_apps))
    log.info("snowplow events of app ids %s refused (not in LEADFLOW_SNOWPLOW_APPS)", names)
    return ApiError(
        403,
        "app_not_allowed",
        f"app id {names} is not allowed (LEADFLOW_SNOWPLOW_APPS)",
        fields=[{"field": "aid", "message": "not a configured Snowplow app id"}],
    )


def _payload_events(payload: dict[str, Any]) -> list[Any]:
    schema = payload.get("schema")
    if schema is not None and not (isinstance(schema, str) and schema.startswith(PAYLOAD_SCHEMA)):
        raise ApiError(
            422,
            "invalid_request",
            "invalid fields: schema",
            fields=[{"field": "schema", "message": f"{PAYLOAD_SCHEMA}…"}],
        )
    items = payload.get("data")
    if not isinstance(items, list) or not items:
        raise ApiError(
            422,
            "invalid_request",
            "invalid fields: data",
            fields=[{"field": "data", "message": "a non-empty list of events"}],
        )
    return items


def build_router(settings: Settings) -> APIRouter:
    """The collector's routes, with the Snowplow map in `settings` (read now)."""
    mapping = load_snowplow_map(settings.snowplow_mapping)
    apps = settings.snowplow_apps
    router = APIRouter(tags=["ingest"], route_class=CredentialedCorsRoute)

    @router.post(
        COLLECTOR_PATH,
        summary="Snowplow collector: the tracker protocol's POST (JavaScript, Python, …)",
        response_class=Response,
        responses={
            **error_responses(400, 413, 422, 503),
            403: {
                "model": ErrorBody,
                "description": "An app id (`aid`) that LEADFLOW_SNOWPLOW_APPS does not name",
            },
        },
    )
    async def collect(request: Request, context: ContextDep) -> Response:
        payload = parse_json_object(await read_body(request, MAX_BATCH_BYTES))
        items = _payload_events(payload)
        network_id, new_cookie = _network_id(request)
        arrival = _arrival(request, context, f"snowplow:{COLLECTOR_PATH}", network_id)
        events: list[CloudEvent[Any]] = []
        problems: list[dict[str, str]] = []
        refused_apps: set[str | None] = set()
        for index, item in enumerate(items):
            where = f"data.{index}"
            if not isinstance(item, dict):
                problems.append({"field": where, "message": "not a JSON object"})
                continue
            size = len(json.dumps(item, separators=(",", ":")).encode())
            if size > MAX_EVENT_BYTES:
                raise ApiError(
                    413,
                    "payload_too_large",
                    f"{where} is {size} bytes; limit per event is {MAX_EVENT_BYTES}",
                    fields=[{"field": where, "message": "event too large"}],
                )
            try:
                events.append(to_activity(item, apps=apps, mapping=mapping, arrival=arrival))
            except InvalidField as exc:
                problems.append({"field": f"{where}.{exc.field}", "message": exc.message})
            except AppRefused as exc:
                refused_apps.add(exc.app_id)
        if problems:
            stats(request)["snowplow_rejected"] += len(items)
            names = ", ".join(sorted({problem["field"] for problem in problems}))
            raise ApiError(422, "invalid_request", f"invalid fields: {names}", fields=problems)
        if refused_apps:
            raise _refused_app(request, refused_apps, len(items))
        await publish_activities(context.publisher, events)
        count_bots(request, events)
        stats(request)["snowplow_events"] += len(events)
        response = Response("ok", media_type="text/plain")
        if new_cookie:
            _set_network_cookie(request, response, network_id)
        return response

    @router.options(COLLECTOR_PATH, include_in_schema=False)
    async def collect_preflight(request: Request) -> Response:
        return preflight(request, credentials=True)

    @router.get(
        PIXEL_PATH,
        summary="Snowplow collector: one event in the query string (always a 1x1 GIF)",
        response_class=Response,
    )
    async def pixel(request: Request, context: ContextDep) -> Response:
        network_id, new_cookie = _network_id(request)
        response = Response(
            GIF,
            media_type="image/gif",
            headers={"Cache-Control": "no-cache, no-store, must-revalidate", "Pragma": "no-cache"},
        )
        if new_cookie:
            _set_network_cookie(request, response, network_id)
        arrival = _arrival(request, context, f"snowplow:{PIXEL_PATH}", network_id)
        try:
            event = to_activity(
                dict(request.query_params), apps=apps, mapping=mapping, arrival=arrival
            )
        except InvalidField as exc:
            stats(request)["snowplow_rejected"] += 1
            log.info("snowplow pixel hit not recorded: %s: %s", exc.field, exc.message)
            return response
        except AppRefused as exc:
            _refused_app(request, {exc.app_id}, 1)
            return response
        try:
            await produce_activities(context.publisher, [event])
        except PublishError as exc:
            stats(request)["snowplow_unrecorded"] += 1
            kind = "not recorded" if refused(exc) else "unconfirmed (may be recorded later)"
            log.warning("snowplow pixel hit %s %s: %s", event.id, kind, exc)
        else:
            stats(request)["snowplow_events"] += 1
            count_bots(request, [event])
        return response

    return router
