"""The reps as stored: seeded from the routing file, changed through the API, every change
kept as a version with who made it and when.

How the file and the API combine: at start, a rep in the file who is not stored yet is
added; for a stored rep, only what the file changed since it was last read is applied (a
field the file did not touch keeps its API value), and a rep taken out of the file is made
inactive. Every other change is made through the API and survives restarts. Pools and rules
come from the file alone; a stored rep's pool that the file no longer has is dropped.

Every change, whoever makes it, is validated with the routing file's own rules
(`RoutingFile.with_reps`), so the stored roster is always one the file could have held.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from handoff_service.models import AwayPeriod, RepHistory, RepRecord
from handoff_service.routing_file import Away, Rep, RoutingError, RoutingFile
from services.errors import field_errors

REP_FIELDS = (
    "name",
    "email",
    "team",
    "pools",
    "weight",
    "capacity",
    "time_zone",
    "hours",
    "active",
)
"""What a rep's record holds besides their id and away periods."""

FILE = "file"
API = "api"

ROUTING_LOCK = 0x6C66_6861_6E64
"""PostgreSQL advisory lock key serializing routing decisions and seeding across workers."""


async def lock_routing(session: AsyncSession) -> None:
    """Serialize with every other handoff worker until the transaction ends: routing reads
    the reps' open leads and the pools' turns and writes them back. On SQLite the write
    transaction (BEGIN IMMEDIATE) already does."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ROUTING_LOCK})


class RosterChangeError(Exception):
    """A change that would leave a roster the routing file could not hold; `fields` name the
    request's fields at fault (`pools.0`)."""

    def __init__(self, fields: Sequence[dict[str, str]]) -> None:
        self.fields = list(fields)
        names = ", ".join(sorted({field["field"] for field in self.fields}))
        super().__init__(f"invalid fields: {names}")


# --- records <-> reps -----------------------------------------------------------------------


def rep_values(rep: Rep) -> dict[str, Any]:
    """A rep's record as JSON values, without id and away periods (as stored)."""
    dumped = rep.model_dump(mode="json", by_alias=True, include=set(REP_FIELDS))
    return {name: dumped[name] for name in REP_FIELDS}


def away_values(period: Away) -> dict[str, Any]:
    return period.model_dump(mode="json", by_alias=True)


def period_of(row: AwayPeriod) -> Away:
    return Away.model_validate({"from": row.starts, "until": row.until, "note": row.note})


def record_values(row: RepRecord) -> dict[str, Any]:
    return {name: getattr(row, name) for name in REP_FIELDS}


def full_record(row: RepRecord, away: Iterable[AwayPeriod]) -> dict[str, Any]:
    """The rep as the routing file would hold them: id, record and away periods."""
    return {
        "id": row.id,
        **record_values(row),
        "away": [{"id": period.id, **away_values(period_of(period))} for period in away],
    }


def rep_of(row: RepRecord, away: Iterable[AwayPeriod] = ()) -> Rep:
    return Rep.model_validate(
        {"id": row.id, **record_values(row), "away": [period_of(each) for each in away]}
    )


async def stored_rows(session: AsyncSession) -> list[RepRecord]:
    """Every stored rep, oldest first."""
    query = select(RepRecord).order_by(RepRecord.created_at, RepRecord.id)
    return list((await session.scalars(query)).all())


async def away_by_rep(session: AsyncSession) -> dict[str, list[AwayPeriod]]:
    found: dict[str, list[AwayPeriod]] = {}
    for row in await session.scalars(select(AwayPeriod).order_by(AwayPeriod.id)):
        found.setdefault(row.rep_id, []).append(row)
    return found


async def load_reps(session: AsyncSession) -> list[Rep]:
    """The roster routing uses now: every stored rep with their away periods."""
    away = await away_by_rep(session)
    return [rep_of(row, away.get(row.id, ())) for row in await stored_rows(session)]


def _history(
    session: AsyncSession,
    row: RepRecord,
    change: str,
    changes: Mapping[str, Any],
    away: Iterable[AwayPeriod],
    actor: str,
    at: datetime,
) -> None:
    session.add(
        RepHistory(
            rep_id=row.id,
            version=row.version,
            change=change,
            changes=dict(changes),
            record=full_record(row, away),
            actor=actor,
            at=at,
        )
    )


def _bump(row: RepRecord, actor: str, at: datetime) -> None:
    row.version += 1
    row.updated_at = at
    row.updated_by = actor


