"""Write keys: the HTTP basic-auth user name, as Segment's libraries send it."""

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


def require_write_key(request: Request, accepted: list[str]) -> str:
    key = write_key_from(request)
    if key is None:
        raise ApiError(
            401, "unauthorized", "missing write key (HTTP basic auth user name)", headers=_CHALLENGE
        )
    if not any(hmac.compare_digest(key.encode(), good.encode()) for good in accepted):
        raise ApiError(401, "unauthorized", "unknown write key", headers=_CHALLENGE)
    return key
