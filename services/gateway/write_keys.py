"""Write keys where Segment-protocol clients put them: the HTTP basic-auth user name (server
libraries, RudderStack's JavaScript SDK), `writeKey` in the JSON body (analytics.js,
leadflow.js), or `?writeKey=` in the query string (beacons: `navigator.sendBeacon` can set
neither a header nor, with RudderStack's SDK, the body)."""

from __future__ import annotations

import base64
import binascii
import hmac

from fastapi import Request

from services.errors import ApiError

_CHALLENGE = {"WWW-Authenticate": 'Basic realm="leadflow"'}


def write_key_from(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "basic" or not credentials:
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, _, _password = decoded.partition(":")
    return user or None


def is_accepted(key: str, accepted: list[str]) -> bool:
    given = key.encode("utf-8", "surrogatepass")  # a JSON body can hold a lone surrogate
    return any(hmac.compare_digest(given, good.encode()) for good in accepted)


def require_write_key(request: Request, accepted: list[str], *, body_key: object = None) -> str:
    """The caller's write key, from basic auth, else the body's `writeKey`, else the query's
    `writeKey`; 401 otherwise."""
    key = write_key_from(request)
    if key is None and isinstance(body_key, str) and body_key:
        key = body_key
    if key is None:
        key = request.query_params.get("writeKey") or None
    if key is None:
        raise ApiError(
            401,
            "unauthorized",
            "missing write key (HTTP basic auth user name, writeKey in the body, "
            "or ?writeKey= in the query string)",
            headers=_CHALLENGE,
        )
    if not is_accepted(key, accepted):
        raise ApiError(401, "unauthorized", "unknown write key", headers=_CHALLENGE)
    return key
