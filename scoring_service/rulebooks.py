"""Rulebook versions in the database: upload, list, activate; the active one drives scoring."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from scoring_service.models import StoredRulebook
from scoring_service.rules import (
    Rulebook,
    RulebookError,
    parse_rulebook_text,
    read_rulebook_text,
)
from services.clock import Clock

log = logging.getLogger(__name__)


class RulebookConflict(ValueError):
    """A different rulebook is already stored under this version."""


@dataclass(frozen=True)
class ActiveRulebook:
    version: str
    rulebook: Rulebook


async def store(session: AsyncSession, text: str, *, origin: str, clock: Clock) -> StoredRulebook:
    """Validate and store a rulebook version (not activated). The same text again is a no-op."""
    rulebook = parse_rulebook_text(text, origin=origin)
    return await _store_parsed(session, rulebook, text, clock=clock)


async def _store_parsed(
    session: AsyncSession, rulebook: Rulebook, text: str, *, clock: Clock
) -> StoredRulebook:
    existing = await session.get(StoredRulebook, rulebook.version)
    if existing is not None:
        if existing.fingerprint != rulebook.fingerprint():
            raise RulebookConflict(
                f"version {rulebook.version!r} already exists with different rules; "
                "give the new rulebook a new version"
            )
        return existing
    stored = StoredRulebook(
        version=rulebook.version,
        body=text,
        fingerprint=rulebook.fingerprint(),
        active=False,
        created_at=clock.now(),
    )
    session.add(stored)
    await session.flush()
    return stored


async def activate(session: AsyncSession, version: str, *, clock: Clock) -> StoredRulebook:
    stored = await session.get(StoredRulebook, version, with_for_update=True)
    if stored is None:
        raise LookupError(f"no rulebook version {version!r}")
    await session.execute(
        update(StoredRulebook)
        .where(StoredRulebook.active.is_(True), StoredRulebook.version != version)
        .values(active=False)
    )
    if not stored.active:
        stored.active = True
        stored.activated_at = clock.now()
    return stored


async def active_version(session: AsyncSession) -> str | None:
    return await session.scalar(
        select(StoredRulebook.version).where(StoredRulebook.active.is_(True))
    )


async def install_configured(session: AsyncSession, path: Path, *, clock: Clock) -> str:
    """At start: store the configured file; activate it when nothing is active yet or when it
    carries a version the database has not seen (a deliberate deploy). Returns the active one.
    """
    text = read_rulebook_text(path)
    rulebook = parse_rulebook_text(text, origin=str(path))
    current = await active_version(session)
    known = await session.get(StoredRulebook, rulebook.version) is not None
    stored = await _store_parsed(session, rulebook, text, clock=clock)
    if current is None or not known:
        await activate(session, stored.version, clock=clock)
        log.info("rulebook %s from %s is active", stored.version, path)
        return stored.version
    if current != stored.version:
        log.info("rulebook %s stays active (set by the API); %s is stored", current, path)
    return current


class RulebookCache:
    """Parsed rulebooks by version, so each batch only asks the database which is active."""

    def __init__(self) -> None:
        self._parsed: dict[str, Rulebook] = {}

    async def active(self, session: AsyncSession) -> ActiveRulebook:
        version = await active_version(session)
        if version is None:
            raise RulebookError("no rulebook is active; start leadflow with LEADFLOW_RULEBOOK")
        return ActiveRulebook(version, await self.get(session, version))

    async def get(self, session: AsyncSession, version: str) -> Rulebook:
        if version not in self._parsed:
            stored = await session.get(StoredRulebook, version)
            if stored is None:
                raise LookupError(f"no rulebook version {version!r}")
            self._parsed[version] = parse_rulebook_text(stored.body, origin=f"version {version}")
        return self._parsed[version]
