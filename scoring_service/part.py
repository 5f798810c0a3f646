"""The scoring service's part: the activity and lifecycle consumers, the MQL promoter (holds
and announces qualifications), their outbox relay, the leads and rulebooks API, installing the
configured rulebook at start and stopping re-apply jobs at the end."""

from __future__ import annotations

from datetime import timedelta

from scoring_service.api import build_router
from scoring_service.consumer import ActivityApplier
from scoring_service.jobs import Reapplier
from scoring_service.lifecycle import LifecycleApplier
from scoring_service.promoter import MqlPromoter
from scoring_service.rulebooks import RulebookCache, install_configured
from scoring_service.rules import load_rulebook
from services.context import AppContext
from services.outbox import OutboxRelay
from services.parts import Part, Worker, consumer_part


def build_part(context: AppContext) -> Part:
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

    part = consumer_part(
        context, "scoring", [applier.spec(), LifecycleApplier(applier, clock).spec()], promoter
    )
    part.routers.append(build_router(cache, reapplier))

    async def install_rulebook() -> None:
        async with context.sessions() as session, session.begin():
            await install_configured(session, settings.rulebook, clock=clock)

    part.setup.append(install_rulebook)
    part.teardown.append(reapplier.stop)
    return part
