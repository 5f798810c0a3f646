"""`leadflow bench gateway`: ingest throughput and latency, next to a ceiling.

Starts its own embedded broker and the gateway on a loopback port (uvicorn, one process), and
beside it a bare FastAPI endpoint that answers at once (the ceiling: what this machine's HTTP
stack does with no work). A separate load process drives each with concurrent httpx clients,
bounded in requests and seconds, and prints requests/s and p50/p99 latency for `/v1/track`
and events/s for `/v1/batch`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from services.broker import EmbeddedBroker, free_port
from services.bus import ensure_topics
from services.clock import SystemClock
from services.launch.runtime import Runtime, tune_garbage_collector
from services.settings import Settings

WRITE_KEY = "bench-key"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="leadflow bench gateway", description=__doc__)
    parser.add_argument("--requests", type=int, default=3000, help="track calls per target")
    parser.add_argument("--concurrency", type=int, default=32, help="clients in flight")
    parser.add_argument("--batches", type=int, default=200, help="batch calls per target")
    parser.add_argument("--batch-size", type=int, default=100, help="events per batch call")
    parser.add_argument("--seconds", type=float, default=20.0, help="time limit per measurement")
    return parser.parse_args(argv)


@dataclass
class Result:
    ok: int
    failed: int
    seconds: float
    latencies: list[float]

    def percentile(self, fraction: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000

    @property
    def per_second(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


def _track_body(index: int) -> dict[str, Any]:
    return {
        "event": "page_view",
        "anonymousId": f"bench-{index % 500}",
        "messageId": f"bench-{uuid.uuid4()}",
        "properties": {"url": "https://example.com/pricing"},
    }


def _batch_body(size: int) -> dict[str, Any]:
    return {"batch": [{"type": "track", **_track_body(index)} for index in range(size)]}


async def _drive(
    url: str, kind: str, total: int, concurrency: int, seconds: float, batch_size: int, label: str
) -> Result:
    latencies: list[float] = []
    failed = 0
    issued = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=url, auth=(WRITE_KEY, ""), limits=limits, timeout=30
    ) as client:
        started = time.perf_counter()
        deadline = started + seconds
        next_report = started + 2.0

        async def worker() -> None:
            nonlocal issued, failed, next_report
            while issued < total and time.perf_counter() < deadline:
                issued += 1
                if kind == "track":
                    path, body = "/v1/track", _track_body(issued)
                else:
                    path, body = "/v1/batch", _batch_body(batch_size)
                sent = time.perf_counter()
                response = await client.post(path, json=body)
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - sent)
                else:
                    failed += 1
                now = time.perf_counter()
                if now >= next_report:
                    next_report = now + 2.0
                    print(f"  {label}: {len(latencies)}/{total} answered", flush=True)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return Result(len(latencies), failed, elapsed, latencies)


def _load_process(url: str, kind: str, options: dict[str, Any], label: str, out: Any) -> None:
    result = asyncio.run(_drive(url, kind, label=label, **options))
    out.send(result)
    out.close()


def measure(url: str, kind: str, options: dict[str, Any], label: str) -> Result:
    """Drive `url` from a separate process, so the load does not share the server's core."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_load_process, args=(url, kind, options, label, sender))
    process.start()
    sender.close()
    result: Result = receiver.recv()
    process.join()
    return result


def ceiling_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/track")
    async def track() -> dict[str, bool]:
        return {"success": True}

    @app.post("/v1/batch")
    async def batch() -> dict[str, bool]:
        return {"success": True}

    return app


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def _serving(app: Any) -> AsyncIterator[str]:
    server = _Server(
        uvicorn.Config(app, host="127.0.0.1", port=free_port(), lifespan="off", log_level="error")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        await task


def _line(name: str, result: Result, unit: str = "req/s", scale: int = 1) -> str:
    rate = result.per_second * scale
    return (
        f"  {name:<34} {rate:>9.0f} {unit:<8} p50 {result.percentile(0.5):7.1f} ms"
        f"  p99 {result.percentile(0.99):7.1f} ms  ({result.ok} ok, {result.failed} failed)"
    )


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="leadflow-bench-") as data_dir:
        async with EmbeddedBroker() as broker:
            settings = settings.model_copy(
                update={
                    "kafka_bootstrap": broker.bootstrap,
                    "database_url": f"sqlite+aiosqlite:///{Path(data_dir) / 'bench.db'}",
                    "data_dir": Path(data_dir),
                    "topic_prefix": f"bench{uuid.uuid4().hex[:6]}.",
                    "write_keys": [WRITE_KEY],
                    "webhook_secrets": {},
                }
            )
            await ensure_topics(settings)
            runtime = Runtime(settings, SystemClock(), ["gateway"])
            await runtime.start()
            tune_garbage_collector()
            try:
                async with _serving(runtime.app) as gateway, _serving(ceiling_app()) as ceiling:
                    print(f"gateway {gateway}, ceiling {ceiling}, broker {broker.bootstrap}")
                    track = {
                        "total": args.requests,
                        "concurrency": args.concurrency,
                        "seconds": args.seconds,
                        "batch_size": args.batch_size,
                    }
                    batch = {**track, "total": args.batches}
                    results = {}
                    for name, url, kind, options in (
                        ("ceiling /v1/track", ceiling, "track", track),
                        ("gateway /v1/track", gateway, "track", track),
                        ("ceiling /v1/batch", ceiling, "batch", batch),
                        ("gateway /v1/batch", gateway, "batch", batch),
                    ):
                        print(f"measuring {name} ...", flush=True)
                        results[name] = await asyncio.to_thread(measure, url, kind, options, name)
            finally:
                await runtime.stop()
    print(
        f"\nresults ({args.concurrency} concurrent clients, batches of {args.batch_size}; "
        "the gateway answers after the broker's acks=all acknowledgement):"
    )
    print(_line("ceiling (bare FastAPI) /v1/track", results["ceiling /v1/track"]))
    print(_line("gateway /v1/track", results["gateway /v1/track"]))
    print(
        _line(
            "ceiling (bare FastAPI) /v1/batch",
            results["ceiling /v1/batch"],
            "events/s",
            args.batch_size,
        )
    )
    print(_line("gateway /v1/batch", results["gateway /v1/batch"], "events/s", args.batch_size))
    failed = sum(result.failed for result in results.values())
    return 1 if failed else 0


def main(settings: Settings, argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(_run(settings, args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
