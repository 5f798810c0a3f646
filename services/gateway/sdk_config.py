"""What the browser SDKs fetch before they send anything, served by leadflow so that a site
points them at leadflow and nothing else: Segment analytics.js's project settings
(`GET /v1/projects/{writeKey}/settings`, its `cdnURL`) and RudderStack's source configuration
(`GET /sourceConfig/?writeKey=…`, its `configUrl`). Both name no destinations (leadflow scores
the events; it forwards none), send events back to this host, and turn the SDKs' own telemetry
off. An unknown write key is a 401, as on the tracking API."""

from __future__ import annotations

import hashlib
from typing import Any

from fastapi import APIRouter, Request, Response

from services.deps import ContextDep
from services.errors import error_responses
from services.gateway.cors import CorsRoute, preflight
from services.gateway.write_keys import require_write_key

router = APIRouter(tags=["ingest"], route_class=CorsRoute)


def _host(request: Request) -> str:
    """This gateway's host as the page reached it (and any path it is mounted under)."""
    root = str(request.scope.get("root_path") or "").rstrip("/")
    return f"{request.url.netloc}{root}"


@router.get(
    "/v1/projects/{write_key}/settings",
    summary="Segment analytics.js settings: deliver to this host (its `cdnURL`)",
    responses=error_responses(401, 422),
)
async def segment_settings(write_key: str, request: Request, context: ContextDep) -> Any:
    key = require_write_key(request, context.settings.write_keys, body_key=write_key)
    return {
        "integrations": {
            "Segment.io": {
                "apiKey": key,
                "apiHost": f"{_host(request)}/v1",
                "protocol": request.url.scheme,
            }
        },
        "plan": {"track": {"__default": {"enabled": True}}},
        "edgeFunction": {},
        "analyticsNextEnabled": True,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        "metrics": {"sampleRate": 0},
        "legacyVideoPluginsEnabled": False,
        "remotePlugins": [],
    }


def _source_config(request: Request, context: ContextDep) -> Any:
    key = require_write_key(request, context.settings.write_keys)
    source_id = "lf_" + hashlib.sha256(key.encode()).hexdigest()[:24]
    return {
        "isHosted": False,
        "source": {
            "id": source_id,
            "name": "leadflow",
            "writeKey": key,
            "enabled": True,
            "workspaceId": "leadflow",
            "config": {
                "statsCollection": {
                    "errors": {"enabled": False},
                    "metrics": {"enabled": False},
                }
            },
            "destinations": [],
        },
    }


for _path in ("/sourceConfig", "/sourceConfig/"):
    router.add_api_route(
        _path,
        _source_config,
        methods=["GET"],
        summary="RudderStack JavaScript SDK source configuration (its `configUrl`)",
        include_in_schema=_path == "/sourceConfig",
        responses=error_responses(401),
    )


@router.options("/sourceConfig", include_in_schema=False)
@router.options("/sourceConfig/", include_in_schema=False)
async def source_config_preflight(request: Request) -> Response:
    return preflight(request)
