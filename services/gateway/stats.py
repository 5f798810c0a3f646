"""Counters of what the gateway did that no response shows (pixel problems, bots flagged),
kept per process and served on `GET /gateway/stats`."""

from __future__ import annotations

from collections import Counter

from fastapi import Request


def stats(request: Request) -> Counter[str]:
    """The counters of the app serving this request (one set per app, created on first use)."""
    state = request.app.state
    counters: Counter[str] | None = getattr(state, "gateway_stats", None)
    if counters is None:
        counters = Counter()
        state.gateway_stats = counters
    return counters