def _differences(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    return {
        name: {"from": before.get(name), "to": after[name]}
        for name in after
        if before.get(name) != after[name]
    }


# --- validation -----------------------------------------------------------------------------

_INDEXED = re.compile(r"\[(\d+)\]")
_REP_REFERENCE = re.compile(r"reps\[(\d+)\]")


def validated_rep(values: Mapping[str, Any]) -> Rep:
    """A rep from request values, with the routing file's rules for one rep."""
    try:
        return Rep.model_validate(dict(values))
    except ValidationError as exc:
        raise RosterChangeError(field_errors(exc.errors())) from exc


def check_roster(routing: RoutingFile, others: Sequence[Rep], changed: Rep) -> None:
    """Raise RosterChangeError unless `others` with `changed` (last) is a roster the routing
    file could hold: known pools, unique ids and emails. Fields are named as the request
    names them (`pools.0`), other reps by their id."""
    reps = [*others, changed]
    try:
        routing.with_reps(reps)
    except RoutingError as exc:
        prefix = f"reps[{len(others)}]"
        fields = []
        for problem in exc.problems:
            field = problem.field
            if field == prefix or field.startswith(prefix + "."):
                field = field[len(prefix) :].lstrip(".") or "(body)"
            message = _REP_REFERENCE.sub(lambda found: reps[int(found[1])].id, problem.message)
            fields.append({"field": _INDEXED.sub(r".\1", field).lstrip("."), "message": message})
        raise RosterChangeError(fields) from exc


# --- changes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    row: RepRecord
    changed: bool


async def create_rep(
    session: AsyncSession, routing: RoutingFile, rep: Rep, actor: str, at: datetime
) -> RepRecord:
    """Store a new rep (from `validated_rep`; the caller checked the id is free), if the
    roster with them is one the routing file could hold."""
    others = await load_reps(session)
    check_roster(routing, others, rep)
    row = _new_row(rep, origin=API, seed=None, actor=actor, at=at)
    session.add(row)
    _history(session, row, "created", _differences({}, rep_values(rep)), (), actor, at)
    return row


def _new_row(
    rep: Rep, *, origin: str, seed: dict[str, Any] | None, actor: str, at: datetime
) -> RepRecord:
    return RepRecord(
        id=rep.id,
        **rep_values(rep),
        version=1,
        origin=origin,
        seed=seed,
        created_at=at,
        updated_at=at,
        updated_by=actor,
    )


async def update_rep(
    session: AsyncSession,
    routing: RoutingFile,
    row: RepRecord,
    changes: Mapping[str, Any],
    actor: str,
    at: datetime,
) -> Change:
    """Apply `changes` (some of REP_FIELDS) to a stored rep, validated; a new version when
    anything changed."""
    away = (await away_by_rep(session)).get(row.id, [])
    before = record_values(row)
    rep = validated_rep({"id": row.id, **before, **changes, "away": ()})
    others = [each for each in await load_reps(session) if each.id != row.id]
    check_roster(routing, others, rep)
    after = rep_values(rep)
    differences = _differences(before, after)
    if not differences:
        return Change(row, changed=False)
    for name in differences:
        setattr(row, name, after[name])
    _bump(row, actor, at)
    _history(session, row, "updated", differences, away, actor, at)
    return Change(row, changed=True)


async def add_away(
    session: AsyncSession,
    row: RepRecord,
    period: Away,
    actor: str,
    at: datetime,
    *,
    origin: str = API,
) -> AwayPeriod:
    values = away_values(period)
    added = AwayPeriod(
        rep_id=row.id,
        starts=values["from"],
        until=values["until"],
        note=values["note"],
        origin=origin,
        created_at=at,
        created_by=actor,
    )
    session.add(added)
    await session.flush()
    _bump(row, actor, at)
    away = (await away_by_rep(session)).get(row.id, [])
    _history(session, row, "away_added", {"away": {"from": None, "to": values}}, away, actor, at)
    return added


async def remove_away(
    session: AsyncSession, row: RepRecord, period: AwayPeriod, actor: str, at: datetime
) -> None:
    values = away_values(period_of(period))
    await session.delete(period)
    await session.flush()
    _bump(row, actor, at)
    away = (await away_by_rep(session)).get(row.id, [])
    _history(session, row, "away_removed", {"away": {"from": values, "to": None}}, away, actor, at)


# --- seeding from the routing file ----------------------------------------------------------


def _seed_of(rep: Rep) -> dict[str, Any]:
    return {**rep_values(rep), "away": [away_values(period) for period in rep.away]}


async def seed(session: AsyncSession, routing: RoutingFile, actor: str, at: datetime) -> None:
    """Bring the stored roster in line with the routing file (see the module's docstring).
    Raises RoutingError when the stored reps and the file's cannot stand together."""
    await lock_routing(session)
    stored = {row.id: row for row in await stored_rows(session)}
    in_file = {rep.id for rep in routing.reps}
    for rep in routing.reps:
        row = stored.get(rep.id)
        if row is None:
            await _seed_new(session, rep, actor, at)
        elif row.seed != _seed_of(rep):
            await _seed_changes(session, row, rep, actor, at)
    for row in stored.values():
        if row.id not in in_file and row.seed is not None:
            row.seed = None  # from now on the API's alone
            if row.active:
                row.active = False
                await _seeded_version(session, row, "file_removed", {"active": True}, actor, at)
        unknown = [pool for pool in row.pools if pool not in routing.pools]
        if unknown:
            before = {"pools": list(row.pools)}
            row.pools = [pool for pool in row.pools if pool in routing.pools]
            await _seeded_version(session, row, "file_pools_removed", before, actor, at)
    await session.flush()
    reps = await load_reps(session)
    try:
        routing.with_reps(reps)
    except RoutingError as exc:
        names = "; ".join(
            f"{reps[int(found[1])].id if (found := _REP_REFERENCE.match(p.field)) else p.field}"
            f": {_REP_REFERENCE.sub(lambda m: reps[int(m[1])].id, p.message)}"
            for p in exc.problems
        )
        raise RoutingError(
            f"{actor.removeprefix('file:')}: the file's reps and those changed through the "
            f"API cannot stand together: {names}",
            exc.problems,
        ) from exc


def _away_from_file(rep_id: str, values: dict[str, Any], actor: str, at: datetime) -> AwayPeriod:
    return AwayPeriod(
        rep_id=rep_id,
        starts=values["from"],
        until=values["until"],
        note=values["note"],
        origin=FILE,
        created_at=at,
        created_by=actor,
    )


async def _seed_new(session: AsyncSession, rep: Rep, actor: str, at: datetime) -> None:
    row = _new_row(rep, origin=FILE, seed=_seed_of(rep), actor=actor, at=at)
    session.add(row)
    await session.flush()
    for period in rep.away:
        session.add(_away_from_file(rep.id, away_values(period), actor, at))
    await session.flush()
    away = (await away_by_rep(session)).get(rep.id, [])
    changes = _differences({}, {**rep_values(rep), "away": _seed_of(rep)["away"]})
    _history(session, row, "file_created", changes, away, actor, at)


async def _seed_changes(
    session: AsyncSession, row: RepRecord, rep: Rep, actor: str, at: datetime
) -> None:
    """Apply what the file changed since it was last read; a rep the file did not seed
    before (created through the API, then written into the file) takes the file's values."""
    base = row.seed or {}
    now_in_file = _seed_of(rep)
    before = record_values(row)
    changes: dict[str, Any] = {}
    for name in REP_FIELDS:
        if base.get(name) != now_in_file[name] and before[name] != now_in_file[name]:
            changes[name] = {"from": before[name], "to": now_in_file[name]}
            setattr(row, name, now_in_file[name])
    if base.get("away") != now_in_file["away"]:
        rows = (await away_by_rep(session)).get(row.id, [])
        old = [away_values(period_of(each)) for each in rows if each.origin == FILE]
        if old != now_in_file["away"]:
            changes["away"] = {"from": old, "to": now_in_file["away"]}
            for each in rows:
                if each.origin == FILE:
                    await session.delete(each)
            for values in now_in_file["away"]:
                session.add(_away_from_file(row.id, values, actor, at))
    row.seed = now_in_file
    if changes:
        await session.flush()
        _bump(row, actor, at)
        away = (await away_by_rep(session)).get(row.id, [])
        _history(session, row, "file_updated", changes, away, actor, at)


async def _seeded_version(
    session: AsyncSession,
    row: RepRecord,
    change: str,
    before: Mapping[str, Any],
    actor: str,
    at: datetime,
) -> None:
    _bump(row, actor, at)
    after = record_values(row)
    changes = {name: {"from": value, "to": after[name]} for name, value in before.items()}
    away = (await away_by_rep(session)).get(row.id, [])
    _history(session, row, change, changes, away, actor, at)
