"""Scoring's HTTP API: the leads router (a lead, its scores and ledger: scoring_service.api.leads)
and the rulebooks router (versions, simulation, re-apply jobs: scoring_service.api.rulebooks).
Their queries are scoring_service.store's."""

from __future__ import annotations

from fastapi import APIRouter

from scoring_service.api import leads, rulebooks
from scoring_service.jobs import Reapplier
from scoring_service.rulebooks import RulebookCache


def build_router(cache: RulebookCache, reapplier: Reapplier) -> APIRouter:
    """Every route of scoring's API."""
    router = APIRouter()
    router.include_router(leads.build_router(cache))
    router.include_router(rulebooks.build_router(cache, reapplier))
    return router
