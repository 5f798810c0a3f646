"""Management API keys with roles. Keys are shown once and stored as SHA-256 digests.

Roles nest: `admin` may do what `sales` may, and `sales` what `ops` may. A `sales` key may be
bound to a rep (`rep_id`): the handoff service then lets it act only on that rep's leads.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fastapi import Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.clock import Clock
from services.deps import SessionDep
from services.errors import ApiError
from services.models import ApiKey

Role = Literal["ops", "sales", "admin"]
ROLES: tuple[Role, ...] = ("ops", "sales", "admin")
_RANK = {role: rank for rank, role in enumerate(ROLES)}


REP_ID_LENGTH = 100
"""As long as a rep id can be (the handoff service's column)."""


@dataclass(frozen=True)
class Caller:
    """Who presented a valid API key: what a route may check beyond the role, and record."""

    key_id: str
    name: str
    """The key's name (`leadflow apikey create --name`): who acted, in what the key did."""
    role: Role
    rep_id: str | None = None
    """The rep a sales key is bound to; None for an unbound key."""


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(role: Role) -> str:
    return f"lf_{role}_{secrets.token_urlsafe(24)}"


async def register_key(
    session: AsyncSession,
    key: str,
    *,
    name: str,
    role: Role,
    clock: Clock,
    rep_id: str | None = None,
) -> None:
    """Store `key` (hashed). `rep_id` binds a sales key to a rep; whether that rep exists is
    the handoff service's to say, so the caller checks it first."""
    if role not in _RANK:
        raise ValueError(f"unknown role {role!r}; choose from {', '.join(ROLES)}")
    if rep_id is not None:
        if role != "sales":
            raise ValueError(f"only a sales key is bound to a rep; this one is {role}")
        if not rep_id.strip() or len(rep_id) > REP_ID_LENGTH:
            raise ValueError(f"a rep id has 1 to {REP_ID_LENGTH} characters")
    session.add(
        ApiKey(
            id=secrets.token_hex(8),
            name=name,
            role=role,
            key_hash=digest(key),
            created_at=clock.now(),
            rep_id=rep_id,
        )
    )


async def create_api_key(
    session: AsyncSession, *, name: str, role: Role, clock: Clock, rep_id: str | None = None
) -> str:
    """Store a new key and return it in clear; it cannot be recovered later."""
    key = new_key(role)
    await register_key(session, key, name=name, role=role, clock=clock, rep_id=rep_id)
    return key


def kept_key(path: Path, make: Callable[[], str]) -> str:
    """A key kept in a file (readable only by its owner), made on first use."""
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    key = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(key + "\n", encoding="utf-8")
    path.chmod(0o600)
    return key


async def ensure_registered(
    session: AsyncSession, key: str, *, name: str, role: Role, clock: Clock
) -> None:
    if await role_of(session, key) is None:
        await register_key(session, key, name=name, role=role, clock=clock)


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key") or None


async def caller_of(session: AsyncSession, key: str) -> Caller | None:
    """The holder of `key`, or None when it is unknown or revoked."""
    stored = await session.scalar(
        select(ApiKey).where(ApiKey.key_hash == digest(key), ApiKey.revoked_at.is_(None))
    )
    if stored is None or stored.role not in _RANK:
        return None
    role: Role = stored.role
    return Caller(key_id=stored.id, name=stored.name, role=role, rep_id=stored.rep_id)


async def role_of(session: AsyncSession, key: str) -> Role | None:
    caller = await caller_of(session, key)
    return None if caller is None else caller.role


def require_caller(minimum: Role) -> Callable[[Request, AsyncSession], Awaitable[Caller]]:
    """A dependency refusing callers without a key of at least `minimum`'s rank; gives who
    the caller is (the key's id, name, role and bound rep)."""

    async def check(request: Request, session: SessionDep) -> Caller:
        key = presented_key(request)
        challenge = {"WWW-Authenticate": "Bearer"}
        if key is None:
            raise ApiError(
                401,
                "unauthorized",
                "missing API key (Authorization: Bearer <key> or X-API-Key)",
                headers=challenge,
            )
        caller = await caller_of(session, key)
        # End the lookup's transaction: on SQLite it holds the write lock, which the
        # handler's own transaction would otherwise wait for.
        await session.rollback()
        if caller is None:
            raise ApiError(401, "unauthorized", "unknown or revoked API key", headers=challenge)
        if _RANK[caller.role] < _RANK[minimum]:
            raise ApiError(
                403, "forbidden", f"this needs the {minimum} role; the key is {caller.role}"
            )
        return caller

    return check


def require_role(minimum: Role) -> Callable[[Request, AsyncSession], Awaitable[Role]]:
    """A dependency refusing callers without a key of at least `minimum`'s rank."""
    identify = require_caller(minimum)

    async def check(request: Request, session: SessionDep) -> Role:
        return (await identify(request, session)).role

    return check
