"""The FastAPI application: error handlers, health, and the routers of the parts it serves."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, FastAPI
from pydantic import BaseModel, Field

from services.context import AppContext
from services.errors import install_error_handlers


class Health(BaseModel):
    status: str = Field(description="`ok` while the process serves")
    parts: list[str] = Field(description="The parts this process runs: gateway, scoring, …")


def create_app(
    context: AppContext, routers: Sequence[APIRouter], *, parts: Sequence[str]
) -> FastAPI:
    app = FastAPI(
        title="leadflow",
        summary="Lead scoring, handoff and sales/marketing SLA monitoring",
        version="0.1.0",
    )
    app.state.context = context
    install_error_handlers(app)

    @app.get("/healthz", tags=["ops"], summary="Liveness, and which parts this process runs")
    async def health() -> Health:
        return Health(status="ok", parts=list(parts))

    for router in routers:
        app.include_router(router)
    return app
