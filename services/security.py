"""The HTTP API's security schemes, declared in its OpenAPI document so that an API browser
(`/docs`) can authorise: an API key as an HTTP bearer token or in the `X-API-Key` header (the
management routes), a write key as the HTTP basic-auth user name (the tracking routes).

The schemes only declare. Checking stays with services.api_keys (a missing or unknown key is
401, too small a role 403, either header accepted) and services.gateway.write_keys (a write key
may also come as `writeKey` in the body), so no scheme answers a request by itself.
"""

# no `from __future__ import annotations`: the dependency's annotations name a local
from typing import Annotated, Any

from fastapi import Depends, Security
from fastapi.security import APIKeyHeader, HTTPBasic, HTTPBearer
from starlette.requests import HTTPConnection

from services.api_keys import Caller, Role, require_caller, require_role


class _DeclaredBearer(HTTPBearer):
    async def __call__(self, request: HTTPConnection) -> None:
        return None


class _DeclaredKeyHeader(APIKeyHeader):
    async def __call__(self, request: HTTPConnection) -> None:
        return None


class _DeclaredBasic(HTTPBasic):
    async def __call__(self, request: HTTPConnection) -> None:
        return None


API_KEY_BEARER = _DeclaredBearer(
    scheme_name="apiKeyBearer",
    description="A management API key: `Authorization: Bearer <key>`.",
    auto_error=False,
)
API_KEY_HEADER = _DeclaredKeyHeader(
    name="X-API-Key",
    scheme_name="apiKeyHeader",
    description="A management API key in the `X-API-Key` header.",
    auto_error=False,
)
WRITE_KEY = _DeclaredBasic(
    scheme_name="writeKey",
    realm="leadflow",
    description="A write key as the basic-auth user name, password empty (Segment's "
    "libraries); a body's `writeKey` is accepted too.",
    auto_error=False,
)


def api_key(minimum: Role) -> Any:
    """A route dependency refusing callers without an API key of at least `minimum`'s role
    (services.api_keys.require_role), declared with both ways to present the key."""
    check = require_role(minimum)

    async def requires_api_key(
        role: Annotated[Role, Depends(check)],
        _bearer: Annotated[None, Security(API_KEY_BEARER)],
        _header: Annotated[None, Security(API_KEY_HEADER)],
    ) -> Role:
        return role

    return Depends(requires_api_key)


def api_caller(minimum: Role) -> Any:
    """As `api_key`, giving the route who the caller is (`services.api_keys.Caller`: the
    key's id, name, role and the rep a sales key is bound to)."""
    check = require_caller(minimum)

    async def requires_api_key(
        caller: Annotated[Caller, Depends(check)],
        _bearer: Annotated[None, Security(API_KEY_BEARER)],
        _header: Annotated[None, Security(API_KEY_HEADER)],
    ) -> Caller:
        return caller

    return Depends(requires_api_key)


RequireOps = api_key("ops")
RequireSales = api_key("sales")
RequireAdmin = api_key("admin")
OpsCaller = Annotated[Caller, api_caller("ops")]
SalesCaller = Annotated[Caller, api_caller("sales")]
"""A route parameter: the caller, whose key has at least the sales role."""
AdminCaller = Annotated[Caller, api_caller("admin")]
DeclareWriteKey = Security(WRITE_KEY)
"""On a tracking route: documents the write key its handler checks."""
