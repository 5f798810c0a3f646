"""Wires services into running parts: HTTP routers plus background workers, started and
stopped together. `leadflow dev` runs every part in one process; `leadflow serve X` one."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

from fastapi import APIRouter, FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from handoff_service.api import router as handoff_router
from handoff_service.consumer import MqlRouter
from handoff_service.routing import load_roster
from scoring_service.api import build_router as build_scoring_router
from scoring_service.consumer import ActivityApplier
from scoring_service.jobs import Reapplier
from scoring_service.lifecycle import LifecycleApplier
from scoring_service.promoter import MqlPromoter
from scoring_service.rulebooks import RulebookCache, install_configured
from scoring_service.rules import load_rulebook
from services.app import create_app
from services.bus import Publisher, make_consumer
from services.clock import Clock
from services.context import AppContext
from services.db import create_engine, session_factory
from services.gateway.api import router as gateway_router
from services.outbox import OutboxRelay
from services.runner import ConsumerRunner, ConsumerSpec
from services.settings import Settings
from sla_monitor.api import build_router as build_sla_router
from sla_monitor.consumer import ClockStarter
from sla_monitor.policy import load_policy

log = logging.getLogger(__name__)

PART_NAMES = ("gateway", "scoring", "handoff", "sla")

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


class Worker(Protocol):
    async def run(self, stop: asyncio.Event) -> None: ...


@dataclass
class Part:
    name: str
    routers: list[APIRouter] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)
    setup: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    """Runs once before the workers start (e.g. installing the configured rulebook)."""
    teardown: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


def _consumers(
    context: AppContext,
    service: str,
    specs: Sequence[ConsumerSpec[Any]],
    extra: Callable[[OutboxRelay], Sequence[Worker]] = lambda _: (),
) -> Part:
    """The service's consumers, its outbox relay, and `extra` workers that write to the
    outbox (they wake the relay when they did)."""
    settings = context.settings
    relay = OutboxRelay(
        service,
        context.sessions,
        context.publisher,
        batch_size=settings.outbox_batch_size,
        poll_interval=settings.poll_interval_seconds,
    )
    runners: list[Worker] = [
        ConsumerRunner(
            spec,
            make_consumer(settings, spec.group_id, *spec.topics),
            context.sessions,
            context.publisher,
            context.clock,
            topic_prefix=settings.topic_prefix,
            after_commit=relay.notify,
        )
        for spec in specs
    ]
    return Part(service, workers=[*runners, *extra(relay), relay])


def build_part(name: str, context: AppContext) -> Part:
    """Loads the part's configuration (rulebook, roster, policy) and assembles it."""
    settings, clock = context.settings, context.clock
    if name == "gateway":
        from services.gateway.webhooks import build_router as build_webhook_router

        return Part(name, routers=[gateway_router, build_webhook_router(settings)])
    if name == "scoring":
        return _scoring_part(context)
    if name == "handoff":
        roster = load_roster(settings.roster)
        part = _consumers(context, name, [MqlRouter(roster, clock).spec()])
        part.routers.append(handoff_router)
        return part
    if name == "sla":
        policy = load_policy(settings.sla_policy)
        part = _consumers(context, name, [ClockStarter(policy, clock).spec()])
        part.routers.append(build_sla_router(policy))
        return part
    raise ValueError(f"unknown part {name!r}; choose from {', '.join(PART_NAMES)}")


def _scoring_part(context: AppContext) -> Part:
    settings, clock = context.settings, context.clock
    load_rulebook(settings.rulebook)  # a bad file stops the start with a clear message
    cache = RulebookCache()
    applier = ActivityApplier(cache, clock, mql_hold=timedelta(seconds=settings.mql_hold_seconds))
    reapplier = Reapplier(context.sessions, applier, clock)

    def promoter(relay: OutboxRelay) -> list[Worker]:
        return [
            MqlPromoter(
                context.sessions,
                applier,
                clock,
                poll_interval=settings.poll_interval_seconds,
                after_commit=relay.notify,
            )
        ]

    part = _consumers(
        context, "scoring", [applier.spec(), LifecycleApplier(applier, clock).spec()], promoter
    )
    part.routers.append(build_scoring_router(cache, reapplier))

    async def install_rulebook() -> None:
        async with context.sessions() as session, session.begin():
            await install_configured(session, settings.rulebook, clock=clock)

    part.setup.append(install_rulebook)
    part.teardown.append(reapplier.stop)
    return part


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
