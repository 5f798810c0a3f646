"""Fixtures: the real embedded broker, real SQLite and PostgreSQL databases, the pipeline."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest

from services.api_keys import register_key
from services.broker import EmbeddedBroker
from services.bus import ensure_topics
from services.clock import ManualClock
from services.db import create_engine, session_factory
from services.launch.migrate import head_revisions, upgrade
from services.launch.runtime import PART_NAMES, Runtime
from services.launch.tables import metadata
from services.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
POSTGRES_URL = os.environ.get(
    "LEADFLOW_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REQUIRE_POSTGRES = os.environ.get("LEADFLOW_REQUIRE_POSTGRES") == "1"
WRITE_KEY = "test-write-key"
ADMIN_KEY = "lf_admin_test-key"
OPS_KEY = "lf_ops_test-key"
# A Monday, 10:00 in New York: the example SLA calendar's working hours.
MONDAY_10AM_NEW_YORK = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
async def broker() -> AsyncIterator[EmbeddedBroker]:
    async with EmbeddedBroker() as running:
        yield running


async def _connect_postgres(url: str) -> asyncpg.Connection:
    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    try:
        return await asyncpg.connect(dsn, timeout=3)
    except (OSError, asyncpg.PostgresError) as exc:
        message = f"PostgreSQL unreachable at {url}: {exc}"
        if REQUIRE_POSTGRES:
            pytest.fail(message + " (LEADFLOW_REQUIRE_POSTGRES=1)")
        pytest.skip(message)


async def _reset_postgres(url: str) -> None:
    connection = await _connect_postgres(url)
    try:
        await connection.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    finally:
        await connection.close()


async def _emptied_postgres(url: str) -> bool:
    """Empty every table of a database already at the head revision (far quicker than
    migrating again for every test); False when it is not at the head, e.g. after a test
    reset or downgraded it."""
    connection = await _connect_postgres(url)
    try:
        try:
            versions = {
                row[0] for row in await connection.fetch("SELECT version_num FROM alembic_version")
            }
        except asyncpg.PostgresError:
            return False
        if versions != set(head_revisions()):
            return False
        tables = ", ".join(f'"{table.name}"' for table in metadata.sorted_tables)
        await connection.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
        return True
    finally:
        await connection.close()


_SQLITE_TEMPLATE: list[Path] = []
"""A migrated SQLite database, made once per session and copied for each test."""


async def _sqlite_database(path: Path) -> str:
    if not _SQLITE_TEMPLATE:
        template = Path(tempfile.mkdtemp(prefix="leadflow-template-")) / "leadflow.db"
        await upgrade(f"sqlite+aiosqlite:///{template}")
        _SQLITE_TEMPLATE.append(template)
    template = _SQLITE_TEMPLATE[0]
    shutil.copyfile(template, path)
    for suffix in ("-wal", "-shm"):  # normally checkpointed away when the engine closed
        if template.with_name(template.name + suffix).exists():
            shutil.copyfile(template.with_name(template.name + suffix), f"{path}{suffix}")
    return f"sqlite+aiosqlite:///{path}"


async def _migrated(backend: str, tmp_path: Path) -> str:
    """A migrated, empty database with an admin and an ops API key."""
    if backend == "sqlite":
        url = await _sqlite_database(tmp_path / "leadflow.db")
    else:
        url = POSTGRES_URL
        if not await _emptied_postgres(url):
            await _reset_postgres(url)
            await upgrade(url)
    engine = create_engine(url)
    try:
        async with session_factory(engine)() as session, session.begin():
            clock = ManualClock(MONDAY_10AM_NEW_YORK)
            await register_key(session, ADMIN_KEY, name="tests", role="admin", clock=clock)
            await register_key(session, OPS_KEY, name="tests", role="ops", clock=clock)
    finally:
        await engine.dispose()
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return await _migrated(request.param, tmp_path)


@pytest.fixture
async def sqlite_url(tmp_path: Path) -> str:
    return await _migrated("sqlite", tmp_path)


def make_settings(bootstrap: str, database_url: str, data_dir: Path) -> Settings:
    return Settings(
        kafka_bootstrap=bootstrap,
        database_url=database_url,
        data_dir=data_dir,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        write_keys=[WRITE_KEY],
        rulebook=EXAMPLES / "rulebook.yaml",
        routing=EXAMPLES / "routing.yaml",
        sla_policy=EXAMPLES / "sla.yaml",
        poll_interval_seconds=0.05,
        produce_timeout_seconds=2.0,
        consumer_session_timeout_ms=2000,
        mql_hold_seconds=0.0,  # the injected clock stands still; hold tests set their own
    )


@pytest.fixture
async def settings(broker: EmbeddedBroker, database_url: str, tmp_path: Path) -> Settings:
    configured = make_settings(broker.bootstrap, database_url, tmp_path)
    await ensure_topics(configured)
    return configured


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(MONDAY_10AM_NEW_YORK)


@pytest.fixture
async def pipeline(settings: Settings, clock: ManualClock) -> AsyncIterator[Runtime]:
    runtime = Runtime(settings, clock, PART_NAMES)
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


def http_client(
    runtime: Runtime, *, write_key: str | None = WRITE_KEY, api_key: str | None = ADMIN_KEY
) -> httpx.AsyncClient:
    """A client of the in-process app: the write key as basic auth (for tracking calls) and
    an API key in X-API-Key (for the management API)."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=runtime.app),
        base_url="http://leadflow.test",
        auth=(write_key, "") if write_key else None,
        headers={"X-API-Key": api_key} if api_key else None,
    )


@pytest.fixture
async def client(pipeline: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    async with http_client(pipeline) as http:
        yield http
