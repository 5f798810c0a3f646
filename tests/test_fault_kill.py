"""The fault test: a realistic stream scored once undisturbed and once with the
scoring worker killed (SIGKILL) mid-stream and restarted, on PostgreSQL, ends with identical
leads, ledgers and standing MQLs.

Scoring runs as its own process (`leadflow serve scoring`), as in a real installation, so
the kill really loses whatever the process held: a batch in its transaction, offsets not yet
committed, holds waiting out the allowed lateness, outbox rows published but not deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.topics import LEAD_ACTIVITY, LEAD_MQL
from scoring_service.identity import lead_id_for
from scoring_service.models import Activity, Lead, LeadIdentity, LedgerEntry
from services.broker import EmbeddedBroker, free_port
from services.bus import ensure_topics
from services.db import create_engine
from services.models import OutboxRecord
from services.settings import Settings
from tests.conftest import EXAMPLES, ROOT, _migrated, make_settings
from tests.streams import LeadView, StreamEvent, arrival_order, stream

pytestmark = pytest.mark.postgres

PEOPLE = 300
STREAM_SEED = 9
ARRIVAL_SEED = 4
KILL_AFTER_SHARE = 0.3
"""SIGKILL once this share of the whole stream is in the activity log."""
SETTLE_TIMEOUT = 40.0
STOP_TIMEOUT = 15.0
WORKER_ENV = {
    "LEADFLOW_RULEBOOK": str(EXAMPLES / "rulebook.yaml"),
    "LEADFLOW_ROUTING": str(EXAMPLES / "routing.yaml"),
    "LEADFLOW_SLA_POLICY": str(EXAMPLES / "sla.yaml"),
    "LEADFLOW_MQL_HOLD_SECONDS": "0.5",
    "LEADFLOW_CONSUMER_BATCH_SIZE": "200",
    "LEADFLOW_CONSUMER_SESSION_TIMEOUT_MS": "2000",
    "LEADFLOW_POLL_INTERVAL_SECONDS": "0.05",
}


# --- the scoring worker as a separate process ---------------------------------------------


class ScoringProcess:
    """`leadflow serve scoring` in its own process group, its output in a log file."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = {key: value for key, value in os.environ.items() if not key.startswith("LEADFLOW_")}
        env.update(WORKER_ENV)
        env.update(
            LEADFLOW_KAFKA_BOOTSTRAP=str(self.settings.kafka_bootstrap),
            LEADFLOW_DATABASE_URL=self.settings.effective_database_url,
            LEADFLOW_TOPIC_PREFIX=self.settings.topic_prefix,
            LEADFLOW_DATA_DIR=str(self.log_path.parent),
            LEADFLOW_HTTP_PORT=str(free_port()),
        )
        with self.log_path.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.launch.cli",
                "serve",
                "scoring",
                cwd=ROOT,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # its own process group, killed as one
            )

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return "(no output)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def check_alive(self) -> None:
        if self._process is not None and self._process.returncode is not None:
            raise AssertionError(
                f"the scoring process exited with {self._process.returncode}:\n{self.log_tail()}"
            )

    async def kill(self) -> None:
        """SIGKILL to the whole process group: nothing gets to clean up."""
        if self._process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGKILL)
        await self._process.wait()

    async def stop(self) -> None:
        """SIGTERM and wait for a clean exit (exit status 0)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self._process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            await self.kill()
            raise AssertionError(
                f"scoring did not stop within {STOP_TIMEOUT}s of SIGTERM:\n{self.log_tail()}"
            ) from None
        assert code == 0, f"scoring exited with {code} on SIGTERM:\n{self.log_tail()}"


@contextlib.asynccontextmanager
async def scoring_process(settings: Settings, log_path: Path) -> AsyncIterator[ScoringProcess]:
    process = ScoringProcess(settings, log_path)
    try:
        await process.start()
        yield process
    finally:
        if process.running:
            await process.kill()


# --- the installation, the stream, the database's progress ----------------------------------


async def fresh_installation(broker: EmbeddedBroker, data_dir: Path) -> Settings:
    """A freshly migrated PostgreSQL database and a new topic prefix with its topics."""
    url = await _migrated("postgres", data_dir)  # skips (or fails) when PostgreSQL is away
    settings = make_settings(broker.bootstrap, url, data_dir)
    await ensure_topics(settings)
    return settings


async def produce_events(settings: Settings, events: Iterable[StreamEvent]) -> None:
    """Send the events to `lead.activity` as the gateway would, and wait for every ack."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=False,
        linger_ms=5,
    )
    await producer.start()
    try:
        futures = []
        for event in events:
            key, value = event.encoded()
            futures.append(await producer.send(settings.topic(LEAD_ACTIVITY), key=key, value=value))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


