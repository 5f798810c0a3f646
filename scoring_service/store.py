"""Reads and writes of scoring's tables, kept apart from the scoring decisions: the batch
statements of the consumers, and the queries of the leads and rulebooks API."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, inspect, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.envelope import CloudEvent
from schemas.events import ActivityData
from schemas.lifecycle import LeadStage
from scoring_service.engine import ActivityRecord, LedgerLine
from scoring_service.models import (
    Activity,
    Lead,
    LeadIdentity,
    LedgerEntry,
    ScoringJob,
    StoredRulebook,
)
from services.db import among, bulk_insert, update_rows


def _locking(session: AsyncSession) -> bool:
    """Row locks where the database has them; SQLite serializes writers anyway."""
    return session.get_bind().dialect.name != "sqlite"


async def owners_of(session: AsyncSession, keys: Iterable[str]) -> dict[str, str]:
    """identity key -> lead id, for the keys already known."""
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    rows = await session.execute(
        select(LeadIdentity.key, LeadIdentity.lead_id).where(
            among(session, LeadIdentity.key, wanted)
        )
    )
    return {key: lead_id for key, lead_id in rows}


async def leads_for_update(session: AsyncSession, ids: Iterable[str]) -> dict[str, Lead]:
    """Load (and on PostgreSQL lock, in id order to avoid deadlocks) the given leads."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    query = select(Lead).where(among(session, Lead.id, wanted)).order_by(Lead.id)
    if _locking(session):
        query = query.with_for_update()
    return {lead.id: lead for lead in (await session.scalars(query)).all()}


SCORED_COLUMNS = (
    "email",
    "score",
    "fit",
    "engagement",
    "grade",
    "disqualified_by",
    "stage",
    "mql_cycle",
    "qualified_in_cycle",
    "owner_rep_id",
    "owner_name",
    "attributes",
    "state",
    "rulebook_version",
    "last_activity_at",
    "updated_at",
    "source",
    "mql_event_id",
    "mql_due_at",
)
"""Every column that scoring a stored lead can change (a merge moves the owner over)."""


async def write_leads(
    session: AsyncSession, scored: Sequence[Lead], created: Sequence[Lead]
) -> None:
    """Write a batch's leads in two statements: the new ones (never added to the session)
    inserted together, the stored ones updated together and then detached from the session,
    which would otherwise write them again row by row."""
    await bulk_insert(session, Lead, [_lead_row(lead) for lead in created])
    stored = [lead for lead in scored if inspect(lead).persistent]
    rows = [
        {"id": lead.id, **{name: getattr(lead, name) for name in SCORED_COLUMNS}} for lead in stored
    ]
    await update_rows(session, Lead, rows, key="id")
    for lead in stored:
        session.expunge(lead)


_LEAD_COLUMNS = tuple(column.key for column in Lead.__table__.columns)


def _lead_row(lead: Lead) -> dict[str, Any]:
    return {name: getattr(lead, name) for name in _LEAD_COLUMNS}


async def insert_identities(session: AsyncSession, rows: Sequence[dict[str, str]]) -> None:
    await bulk_insert(session, LeadIdentity, rows)


