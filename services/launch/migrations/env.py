"""Alembic environment. `services.launch.migrate` hands in a live connection (see its
docstring); the target metadata is every table of every service (`services.launch.tables`)."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from services.launch.tables import metadata

config = context.config


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `leadflow migrate`, which supplies the connection")
run_migrations(connection)
