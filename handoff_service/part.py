"""The handoff service's part: the router consuming `lead.mql` and `sla.events`, the queue
drainer, their outbox relay, the handoff and reps API, and seeding the reps from the routing
file at start."""

from __future__ import annotations

from handoff_service import roster
from handoff_service.actions_api import action_routers
from handoff_service.api import router
from handoff_service.consumer import MqlRouter
from handoff_service.dispatch import Dispatcher
from handoff_service.queue import QueueDrainer
from handoff_service.reps_api import build_router as build_reps_router
from handoff_service.routing_file import load_routing
from services.context import AppContext
from services.outbox import OutboxRelay
from services.parts import Part, Worker, consumer_part


def build_part(context: AppContext) -> Part:
    """Loads the configured routing file (a bad file stops the start, naming the file, the
    line and the field) and assembles the part."""
    settings, clock = context.settings, context.clock
    routing = load_routing(settings.routing)
    dispatcher = Dispatcher(routing, clock)

    def drainer(relay: OutboxRelay) -> list[Worker]:
        return [
            QueueDrainer(
                context.sessions,
                dispatcher,
                clock,
                poll_interval=settings.poll_interval_seconds,
                after_commit=relay.notify,
            )
        ]

    part = consumer_part(context, "handoff", [MqlRouter(dispatcher).spec()], drainer)
    part.routers.extend([router, build_reps_router(routing)])
    part.routers.extend(action_routers(context, dispatcher))

    async def seed_reps() -> None:
        async with context.sessions() as session, session.begin():
            await roster.seed(session, routing, f"file:{settings.routing}", clock.now())

    part.setup.append(seed_reps)
    return part