class Progress(NamedTuple):
    applied: int
    """Events in the activity log."""
    holds: int
    """Leads whose qualification waits out the allowed lateness."""
    unpublished: int
    """Scoring's outbox rows not yet published."""

    def describe(self, total: int) -> str:
        return (
            f"{self.applied}/{total} events applied, {self.holds} MQL holds pending, "
            f"{self.unpublished} outbox rows unpublished"
        )


async def progress(engine: AsyncEngine) -> Progress:
    async with engine.connect() as connection:
        applied = await connection.scalar(select(func.count()).select_from(Activity))
        holds = await connection.scalar(
            select(func.count()).select_from(Lead).where(Lead.mql_due_at.is_not(None))
        )
        unpublished = await connection.scalar(
            select(func.count()).select_from(OutboxRecord).where(OutboxRecord.service == "scoring")
        )
    return Progress(applied or 0, holds or 0, unpublished or 0)


async def wait_for(
    engine: AsyncEngine,
    process: ScoringProcess,
    total: int,
    *,
    applied: int,
    settled: bool,
    timeout: float = SETTLE_TIMEOUT,
) -> Progress:
    """Until `applied` events are in the log (and, if `settled`, no hold waits and the
    outbox is drained); fails with the progress made when `timeout` passes first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        process.check_alive()
        now = await progress(engine)
        if now.applied >= applied and (not settled or now.holds == now.unpublished == 0):
            return now
        if loop.time() > deadline:
            goal = "settle" if settled else f"apply {applied} events"
            raise AssertionError(
                f"scoring did not {goal} within {timeout}s: {now.describe(total)}\n"
                f"{process.log_tail()}"
            )
        await asyncio.sleep(0.02)


# --- what a run ends with ---------------------------------------------------------------


LedgerLine = tuple[str, str, str, float]
"""(event id, rule, kind, points) of one ledger row."""


@dataclass(frozen=True)
class Snapshot:
    leads: dict[str, LeadView]
    """Live leads (not merged away)."""
    identities: dict[str, str]
    ledger: dict[str, list[LedgerLine]]
    """Each lead's ledger rows, sorted (a multiset)."""
    merged: dict[str, str]
    """Merged-away lead id -> the lead it was merged into."""
    ledger_versions: frozenset[str]
    activity_ids: frozenset[str]
    standing_mqls: list[str]
    """The final lead of every `lead.mql` on the topic that was not revoked, sorted."""


async def snapshot(engine: AsyncEngine, settings: Settings) -> Snapshot:
    async with engine.connect() as connection:
        leads = (await connection.execute(select(Lead))).all()
        identities = (
            await connection.execute(select(LeadIdentity.key, LeadIdentity.lead_id))
        ).all()
        ledger_rows = (
            await connection.execute(
                select(
                    LedgerEntry.lead_id,
                    LedgerEntry.event_id,
                    LedgerEntry.rule,
                    LedgerEntry.kind,
                    LedgerEntry.points,
                    LedgerEntry.rulebook_version,
                )
            )
        ).all()
        activity_ids = (await connection.scalars(select(Activity.event_id))).all()
    ledger: dict[str, list[LedgerLine]] = {}
    for lead_id, event_id, rule, kind, points, _ in ledger_rows:
        ledger.setdefault(lead_id, []).append((event_id, rule, kind, points))
    merged = {lead.id: lead.merged_into for lead in leads if lead.merged_into is not None}
    return Snapshot(
        leads={lead.id: LeadView.of(lead) for lead in leads if lead.merged_into is None},
        identities=dict(identities),
        ledger={lead_id: sorted(lines) for lead_id, lines in ledger.items()},
        merged=merged,
        ledger_versions=frozenset(row.rulebook_version for row in ledger_rows),
        activity_ids=frozenset(activity_ids),
        standing_mqls=standing_mqls(await read_to_end(settings, LEAD_MQL), merged),
    )


