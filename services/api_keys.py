"""Management API keys with roles. Keys are shown once and stored as SHA-256 digests.

Roles nest: `admin` may do what `sales` may, and `sales` what `ops` may.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable
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


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(role: Role) -> str:
    return f"lf_{role}_{secrets.token_urlsafe(24)}"


async def register_key(
    session: AsyncSession, key: str, *, name: str, role: Role, clock: Clock
) -> None:
    if role not in _RANK:
        raise ValueError(f"unknown role {role!r}; choose from {', '.join(ROLES)}")
    session.add(
        ApiKey(
            id=secrets.token_hex(8),
            name=name,
            role=role,
            key_hash=digest(key),
            created_at=clock.now(),
        )
    )


async def create_api_key(session: AsyncSession, *, name: str, role: Role, clock: Clock) -> str:
    """Store a new key and return it in clear; it cannot be recovered later."""
    key = new_key(role)
    await register_key(session, key, name=name, role=role, clock=clock)
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


async def role_of(session: AsyncSession, key: str) -> Role | None:
    stored = await session.scalar(
        select(ApiKey).where(ApiKey.key_hash == digest(key), ApiKey.revoked_at.is_(None))
    )
    if stored is None or stored.role not in _RANK:
        return None
    role: Role = stored.role
    return role


def require_role(minimum: Role) -> Callable[[Request, AsyncSession], Awaitable[Role]]:
    """A dependency refusing callers without a key of at least `minimum`'s rank."""

    async def check(request: Request, session: SessionDep) -> Role:
        key = presented_key(request)
        challenge = {"WWW-Authenticate": "Bearer"}
        if key is None:
            raise ApiError(
                401,
                "unauthorized",
                "missing API key (Authorization: Bearer <key> or X-API-Key)",
                headers=challenge,
            )
        role = await role_of(session, key)
        # End the lookup's transaction: on SQLite it holds the write lock, which the
        # handler's own transaction would otherwise wait for.
        await session.rollback()
        if role is None:
            raise ApiError(401, "unauthorized", "unknown or revoked API key", headers=challenge)
        if _RANK[role] < _RANK[minimum]:
            raise ApiError(403, "forbidden", f"this needs the {minimum} role; the key is {role}")
        return role

    return check

