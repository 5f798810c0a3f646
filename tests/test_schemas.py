"""The committed JSON Schema files are exactly what the pydantic contracts generate."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from schemas.envelope import CloudEvent
from schemas.events import ActivityData, ActivityType, Identity
from schemas.registry import CONTRACTS, JSON_DIR, Contract, render


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda contract: contract.name)
def test_committed_schema_matches_the_model(contract: Contract) -> None:
    path = JSON_DIR / contract.filename
    assert path.exists(), f"{path} missing: run `make schemas`"
    assert path.read_text(encoding="utf-8") == render(contract), (
        f"{path.name} is stale: run `make schemas` and commit the result"
    )


def test_no_stray_schema_files() -> None:
    expected = {contract.filename for contract in CONTRACTS}
    assert {path.name for path in JSON_DIR.glob("*.json")} == expected


def test_schema_names_its_versioned_id_and_requires_the_envelope() -> None:
    schema = json.loads(render(CONTRACTS[0]))
    assert schema["$id"] == "urn:leadflow:schema:lead.activity:v1"
    assert {"specversion", "id", "source", "type", "time", "subject", "data"} <= set(
        schema["required"]
    )


def test_identity_key_prefers_email_then_user_then_anonymous() -> None:
    assert Identity(email="A@B.io", user_id="u", anonymous_id="a").key() == "email:a@b.io"
    assert Identity(user_id="u", anonymous_id="a").key() == "user:u"
    assert Identity(anonymous_id="a").key() == "anon:a"
    with pytest.raises(ValueError, match="no email"):
        Identity().key()


def test_envelope_rejects_naive_time_and_unknown_fields() -> None:
    data = ActivityData(
        activity_type=ActivityType.PAGE_VIEW,
        event_name="page_view",
        identity=Identity(anonymous_id="a"),
        channel="test",
        received_at=datetime.now(UTC),
    )
    fields = {
        "id": "e1",
        "source": "s",
        "type": "t",
        "subject": "x",
        "dataschema": "d",
        "data": data,
    }
    with pytest.raises(ValueError, match="timezone"):
        CloudEvent[ActivityData](time=datetime(2026, 1, 1), **fields)
    with pytest.raises(ValueError, match="Extra inputs"):
        CloudEvent[ActivityData].model_validate(
            {"time": datetime.now(UTC), "extra_field": 1, **fields}
        )
