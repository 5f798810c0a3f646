"""Counters of what the gateway did that no response shows (pixel problems, bots flagged),
kept per process and served on `GET /gateway/stats`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from fastapi import Request

from schemas.envelope import CloudEvent


def stats(request: Request) -> Counter[str]:
    """The counters of the app serving this request (one set per app, created on first use)."""
    state = request.app.state
    counters: Counter[str] | None = getattr(state, "gateway_stats", None)
    if counters is None:
        counters = Counter()
        state.gateway_stats = counters
    return counters


def count_bots(request: Request, events: Sequence[CloudEvent[Any]]) -> None:
    """Count the events flagged as bot traffic, once the broker has acknowledged them."""
    flagged = sum(1 for event in events if event.data.is_bot)
    if flagged:
        stats(request)["bots_flagged"] += flagged