async def read_to_end(settings: Settings, topic: str, timeout: float = 15.0) -> list[Any]:
    """Every record of `topic`, read from the start up to its end offsets as of now."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition(settings.topic(topic), index)
            for index in range(settings.topic_partitions)
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[Any] = []
        async with asyncio.timeout(timeout):
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                for batch in (await consumer.getmany(*partitions, timeout_ms=200)).values():
                    records.extend(batch)
    finally:
        await consumer.stop()
    return records


def standing_mqls(records: list[Any], merged: dict[str, str]) -> list[str]:
    """MQLs announced and not revoked (ids deduplicated: the outbox is at least once), each
    as the live lead its lead became, sorted; one lead may appear more than once."""
    announced: dict[str, str] = {}
    revoked: set[str] = set()
    for record in records:
        event = json.loads(record.value)
        if event["type"] == "lead.mql":
            announced[event["id"]] = event["data"]["lead_id"]
        elif event["type"] == "lead.mql_revoked":
            revoked.add(event["data"]["mql_event_id"])
    return sorted(
        final_lead(lead_id, merged)
        for mql_id, lead_id in announced.items()
        if mql_id not in revoked
    )


def final_lead(lead_id: str, merged: dict[str, str]) -> str:
    seen = {lead_id}
    while lead_id in merged:
        lead_id = merged[lead_id]
        assert lead_id not in seen, f"merge cycle through {lead_id}"
        seen.add(lead_id)
    return lead_id


def differences(a: Snapshot, b: Snapshot, limit: int = 40) -> list[str]:
    """What differs between two snapshots, field by field, except the merged-away leads
    (see `merge_differences`): a count per kind of difference, then the first `limit`."""
    found: list[tuple[str, str]] = []
    for lead_id in sorted(a.leads.keys() | b.leads.keys()):
        left, right = a.leads.get(lead_id), b.leads.get(lead_id)
        if left is None or right is None:
            found.append(("live leads", f"live lead {lead_id} only in {'B' if left else 'A'}"))
            continue
        for field, value in left._asdict().items():
            if getattr(right, field) != value:
                text = f"lead {lead_id}.{field}: A {value!r}, B {getattr(right, field)!r}"
                found.append((f"lead.{field}", text))
    for key in sorted(a.identities.keys() | b.identities.keys()):
        if a.identities.get(key) != b.identities.get(key):
            text = f"identities[{key}]: A {a.identities.get(key)}, B {b.identities.get(key)}"
            found.append(("identities", text))
    for lead_id in sorted(a.ledger.keys() | b.ledger.keys()):
        left_lines = Counter(a.ledger.get(lead_id, []))
        right_lines = Counter(b.ledger.get(lead_id, []))
        if left_lines != right_lines:
            text = (
                f"ledger of {lead_id}: only in A {sorted((left_lines - right_lines).elements())}, "
                f"only in B {sorted((right_lines - left_lines).elements())}"
            )
            found.append(("ledger", text))
    if a.ledger_versions != b.ledger_versions:
        text = f"A {sorted(a.ledger_versions)}, B {sorted(b.ledger_versions)}"
        found.append(("ledger versions", text))
    if a.activity_ids != b.activity_ids:
        found.append(("activity log", f"{len(a.activity_ids ^ b.activity_ids)} event ids differ"))
    left_mqls, right_mqls = Counter(a.standing_mqls), Counter(b.standing_mqls)
    if left_mqls != right_mqls:
        text = (
            f"standing MQLs: only in A {sorted((left_mqls - right_mqls).elements())}, "
            f"only in B {sorted((right_mqls - left_mqls).elements())}"
        )
        found.append(("standing MQLs", text))
    if not found:
        return []
    counts = Counter(kind for kind, _ in found)
    summary = ", ".join(f"{kind}: {count}" for kind, count in sorted(counts.items()))
    shown = [text for _, text in found[:limit]]
    more = [f"... and {len(found) - limit} more"] if len(found) > limit else []
    return [f"differences by kind: {summary}", *shown, *more]


def check_consistent(run: str, state: Snapshot, events: list[StreamEvent]) -> None:
    """What each run must show on its own: every event logged, the MQLs on the topic are
    exactly the live leads whose MQL stands, every merged-away id is the id of one of the
    identity keys (`lead_id_for`) and answers with the lead that key belongs to."""
    expected_ids = {event.event_id for event in events}
    assert state.activity_ids == expected_ids, (
        f"run {run}: activity log differs from the stream: "
        f"{len(expected_ids - state.activity_ids)} missing, "
        f"{len(state.activity_ids - expected_ids)} unexpected"
    )
    holders = sorted(lead_id for lead_id, lead in state.leads.items() if lead.mql_stands)
    assert state.standing_mqls == holders, (
        f"run {run}: standing MQLs on the topic {Counter(state.standing_mqls) - Counter(holders)} "
        f"vs leads whose MQL stands {Counter(holders) - Counter(state.standing_mqls)}"
    )
    key_of = {lead_id_for(key): key for key in state.identities}
    for lead_id in state.merged:
        key = key_of.get(lead_id)
        assert key is not None, f"run {run}: merged-away {lead_id} is no identity key's id"
        survivor = final_lead(lead_id, state.merged)
        assert survivor == state.identities[key], (
            f"run {run}: merged-away {lead_id} ({key}) answers with {survivor}, "
            f"but {key} belongs to {state.identities[key]}"
        )


# --- the two runs ------------------------------------------------------------------------


async def run_undisturbed(
    broker: EmbeddedBroker, data_dir: Path, events: list[StreamEvent]
) -> Snapshot:
    settings = await fresh_installation(broker, data_dir)
    engine = create_engine(settings.effective_database_url)
    try:
        async with scoring_process(settings, data_dir / "undisturbed.log") as process:
            await produce_events(settings, events)
            await wait_for(engine, process, len(events), applied=len(events), settled=True)
            await process.stop()
        return await snapshot(engine, settings)
    finally:
        await engine.dispose()


async def run_killed(
    broker: EmbeddedBroker, data_dir: Path, events: list[StreamEvent]
) -> tuple[Snapshot, Progress]:
    """The first half of the stream, SIGKILL once part of it is applied, the rest of the
    stream, a new process. Returns the end state and the progress at the kill."""
    settings = await fresh_installation(broker, data_dir)
    engine = create_engine(settings.effective_database_url)
    total, half = len(events), len(events) // 2
    try:
        async with scoring_process(settings, data_dir / "killed.log") as process:
            await produce_events(settings, events[:half])
            await wait_for(
                engine, process, total, applied=int(total * KILL_AFTER_SHARE), settled=False
            )
            await process.kill()
        at_kill = await progress(engine)
        assert 0 < at_kill.applied < total, (
            f"the kill was not mid-stream: {at_kill.describe(total)}"
        )
        await produce_events(settings, events[half:])
        async with scoring_process(settings, data_dir / "restarted.log") as process:
            await wait_for(engine, process, total, applied=total, settled=True)
            await process.stop()
        return await snapshot(engine, settings), at_kill
    finally:
        await engine.dispose()


@dataclass(frozen=True)
class Runs:
    undisturbed: Snapshot
    killed: Snapshot
    at_kill: Progress


@pytest.fixture(scope="module")
async def runs(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """The stream run once undisturbed (A) and once killed and restarted (B)."""
    events = arrival_order(stream(PEOPLE, seed=STREAM_SEED), seed=ARRIVAL_SEED)
    started = time.monotonic()
    undisturbed = await run_undisturbed(broker, tmp_path_factory.mktemp("undisturbed"), events)
    check_consistent("A (undisturbed)", undisturbed, events)
    after_a = time.monotonic()
    killed, at_kill = await run_killed(broker, tmp_path_factory.mktemp("killed"), events)
    check_consistent("B (killed)", killed, events)
    print(
        f"\n{len(events)} events; A {after_a - started:.1f}s, B {time.monotonic() - after_a:.1f}s; "
        f"at the kill: {at_kill.describe(len(events))}; {len(undisturbed.leads)} live leads, "
        f"{len(undisturbed.merged)} merged away, "
        f"{sum(1 for lead in undisturbed.leads.values() if lead.disqualified_by)} disqualified, "
        f"{len(undisturbed.standing_mqls)} standing MQLs"
    )
    return Runs(undisturbed, killed, at_kill)


async def test_scoring_killed_mid_stream_ends_where_an_undisturbed_run_does(runs: Runs) -> None:
    found = differences(runs.undisturbed, runs.killed)
    assert not found, "A (undisturbed) and B (killed) differ:\n" + "\n".join(found)

    # the stream exercised what the test is about
    leads = runs.undisturbed.leads
    assert runs.undisturbed.merged, "no lead was merged"
    assert any(lead.disqualified_by for lead in leads.values()), "no lead is disqualified"
    assert runs.undisturbed.standing_mqls, "no MQL stands"
    disqualified_mqls = [
        key for key, lead in leads.items() if lead.disqualified_by and lead.mql_stands
    ]
    assert not disqualified_mqls, f"disqualified leads whose MQL stands: {disqualified_mqls}"
