"""What a service hands the launch layer to run it: a `Part`, its HTTP routers plus background
workers, started and stopped together with the other parts of the process.

Each service builds its own part from the shared `AppContext` (`<package>/part.py`,
`build_part(context) -> Part`); `services.launch` keeps the table of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import APIRouter

from services.bus import make_consumer
from services.context import AppContext
from services.outbox import OutboxRelay
from services.runner import ConsumerRunner, ConsumerSpec


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


def consumer_part(
    context: AppContext,
    service: str,
    specs: Sequence[ConsumerSpec[Any]],
    extra: Callable[[OutboxRelay], Sequence[Worker]] = lambda _: (),
) -> Part:
    """A part named `service` running its consumers, its outbox relay, and `extra` workers
    that write to the outbox (they wake the relay when they did)."""
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
