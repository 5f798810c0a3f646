"""CORS for the browser-facing routes, answered by the routes themselves (the app is shared by
every part, so the gateway does not install app-wide middleware). Allowed origins come from
`LEADFLOW_CORS_ORIGINS`; `*` allows any origin, and an allowed origin is always answered by
name, never `*`. Request headers are an allow-list that names what the trackers send (below),
never a blanket `*`. Error responses carry the headers too, so a page's script can read why it
was refused. Routes that browsers call with credentials (Snowplow's collector: the JavaScript
tracker sends its cookies) also answer `Access-Control-Allow-Credentials: true`."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from services.deps import get_context
from services.errors import ApiError, error_body, invalid

ALLOWED_METHODS = "GET, POST, OPTIONS"
ALLOWED_HEADERS = frozenset(
    {
        # leadflow.js, Segment's analytics.js and every JSON client
        "authorization",
        "content-type",
        "content-encoding",
        "x-retry-count",
        # RudderStack's JavaScript SDK v3: every delivery, and its retries
        "anonymousid",
        "sentat",
        "rsa-recovered",
        "rsa-retry-attempt",
        "rsa-retry-reason",
        "rsa-since-first-attempt",
        "rsa-since-last-attempt",
        # Snowplow's JavaScript tracker with server-side anonymisation
        "sp-anonymous",
    }
)
"""Request headers a page may send (lower case): what the supported trackers send."""
MAX_AGE_SECONDS = "600"


def origin_allowed(origin: str, allowed: list[str]) -> bool:
    return "*" in allowed or origin in allowed


def _allowed_origins(request: Request) -> list[str]:
    origins: list[str] = get_context(request).settings.cors_origins
    return origins


def cors_headers(
    origin: str | None, allowed: list[str], *, credentials: bool = False
) -> dict[str, str]:
    if not origin or not origin_allowed(origin, allowed):
        return {"Vary": "Origin"}
    headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    if credentials:
        headers["Access-Control-Allow-Credentials"] = "true"
    return headers


def preflight(request: Request, *, credentials: bool = False) -> Response:
    """Answer an OPTIONS preflight: 204 with the allowed method and headers, or 400."""
    origin = request.headers.get("origin")
    allowed = _allowed_origins(request)
    method = request.headers.get("access-control-request-method", "").upper()
    asked = request.headers.get("access-control-request-headers", "")
    headers = [name.strip().lower() for name in asked.split(",") if name.strip()]
    refused = [name for name in headers if name not in ALLOWED_HEADERS]
    if not origin or not origin_allowed(origin, allowed):
        reason = f"origin {origin!r} is not allowed (LEADFLOW_CORS_ORIGINS)"
    elif method not in ("GET", "POST"):
        reason = f"method {method or '(none)'} is not allowed"
    elif refused:
        reason = f"headers not allowed: {', '.join(refused)}"
    else:
        return Response(
            status_code=204,
            headers={
                **cors_headers(origin, allowed, credentials=credentials),
                "Access-Control-Allow-Methods": ALLOWED_METHODS,
                "Access-Control-Allow-Headers": ", ".join(headers) or "content-type",
                "Access-Control-Max-Age": MAX_AGE_SECONDS,
            },
        )
    error = ApiError(400, "cors_refused", reason)
    return JSONResponse(error_body(error), status_code=400, headers={"Vary": "Origin"})


class CorsRoute(APIRoute):
    """A route whose every response, errors included, carries the CORS headers."""

    credentials = False

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def with_cors(request: Request) -> Response:
            try:
                response = await handler(request)
            except ApiError as exc:
                response = JSONResponse(
                    error_body(exc), status_code=exc.status, headers=exc.headers
                )
            except RequestValidationError as exc:
                error = invalid(exc)
                response = JSONResponse(error_body(error), status_code=error.status)
            origin = request.headers.get("origin")
            allowed = _allowed_origins(request)
            response.headers.update(cors_headers(origin, allowed, credentials=self.credentials))
            return response

        return with_cors


class CredentialedCorsRoute(CorsRoute):
    """A CORS route whose callers send cookies (`credentials: "include"`)."""

    credentials = True
