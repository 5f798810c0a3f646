"""Runs parts (`services.parts.Part`: a service's HTTP routers and background workers), started
and stopped together in one process. `leadflow dev` runs every part, `leadflow serve X` one.
`PARTS` is the one table of every service; adding a service is adding its row."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Callable, Sequence

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from handoff_service.part import build_part as build_handoff_part
from scoring_service.part import build_part as build_scoring_part
from services.app import create_app
from services.bus import Publisher
from services.clock import Clock
from services.context import AppContext
from services.db import create_engine, session_factory
from services.gateway.part import build_part as build_gateway_part
from services.parts import Part
from services.settings import Settings
from sla_monitor.part import build_part as build_sla_part

log = logging.getLogger(__name__)

PARTS: dict[str, Callable[[AppContext], Part]] = {
    "gateway": build_gateway_part,
    "scoring": build_scoring_part,
    "handoff": build_handoff_part,
    "sla": build_sla_part,
}
"""Every part leadflow can run, in start order: what each service hands over."""
PART_NAMES = tuple(PARTS)

STOP_GRACE_SECONDS = 10.0
YOUNG_COLLECTION_THRESHOLD = 20_000


def tune_garbage_collector() -> None:
    """For a long-running process, once it has started: what is alive now (modules, the
    app, compiled rulebooks) is moved out of the collector's sight with `gc.freeze`, and
    young collections run every 20,000 allocations instead of 700. A consumer batch builds
    tens of thousands of short-lived objects, and with the defaults the collector kept
    re-walking the same long-lived ones: `leadflow bench scoring` spent about a fifth of its
    time there."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, middle, old)


def build_part(name: str, context: AppContext) -> Part:
    """Loads the part's configuration (rulebook, routing file, policy) and assembles it."""
    try:
        build = PARTS[name]
    except KeyError:
        raise ValueError(f"unknown part {name!r}; choose from {', '.join(PART_NAMES)}") from None
    return build(context)


class Runtime:
    """The parts of one process, sharing one engine and one publisher."""

    def __init__(self, settings: Settings, clock: Clock, part_names: Sequence[str]) -> None:
        if not settings.kafka_bootstrap:
            raise ValueError("Runtime needs settings.kafka_bootstrap")
        self.settings = settings
        self.clock = clock
        self.part_names = tuple(part_names)
        self.stop_event = asyncio.Event()
        self._engine: AsyncEngine = create_engine(settings.effective_database_url)
        self.context = AppContext(
            settings=settings,
            sessions=session_factory(self._engine),
            publisher=Publisher(settings),
            clock=clock,
        )
        self.parts = [build_part(name, self.context) for name in self.part_names]
        self.app: FastAPI = create_app(
            self.context,
            [router for part in self.parts for router in part.routers],
            parts=self.part_names,
        )
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.context.publisher.start()
        for part in self.parts:
            for step in part.setup:
                await step()
        for part in self.parts:
            for worker in part.workers:
                task = asyncio.create_task(worker.run(self.stop_event), name=f"{part.name}-worker")
                self._tasks.append(task)

    async def wait(self) -> None:
        """Returns when stop is requested or a worker died (whose error is then raised)."""
        stop_waiter = asyncio.create_task(self.stop_event.wait())
        try:
            done, _ = await asyncio.wait(
                [stop_waiter, *self._tasks], return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stop_waiter.cancel()
        for task in done:
            if task is not stop_waiter and task.exception() is not None:
                raise RuntimeError(f"{task.get_name()} stopped") from task.exception()

    async def stop(self) -> None:
        self.stop_event.set()
        for part in self.parts:
            for step in part.teardown:
                await step()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=STOP_GRACE_SECONDS)
            for task in pending:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self.context.publisher.stop()
        await self._engine.dispose()
