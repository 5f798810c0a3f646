"""What every component is handed: settings, database sessions, the publisher, the clock."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.bus import Publisher
from services.clock import Clock
from services.settings import Settings


@dataclass(frozen=True)
class AppContext:
    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    publisher: Publisher
    clock: Clock
