"""`GET /js/leadflow.js`: the browser tracker, shipped inside the package."""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources

from fastapi import APIRouter, Request, Response

router = APIRouter(tags=["ingest"])


@cache
def tracker_source() -> bytes:
    return (resources.files("services.gateway") / "static" / "leadflow.js").read_bytes()


@router.get(
    "/js/leadflow.js",
    summary="The browser tracker (page views, time on page, identify on form submit)",
    response_class=Response,
)
async def leadflow_js(request: Request) -> Response:
    source = tracker_source()
    etag = f'"{hashlib.sha256(source).hexdigest()[:20]}"'
    headers = {"Cache-Control": "public, max-age=300", "ETag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(source, media_type="text/javascript; charset=utf-8", headers=headers)
