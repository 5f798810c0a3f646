"""Async SQLAlchemy engine and sessions for SQLite (aiosqlite) and PostgreSQL (asyncpg)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from typing import Any

from asyncpg.exceptions import UniqueViolationError
from pydantic_core import from_json, to_json
from sqlalchemy import (
    JSON,
    ColumnElement,
    DateTime,
    MetaData,
    Table,
    TypeDecorator,
    any_,
    bindparam,
    event,
    insert,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, QueryableAttribute

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware datetimes on both backends (SQLite stores no offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def json_text(value: Any) -> str:
    """JSON columns as compact text, written by pydantic's Rust encoder: scoring writes two JSON
    columns per lead per batch, and the standard library's encoder was ~5% of a batch."""
    return to_json(value).decode()


def create_engine(url: str) -> AsyncEngine:
    """JSON columns go through pydantic's Rust codec (see `json_text`).

    On PostgreSQL every statement is planned for its own parameters: asyncpg prepares and
    reuses statements, and a generic plan made while a table was still small (a sequential
    scan) would otherwise stay in use after the table has grown, at hundreds of ms a batch."""
    if is_sqlite(url):
        database = url.split("///", 1)[-1]
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url,
            connect_args={"timeout": 30},
            json_serializer=json_text,
            json_deserializer=from_json,
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin_immediate)
        return engine
    return create_async_engine(
        url,
        pool_size=10,
        max_overflow=10,
        pool_pre_ping=True,
        json_serializer=json_text,
        json_deserializer=from_json,
        connect_args={"server_settings": {"plan_cache_mode": "force_custom_plan"}},
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # pysqlite's own transaction handling is turned off so BEGIN IMMEDIATE below takes the
    # write lock up front; concurrent writers then queue on busy_timeout instead of deadlocking.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


READ_ONLY = "leadflow_read_only"
"""Execution option for a transaction that only reads: on SQLite it begins deferred, so it
neither waits for nor blocks the single writer (WAL lets readers run beside it)."""


def _sqlite_begin_immediate(connection: Any) -> None:
    read_only = connection.get_execution_options().get(READ_ONLY, False)
    connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def among(
    session: AsyncSession,
    column: ColumnElement[Any] | QueryableAttribute[Any],
    values: Collection[Any],
) -> ColumnElement[bool]:
    """`column IN values`. On PostgreSQL written `column = ANY($1)` with the values as one
    array: a batch's thousands of ids are one parameter instead of thousands to render and
    bind, and the statement text (so its prepared statement) is the same for every batch."""
    if session.get_bind().dialect.name != "postgresql":
        return column.in_(values)
    array = bindparam(None, list(values), type_=ARRAY(column.expression.type))
    return column == any_(array)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def bulk_insert(
    session: AsyncSession, model: type[Base], rows: Sequence[dict[str, Any]]
) -> None:
    """Insert many rows in the session's transaction: COPY on PostgreSQL (several times faster
    than a multi-row INSERT for the hot tables), a plain executemany elsewhere.

    The rows go straight to the session's connection, so changes pending in the session are
    not flushed first (as with `update_rows`): objects they refer to must be written already.
    """
    if not rows:
        return
    table = model.__table__
    assert isinstance(table, Table)
    connection = await session.connection()
    if connection.dialect.name != "postgresql":
        await connection.execute(insert(table), list(rows))
        return
    raw = await connection.get_raw_connection()
    columns = [column.name for column in table.columns if column.name in rows[0]]
    as_json = {column.name for column in table.columns if isinstance(column.type, JSON)}
    if as_json & set(columns):
        records = [
            tuple(json_text(row[name]) if name in as_json else row[name] for name in columns)
            for row in rows
        ]
    else:
        values_of = itemgetter(*columns)
        records = [values_of(row) for row in rows]
        if len(columns) == 1:
            records = [(value,) for value in records]
    driver = raw.driver_connection
    assert driver is not None
    try:
        await driver.copy_records_to_table(table.name, records=records, columns=columns)
    except UniqueViolationError as exc:  # as SQLAlchemy reports it for the other statements
        raise IntegrityError(f"COPY {table.name}", None, exc) from exc


async def update_rows(
    session: AsyncSession, model: type[Base], rows: Sequence[dict[str, Any]], *, key: str
) -> None:
    """Update many rows, each found by its `key` column, in the session's transaction.

    On PostgreSQL one statement, `UPDATE … FROM unnest(<one array per column>)`: an
    executemany of per-row UPDATEs costs a bind and an execute per row on the server, about
    three times the time. Elsewhere an executemany. Every row names the same columns; as with
    `bulk_insert`, changes pending in the session are not flushed first, and on PostgreSQL
    the values reach the driver as they are (times must be timezone-aware).
    """
    if not rows:
        return
    table = model.__table__
    assert isinstance(table, Table)
    columns = [name for name in rows[0] if name != key]
    connection = await session.connection()
    if connection.dialect.name != "postgresql":
        statement = (
            update(table)
            .where(table.c[key] == bindparam("row_key"))
            .values({name: bindparam(f"row_{name}") for name in columns})
        )
        params = [
            {"row_key": row[key], **{f"row_{name}": row[name] for name in columns}} for row in rows
        ]
        await connection.execute(statement, params)
        return
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    await driver.execute(
        _unnest_update_sql(table, key, columns, connection.dialect),
        *_arrays(table, key, columns, rows),
    )


def _unnest_update_sql(table: Table, key: str, columns: list[str], dialect: Dialect) -> str:
    quote = dialect.identifier_preparer.quote
    names = [key, *columns]
    arrays = ", ".join(
        f"${number}::{table.c[name].type.compile(dialect=dialect)}[]"
        for number, name in enumerate(names, start=1)
    )
    assignments = ", ".join(f"{quote(name)} = v.{quote(name)}" for name in columns)
    return (
        f"UPDATE {quote(table.name)} SET {assignments} "
        f"FROM unnest({arrays}) AS v({', '.join(quote(name) for name in names)}) "
        f"WHERE {quote(table.name)}.{quote(key)} = v.{quote(key)}"
    )


def _arrays(
    table: Table, key: str, columns: list[str], rows: Sequence[dict[str, Any]]
) -> list[list[Any]]:
    arrays = []
    for name in [key, *columns]:
        values = [row[name] for row in rows]
        if isinstance(table.c[name].type, JSON):
            values = [json_text(value) for value in values]
        arrays.append(values)
    return arrays
