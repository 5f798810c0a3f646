"""Reading request bodies as Segment's API does: size limits, gzip, JSON in any content type."""

from __future__ import annotations

import json
import zlib
from typing import Any

from fastapi import Request

from services.errors import ApiError
from services.gateway.clean import MAX_DEPTH, depth

MAX_EVENT_BYTES = 32 * 1024
"""Segment's limit for one message (and for a single-call endpoint's whole body)."""
MAX_BATCH_BYTES = 500 * 1024
"""Segment's limit for a `/v1/batch` body."""


def too_large(size: int | str, limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"body is {size} bytes; limit is {limit}")


def gunzip(data: bytes, limit: int) -> bytes:
    """Decompress without ever holding more than `limit` bytes (no zip bombs)."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise ApiError(400, "invalid_body", f"body is not valid gzip: {exc}") from exc
    if len(out) > limit or inflater.unconsumed_tail:
        raise too_large(f"more than {limit}", limit)
    if not inflater.eof:
        raise ApiError(400, "invalid_body", "gzip body is truncated")
    return out


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, decompressed when `Content-Encoding: gzip`; 413 past `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large(int(declared), limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(f"more than {limit}", limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding == "gzip":
        return gunzip(body, limit)
    if encoding not in ("", "identity"):
        raise ApiError(415, "unsupported_encoding", f"Content-Encoding {encoding!r} not supported")
    return body


def shallow(value: Any) -> Any:
    """`value`, or 400 when it nests more than MAX_DEPTH levels."""
    if depth(value) > MAX_DEPTH:
        raise ApiError(400, "invalid_body", f"body nests more than {MAX_DEPTH} levels deep")
    return value


def parse_json(body: bytes) -> Any:
    """ValueError covers bad UTF-8 and integers too long to convert as well as bad JSON;
    RecursionError a body nested past the parser's own limit."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {exc}") from exc
    return shallow(value)


def parse_json_object(body: bytes) -> dict[str, Any]:
    """JSON whatever the content type (browsers send text/plain to avoid a CORS preflight)."""
    payload = parse_json(body)
    if not isinstance(payload, dict):
        raise ApiError(400, "invalid_json", "body must be a JSON object")
    return payload
