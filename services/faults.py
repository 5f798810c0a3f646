"""Why a consumer batch failed, and so whether waiting or isolating the event is the cure.

A consumer must neither stop on one event it cannot apply nor drop an event because the
database was briefly away. The runner retries every failure; what differs is what it does
when retrying does not help: an outage or lock contention is waited out for as long as it
lasts, while a failure that comes back with the same events is narrowed down to the events
that cause it, which go to the dead-letter topic.
"""

from __future__ import annotations

import enum

from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, InterfaceError


class Fault(enum.Enum):
    ENVIRONMENT = "environment"
    """The database or broker cannot serve now (unreachable, restarting, out of resources,
    a schema not migrated): retried with backoff until it can, never blamed on the events."""
    CONTENTION = "contention"
    """Another worker got in the way (deadlock, serialization failure, a merge elsewhere):
    the same events succeed on a later attempt."""
    CONTENT = "content"
    """Something in the events themselves: retried a few times, then isolated."""


class ConcurrentChange(RuntimeError):
    """Another worker changed what this batch read; the batch is retried from the start."""


_CONTENTION_STATES = frozenset({"40001", "40P01", "55P03"})
"""serialization_failure, deadlock_detected, lock_not_available"""

_CONTENT_CLASSES = ("22", "23")
"""data exception (a value the column cannot hold), integrity constraint violation"""


def classify(exc: BaseException) -> Fault:
    if isinstance(exc, ConcurrentChange):
        return Fault.CONTENTION
    if isinstance(
        exc, OSError | TimeoutError | KafkaConnectionError | KafkaTimeoutError | NodeNotReadyError
    ):
        return Fault.ENVIRONMENT
    if isinstance(exc, DBAPIError):
        return _database_fault(exc)
    return Fault.CONTENT


def _database_fault(exc: DBAPIError) -> Fault:
    if exc.connection_invalidated or isinstance(exc, InterfaceError):
        return Fault.ENVIRONMENT
    state = sqlstate(exc)
    if state in _CONTENTION_STATES:
        return Fault.CONTENTION
    if state is not None:
        return Fault.CONTENT if state.startswith(_CONTENT_CLASSES) else Fault.ENVIRONMENT
    # SQLite gives no codes: a busy database, a missing table or disk trouble is an
    # OperationalError, a value it refuses an IntegrityError or DataError
    return Fault.CONTENT if isinstance(exc, IntegrityError | DataError) else Fault.ENVIRONMENT


def sqlstate(exc: DBAPIError) -> str | None:
    """PostgreSQL's five-character error code, where the driver gives one."""
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return code if isinstance(code, str) else None


def describe(exc: BaseException) -> str:
    """One line naming the failure, without a traceback (and without SQL parameters)."""
    if isinstance(exc, DBAPIError):
        detail = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else ""
        return f"{type(exc.orig).__name__}: {detail}"[:1000]
    return f"{type(exc).__name__}: {exc}"[:1000]
