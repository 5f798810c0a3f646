"""Helpers for tests: reading topics with a plain consumer, waiting for a condition."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

import uvicorn
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from services.broker import free_port
from services.settings import Settings

T = TypeVar("T")


async def read_topic(
    settings: Settings,
    topic: str,
    *,
    expect: int,
    timeout: float = 15.0,
) -> list[Any]:
    """Read `topic` from the beginning with a group-less consumer until `expect` records arrived
    (and a short quiet period after, so extra records are seen too)."""
    consumer = AIOKafkaConsumer(
        settings.topic(topic),
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    records: list[Any] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        quiet_until: float | None = None
        while loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for part in batch.values():
                records.extend(part)
            if len(records) >= expect:
                quiet_until = quiet_until or loop.time() + 0.3
                if loop.time() >= quiet_until:
                    break
    finally:
        await consumer.stop()
    return records


def values(records: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(record.value) for record in records]


async def produce(
    settings: Settings, topic: str, items: Sequence[tuple[bytes | None, bytes]]
) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=False
    )
    await producer.start()
    try:
        for key, value in items:
            await producer.send_and_wait(settings.topic(topic), key=key, value=value)
    finally:
        await producer.stop()


async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    *,
    timeout: float = 15.0,
    interval: float = 0.05,
) -> T:
    """Poll `probe` until it returns something other than None (or falsy)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await probe()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {result!r})")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def serving(app: Any, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port in this event loop, for clients
    that need a real socket (client libraries, browsers); yields the base URL."""
    server = _QuietServer(
        uvicorn.Config(app, host=host, port=free_port(host), lifespan="off", log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn stopped before it started")
            await asyncio.sleep(0.02)
        yield f"http://{host}:{server.config.port}"
    finally:
        server.should_exit = True
        await task


class _QuietServer(uvicorn.Server):
    """uvicorn without signal handlers: pytest owns the process's signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