async def insert_activities(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    await bulk_insert(session, Activity, rows)


async def logged_event_ids(session: AsyncSession, event_ids: Sequence[str]) -> set[str]:
    """The ids among these already in the activity log. A batch logs every activity it
    applies, in its own transaction, so the log is scoring's record of what was applied."""
    rows = await session.scalars(
        select(Activity.event_id).where(among(session, Activity.event_id, set(event_ids)))
    )
    return set(rows.all())


async def activity_log(session: AsyncSession, lead_id: str) -> list[ActivityRecord]:
    """Every stored activity of a lead, in event-time order."""
    rows = await session.execute(
        select(Activity.event_id, Activity.event_time, Activity.envelope)
        .where(Activity.lead_id == lead_id)
        .order_by(Activity.event_time, Activity.event_id)
    )
    return [to_record(event_id, time, envelope) for event_id, time, envelope in rows]


async def due_leads(session: AsyncSession, now: datetime, limit: int) -> list[Lead]:
    """Leads whose held qualification may be announced, locked; on PostgreSQL those another
    transaction holds are skipped (a batch is scoring them, and will decide again)."""
    query = (
        select(Lead)
        .where(Lead.mql_due_at.is_not(None), Lead.mql_due_at <= now, Lead.merged_into.is_(None))
        .order_by(Lead.mql_due_at, Lead.id)
        .limit(limit)
    )
    if _locking(session):
        query = query.with_for_update(skip_locked=True)
    return list((await session.scalars(query)).all())


async def any_due(session: AsyncSession, now: datetime) -> bool:
    query = select(Lead.id).where(Lead.mql_due_at.is_not(None), Lead.mql_due_at <= now).limit(1)
    return (await session.scalar(query)) is not None


async def live_leads_after(
    session: AsyncSession, after: str, limit: int
) -> list[tuple[str, str | None]]:
    """(id, source) of the next `limit` leads not merged away, in id order: keyset paging."""
    rows = await session.execute(
        select(Lead.id, Lead.source)
        .where(Lead.merged_into.is_(None), Lead.id > after)
        .order_by(Lead.id)
        .limit(limit)
    )
    return [(lead_id, source) for lead_id, source in rows]


async def activity_logs(
    session: AsyncSession, lead_ids: Sequence[str], *, before: datetime
) -> dict[str, list[ActivityRecord]]:
    """Activity logs of several leads up to `before`, each in event-time order."""
    rows = await session.execute(
        select(Activity.lead_id, Activity.event_id, Activity.event_time, Activity.envelope)
        .where(among(session, Activity.lead_id, lead_ids), Activity.event_time < before)
        .order_by(Activity.lead_id, Activity.event_time, Activity.event_id)
    )
    logs: dict[str, list[ActivityRecord]] = {}
    for lead_id, event_id, time, envelope in rows:
        logs.setdefault(lead_id, []).append(to_record(event_id, time, envelope))
    return logs


_ActivityEvent = CloudEvent[ActivityData]


def to_record(event_id: str, time: Any, envelope: str) -> ActivityRecord:
    data = _ActivityEvent.model_validate_json(envelope).data
    return ActivityRecord(event_id=event_id, time=time, activity=data)


def activity_row(event: CloudEvent[ActivityData], envelope: str, lead_id: str) -> dict[str, Any]:
    return {
        "event_id": event.id,
        "lead_id": lead_id,
        "activity_type": event.data.activity_type.value,
        "event_time": event.time,
        "envelope": envelope,
    }


@dataclass
class LedgerWrites:
    """A batch's ledger changes, written in two statements: replaced ledgers are deleted,
    then every new line is inserted."""

    replaced: set[str] = field(default_factory=set)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(
        self, lead_id: str, lines: Sequence[LedgerLine], *, version: str, replace: bool
    ) -> None:
        if replace:
            self.replaced.add(lead_id)
        self.rows.extend(
            {
                "lead_id": lead_id,
                "event_id": line.event_id,
                "rule": line.rule,
                "kind": line.kind,
                "points": line.points,
                "event_time": line.time,
                "rulebook_version": version,
            }
            for line in lines
        )

    async def write(self, session: AsyncSession) -> None:
        if self.replaced:
            await session.execute(
                delete(LedgerEntry).where(
                    among(session, LedgerEntry.lead_id, sorted(self.replaced))
                )
            )
        await bulk_insert(session, LedgerEntry, self.rows)


async def rule_totals(
    session: AsyncSession, cycle_starts: Mapping[str, datetime | None]
) -> dict[str, list[tuple[str, float]]]:
    """Points per rule in each lead's stored ledger since its cycle start, summed by the
    database: one query per distinct cycle start (usually one for the whole batch)."""
    leads_by_start: dict[datetime | None, list[str]] = {}
    for lead_id, start in cycle_starts.items():
        leads_by_start.setdefault(start, []).append(lead_id)
    totals: dict[str, list[tuple[str, float]]] = {}
    for start, lead_ids in leads_by_start.items():
        query = (
            select(LedgerEntry.lead_id, LedgerEntry.rule, func.sum(LedgerEntry.points))
            .where(among(session, LedgerEntry.lead_id, lead_ids))
            .group_by(LedgerEntry.lead_id, LedgerEntry.rule)
        )
        if start is not None:
            query = query.where(LedgerEntry.event_time >= start)
        for lead_id, rule, total in await session.execute(query):
            totals.setdefault(lead_id, []).append((rule, float(total)))
    return totals


async def move_lead(session: AsyncSession, merged: str, survivor: str) -> None:
    """Repoint everything of `merged` to `survivor`: identities, activities, earlier merges."""
    await session.execute(
        update(LeadIdentity).where(LeadIdentity.lead_id == merged).values(lead_id=survivor)
    )
    await session.execute(
        update(Activity).where(Activity.lead_id == merged).values(lead_id=survivor)
    )
    await session.execute(
        update(Lead).where(Lead.merged_into == merged).values(merged_into=survivor)
    )
    await session.execute(delete(LedgerEntry).where(LedgerEntry.lead_id == merged))


async def resolve_merged(session: AsyncSession, lead_id: str) -> Lead | None:
    """The lead, or the lead it was merged into."""
    lead = await session.get(Lead, lead_id)
    if lead is not None and lead.merged_into:
        return await session.get(Lead, lead.merged_into)
    return lead


# --- the API's queries --------------------------------------------------------------------


@dataclass(frozen=True)
class LeadFilter:
    """What `GET /leads` asks for; None is no condition."""

    email: str | None = None
    stage: LeadStage | None = None
    grade: str | None = None
    """A fit grade (`B`: B1 to B4) or a grade (`B2`)."""
    min_score: float | None = None
    max_score: float | None = None
    updated_since: datetime | None = None


async def find_leads(
    session: AsyncSession, where: LeadFilter, *, offset: int, limit: int
) -> list[Lead]:
    """Live leads (not merged away) matching `where`, most recently changed first."""
    query = select(Lead).where(Lead.merged_into.is_(None))
    if where.email is not None:
        owner = select(LeadIdentity.lead_id).where(
            LeadIdentity.key == f"email:{where.email.lower()}"
        )
        query = query.where(Lead.id.in_(owner))
    if where.stage is not None:
        query = query.where(Lead.stage == where.stage)
    if where.grade is not None:
        grade = where.grade
        query = query.where(
            Lead.grade.startswith(grade) if len(grade) == 1 else Lead.grade == grade
        )
    if where.min_score is not None:
        query = query.where(Lead.score >= where.min_score)
    if where.max_score is not None:
        query = query.where(Lead.score <= where.max_score)
    if where.updated_since is not None:
        query = query.where(Lead.updated_at >= where.updated_since)
    query = query.order_by(Lead.updated_at.desc(), Lead.id).offset(offset).limit(limit)
    return list((await session.scalars(query)).all())


async def identities_of(session: AsyncSession, lead_ids: Sequence[str]) -> dict[str, list[str]]:
    """Each lead's identity keys, sorted (by code point, as Python sorts: not by the
    database's collation)."""
    if not lead_ids:
        return {}
    rows = await session.execute(
        select(LeadIdentity.lead_id, LeadIdentity.key).where(
            among(session, LeadIdentity.lead_id, sorted(set(lead_ids)))
        )
    )
    keys: dict[str, list[str]] = {lead_id: [] for lead_id in lead_ids}
    for lead_id, key in rows:
        keys[lead_id].append(key)
    return {lead_id: sorted(found) for lead_id, found in keys.items()}


async def ledger_of(session: AsyncSession, lead_id: str) -> list[LedgerEntry]:
    """A lead's ledger in event-time order."""
    rows = await session.scalars(
        select(LedgerEntry)
        .where(LedgerEntry.lead_id == lead_id)
        .order_by(LedgerEntry.event_time, LedgerEntry.id)
    )
    return list(rows.all())


async def stored_rulebooks(session: AsyncSession) -> list[StoredRulebook]:
    """Every stored rulebook version, oldest first."""
    rows = await session.scalars(
        select(StoredRulebook).order_by(StoredRulebook.created_at, StoredRulebook.version)
    )
    return list(rows.all())


async def stored_rulebook(session: AsyncSession, version: str) -> StoredRulebook | None:
    return await session.get(StoredRulebook, version)


async def job(session: AsyncSession, job_id: str) -> ScoringJob | None:
    return await session.get(ScoringJob, job_id)
