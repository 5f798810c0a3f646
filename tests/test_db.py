"""The batch write helpers of services.db, on both backends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from scoring_service.models import Lead
from services.db import bulk_insert, create_engine, session_factory, update_rows

CREATED = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


def _lead(number: int) -> dict[str, Any]:
    return {
        "id": f"ld_{number}",
        "email": f"person{number}@example.com",
        "score": float(number),
        "stage": "lead",
        "mql_cycle": 0,
        "qualified_in_cycle": False,
        "attributes": {"industry": "software"},
        "rulebook_version": "v1",
        "created_at": CREATED,
        "updated_at": CREATED,
        "state": {},
    }


async def test_update_rows_changes_each_named_row_and_no_other(database_url: str) -> None:
    engine = create_engine(database_url)
    sessions = session_factory(engine)
    later = CREATED + timedelta(hours=3)
    try:
        async with sessions() as session, session.begin():
            await bulk_insert(session, Lead, [_lead(number) for number in range(4)])
        async with sessions() as session, session.begin():
            await update_rows(
                session,
                Lead,
                [
                    {
                        "id": f"ld_{number}",
                        "email": None,
                        "score": 10.5 * number,
                        "attributes": {"industry": "retail", "seats": number, "note": "Zürich"},
                        "state": {"grants": [[1, 2.5]], "format": 3},
                        "last_activity_at": later,
                    }
                    for number in (1, 3)
                ],
                key="id",
            )
        async with sessions() as session:
            leads = {lead.id: lead for lead in await session.scalars(select(Lead))}
    finally:
        await engine.dispose()

    for number in (1, 3):
        lead = leads[f"ld_{number}"]
        assert lead.email is None
        assert lead.score == 10.5 * number
        assert lead.attributes == {"industry": "retail", "seats": number, "note": "Zürich"}
        assert lead.state == {"grants": [[1, 2.5]], "format": 3}
        assert lead.last_activity_at == later
        assert lead.stage == "lead"  # a column the rows did not name keeps its value
    for number in (0, 2):
        lead = leads[f"ld_{number}"]
        assert (lead.email, lead.score, lead.last_activity_at) == (
            f"person{number}@example.com",
            float(number),
            None,
        )
        assert lead.attributes == {"industry": "software"}
