"""`leadflow bench scoring`: a realistic activity stream through the embedded broker into the
scoring service, on SQLite and PostgreSQL, next to a consumer that only reads (the ceiling).

Phases, per database:
1. throughput: N events (Zipf-skewed over leads, a marketing mix of activity types) are put
   on `lead.activity` first; the scoring service drains them; events/s = N / drain time.
2. latency: background traffic plus demo requests produced at a steady pace; for each demo
   request, the time from the broker's ack to its `lead.mql` being readable.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import json
import random
import resource
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from sqlalchemy import func, select

from schemas.events import ActivityType, Identity
from schemas.topics import LEAD_ACTIVITY, LEAD_MQL
from services.broker import EmbeddedBroker
from services.bus import ensure_topics
from services.clock import SystemClock
from services.gateway.clean import activity_event
from services.launch.migrate import upgrade
from services.launch.runtime import Runtime, tune_garbage_collector
from services.models import OutboxRecord
from services.runner import ConsumerRunner
from services.settings import Settings

MIX: Sequence[tuple[float, ActivityType, dict[str, Any]]] = (
    (0.40, ActivityType.PAGE_VIEW, {"url": "https://example.com/blog/post"}),
    (0.10, ActivityType.PAGE_VIEW, {"url": "https://example.com/pricing"}),
    (0.08, ActivityType.PAGE_VIEW, {"url": "https://example.com/product/tour"}),
    (0.02, ActivityType.PAGE_VIEW, {"url": "https://example.com/careers"}),
    (0.15, ActivityType.EMAIL_OPEN, {"campaign": "nurture-1"}),
    (0.08, ActivityType.EMAIL_CLICK, {"campaign": "nurture-1"}),
    (0.06, ActivityType.CONTENT_DOWNLOAD, {"content": "whitepaper-roi"}),
    (0.04, ActivityType.WEBINAR_REGISTER, {"webinar": "w-42"}),
    (0.03, ActivityType.WEBINAR_ATTEND, {"webinar": "w-42"}),
    (0.035, ActivityType.FORM_SUBMIT, {"form": "newsletter"}),
    (0.005, ActivityType.FORM_SUBMIT, {"form": "demo-request"}),
)
INDUSTRIES = ("software", "finance", "healthcare", "retail", "manufacturing", "education")


@dataclass
class Result:
    database: str
    events: int
    seconds: float
    ceiling_per_second: float
    latencies: list[float]
    mqls: int

    @property
    def per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


class Stream:
    """Deterministic (seeded) synthetic activity: Zipf-skewed leads, a marketing mix."""

    def __init__(self, leads: int, skew: float, seed: int) -> None:
        self._random = random.Random(seed)
        weights = [1.0 / (rank**skew) for rank in range(1, leads + 1)]
        self._cumulative = list(itertools.accumulate(weights))
        self._mix_cumulative = list(itertools.accumulate(share for share, _, _ in MIX))
        self._start = datetime(2026, 10, 1, tzinfo=UTC)
        self._counter = itertools.count()
        self._fresh_blocks = 0

    def next_fresh(self) -> int:
        """A block of lead numbers no earlier call handed out (for leads that must be new)."""
        self._fresh_blocks += 1
        return self._fresh_blocks * 1_000_000

    def _lead(self) -> int:
        point = self._random.random() * self._cumulative[-1]
        return bisect.bisect_left(self._cumulative, point)

    def event(self, *, lead: int | None = None, demo: bool = False) -> tuple[bytes, bytes, str]:
        number = next(self._counter)
        lead = self._lead() if lead is None else lead
        if demo:
            kind, properties = ActivityType.FORM_SUBMIT, {"form": "demo-request"}
        else:
            point = self._random.random() * self._mix_cumulative[-1]
            _, kind, properties = MIX[bisect.bisect_left(self._mix_cumulative, point)]
        identity = Identity(email=f"lead{lead}@corp{lead % 997}.example.com")
        attributes = {
            "industry": INDUSTRIES[lead % len(INDUSTRIES)],
            "company_size": 20 + (lead * 37) % 5000,
        }
        time_ = self._start + timedelta(seconds=number * 7)
        event_id = f"bench-{uuid.UUID(int=self._random.getrandbits(128))}"
        event = activity_event(
            event_id=event_id,
            source="bench",
            time=time_,
            identity=identity,
            activity_type=kind,
            event_name=kind.value,
            properties=dict(properties),
            attributes=attributes if number % 5 == 0 else {},
            context={},
            channel="bench",
            received_at=time_,
        )
        return identity.key().encode(), event.model_dump_json().encode(), event_id

    def events(self, count: int) -> Iterator[tuple[bytes, bytes, str]]:
        for _ in range(count):
            yield self.event()


async def produce(settings: Settings, records: Sequence[tuple[bytes, bytes, str]]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=False,
        linger_ms=5,
        max_batch_size=256 * 1024,
    )
    await producer.start()
    try:
        topic = settings.topic(LEAD_ACTIVITY)
        for start in range(0, len(records), 5000):
            futures = [
                await producer.send(topic, key=key, value=value)
                for key, value, _ in records[start : start + 5000]
            ]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def ceiling(settings: Settings, expect: int) -> float:
    """Events/s of a consumer that only reads `lead.activity` (what no service can beat)."""
    consumer = AIOKafkaConsumer(
        settings.topic(LEAD_ACTIVITY),
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"{settings.topic_prefix}ceiling",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=settings.consumer_batch_size,
        session_timeout_ms=settings.consumer_session_timeout_ms,
        heartbeat_interval_ms=settings.consumer_session_timeout_ms // 10,
    )
    await consumer.start()
    try:
        while not consumer.assignment():
            await consumer.getmany(timeout_ms=50)
        seen, began = 0, time.perf_counter()
        while seen < expect:
            batches = await consumer.getmany(timeout_ms=500)
            seen += sum(len(records) for records in batches.values())
            if seen:
                await consumer.commit()
        return seen / (time.perf_counter() - began)
    finally:
        await consumer.stop()


def _scoring_runner(runtime: Runtime) -> ConsumerRunner[Any]:
    for part in runtime.parts:
        for worker in part.workers:
            if isinstance(worker, ConsumerRunner) and worker.spec.group_id == "scoring":
                return worker
    raise RuntimeError("no scoring consumer in the runtime")


async def drain(runtime: Runtime, expect: int, label: str) -> float:
    """Seconds from the scoring consumer's partition assignment (the backlog is waiting by
    then) until it has applied `expect` events: the first fetch and batch are counted."""
    runner = _scoring_runner(runtime)
    began: float | None = None
    last_report = time.perf_counter()
    while began is None or runner.applied < expect:
        await asyncio.sleep(0.005)
        now = time.perf_counter()
        if began is None:
            began = now if runner.assignment() else None
        elif now - last_report > 2:
            last_report = now
            print(f"  [{label}] scored {runner.applied:,}/{expect:,}", flush=True)
    return time.perf_counter() - began


async def outbox_drained(runtime: Runtime) -> None:
    """Wait until the relay published the throughput phase's events, so the latency phase
    measures the pipeline, not that backlog."""
    while True:
        async with runtime.context.sessions() as session:
            pending = await session.scalar(select(func.count()).select_from(OutboxRecord))
        if not pending:
            return
        await asyncio.sleep(0.1)


async def _read_arrivals(
    consumer: AIOKafkaConsumer,
    arrivals: dict[str, float],
    acked: dict[str, float],
    expect: int,
) -> None:
    """Note when each MQL arrives, until `expect` of the acknowledged triggers have."""
    while len(arrivals.keys() & acked.keys()) < expect:
        batches = await consumer.getmany(timeout_ms=50)
        arrived = time.perf_counter()
        for record in itertools.chain.from_iterable(batches.values()):
            arrivals[f"email:{json.loads(record.value)['data']['email']}"] = arrived


async def mql_latencies(
    settings: Settings, stream: Stream, *, triggers: int, background: int
) -> list[float]:
    """Seconds from a demo request's broker ack until its lead.mql can be read, with
    background traffic around it; a reader runs meanwhile and notes each MQL's arrival."""
    consumer = AIOKafkaConsumer(
        settings.topic(LEAD_MQL),
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        auto_offset_reset="latest",
        enable_auto_commit=False,
        fetch_max_wait_ms=5,
    )
    await consumer.start()
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=False
    )
    await producer.start()
    acked: dict[str, float] = {}
    arrivals: dict[str, float] = {}
    try:
        await consumer.getmany(timeout_ms=200)
        reader = asyncio.create_task(_read_arrivals(consumer, arrivals, acked, triggers))
        topic = settings.topic(LEAD_ACTIVITY)
        fresh_leads = itertools.count(10_000_000 + stream.next_fresh())
        for _ in range(triggers):
            for key, value, _ in stream.events(background // triggers):
                await producer.send(topic, key=key, value=value)
            key, value, _ = stream.event(lead=next(fresh_leads), demo=True)
            await producer.send_and_wait(topic, key=key, value=value)
            acked[json.loads(value)["subject"]] = time.perf_counter()
            await asyncio.sleep(0.02)
        try:
            await asyncio.wait_for(reader, timeout=60)
        except TimeoutError:
            print(f"  only {len(arrivals.keys() & acked.keys())}/{triggers} MQLs arrived in 60 s")
    finally:
        await producer.stop()
        await consumer.stop()
    return [arrivals[subject] - acked[subject] for subject in acked if subject in arrivals]


async def run_one(base: Settings, database: str, url: str, args: argparse.Namespace) -> Result:
    async with EmbeddedBroker() as broker:
        settings = base.model_copy(
            update=dict(
                kafka_bootstrap=broker.bootstrap,
                database_url=url,
                topic_prefix=f"bench{uuid.uuid4().hex[:6]}.",
                topic_partitions=args.partitions,
                rulebook=args.rulebook,
                consumer_batch_size=args.batch_size or base.consumer_batch_size,
                consumer_session_timeout_ms=2000,
                poll_interval_seconds=0.05,
                mql_hold_seconds=0.0,  # latency is the pipeline's, not the allowed lateness
            )
        )
        await upgrade(url)
        await ensure_topics(settings)
        stream = Stream(args.leads, args.skew, seed=7)
        print(
            f"[{database}] generating {args.events:,} events over {args.leads:,} leads "
            f"({args.partitions} partitions, batches of up to {settings.consumer_batch_size:,}; "
            "MQLs announced without the hold for late facts, LEADFLOW_MQL_HOLD_SECONDS)",
            flush=True,
        )
        records = list(stream.events(args.events))
        await produce(settings, records)
        print(f"[{database}] measuring the ceiling (a consumer that only reads)", flush=True)
        top = await ceiling(settings, len(records))
        runtime = Runtime(settings, SystemClock(), ["scoring"])
        await runtime.start()
        tune_garbage_collector()
        try:
            print(f"[{database}] scoring {len(records):,} events", flush=True)
            seconds = await drain(runtime, len(records), database)
            await outbox_drained(runtime)
            print(f"[{database}] measuring event -> lead.mql latency", flush=True)
            latencies = await mql_latencies(
                settings, stream, triggers=args.triggers, background=args.triggers * 20
            )
        finally:
            await runtime.stop()
        return Result(database, len(records), seconds, top, latencies, len(latencies))


def _percentile(values: Sequence[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def report(results: Sequence[Result]) -> str:
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = [
        f"{'database':<10} {'events':>8} {'events/s':>10} {'ceiling/s':>10} {'share':>6} "
        f"{'p50 mql':>9} {'p99 mql':>9}",
    ]
    for result in results:
        share = result.per_second / result.ceiling_per_second if result.ceiling_per_second else 0
        lines.append(
            f"{result.database:<10} {result.events:>8,} {result.per_second:>10,.0f} "
            f"{result.ceiling_per_second:>10,.0f} {share:>6.1%} "
            f"{_percentile(result.latencies, 0.5) * 1000:>7.0f}ms "
            f"{_percentile(result.latencies, 0.99) * 1000:>7.0f}ms"
        )
    lines.append(f"peak memory (whole process, incl. generated stream): {peak_mb:,.0f} MB")
    return "\n".join(lines)


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="leadflow bench scoring",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--leads", type=int, default=5_000)
    parser.add_argument("--skew", type=float, default=1.1, help="Zipf exponent over leads")
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument(
        "--batch-size", type=int, default=None, help="default: LEADFLOW_CONSUMER_BATCH_SIZE"
    )
    parser.add_argument("--triggers", type=int, default=100, help="demo requests timed")
    parser.add_argument("--database", choices=("sqlite", "postgres", "both"), default="sqlite")
    parser.add_argument(
        "--postgres-url",
        help="needed for postgres: a database of its own, which the benchmark resets",
    )
    parser.add_argument("--rulebook", type=Path, default=Path("examples/rulebook.yaml"))
    parser.add_argument("--workdir", type=Path, default=Path(".leadflow/bench"))
    args = parser.parse_args(argv)
    if args.database != "sqlite" and not args.postgres_url:
        parser.error("--postgres-url is needed for PostgreSQL (a database the benchmark resets)")
    return args


async def _reset_postgres(url: str) -> None:
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await connection.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    finally:
        await connection.close()


def _remove_sqlite(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


async def run(base: Settings, args: argparse.Namespace) -> list[Result]:
    results = []
    if args.database in ("sqlite", "both"):
        args.workdir.mkdir(parents=True, exist_ok=True)
        path = args.workdir / f"bench-{uuid.uuid4().hex[:6]}.db"
        try:
            url = f"sqlite+aiosqlite:///{path.resolve()}"
            results.append(await run_one(base, "sqlite", url, args))
        finally:
            _remove_sqlite(path)
    if args.database in ("postgres", "both"):
        await _reset_postgres(args.postgres_url)
        results.append(await run_one(base, "postgres", args.postgres_url, args))
    return results


def main(settings: Settings, argv: Sequence[str]) -> int:
    args = parse(argv)
    try:
        results = asyncio.run(run(settings, args))
    except (OSError, asyncpg.PostgresError) as error:
        print(f"leadflow bench scoring: the database refused: {error}", file=sys.stderr)
        return 2
    print()
    print(report(results))
    sys.stdout.flush()
    return 0
