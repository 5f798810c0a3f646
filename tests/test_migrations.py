"""Alembic migrations build exactly the tables the models describe, on both backends."""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection

from services.db import create_engine
from services.launch.migrate import alembic_config, head_revisions, upgrade
from services.launch.tables import metadata


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    ignored = {"alembic_version"}
    return [
        diff
        for diff in compare_metadata(context, metadata)
        if not (diff[0] == "remove_table" and diff[1].name in ignored)
    ]


async def test_migrated_schema_matches_the_models(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(_differences) == []
            heads = await connection.run_sync(
                lambda sync: MigrationContext.configure(sync).get_current_heads()
            )
        assert set(heads) == set(head_revisions())
    finally:
        await engine.dispose()


def _downgrade(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.downgrade(config, revision)


async def test_every_migration_can_be_undone_and_applied_again(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_downgrade, "base")
            assert await connection.run_sync(_differences) != []
    finally:
        await engine.dispose()
    assert await upgrade(database_url) == ", ".join(sorted(head_revisions()))
    await test_migrated_schema_matches_the_models(database_url)
