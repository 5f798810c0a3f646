"""Every event contract, its schema version, and the JSON Schema files generated from them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from schemas.envelope import CloudEvent, dataschema_uri
from schemas.events import (
    ActivityData,
    LeadAssignedData,
    LeadMqlData,
    LeadMqlRevokedData,
    LeadScoredData,
    LeadStatusData,
    SlaEventData,
)

JSON_DIR = Path(__file__).parent / "json"


@dataclass(frozen=True)
class Contract:
    name: str
    version: int
    data_model: type[BaseModel]
    on_topic: str | None = None
    """The topic it travels on, when not the one named like it (a revocation shares the
    topic, and so the order, of what it revokes)."""

    @property
    def topic(self) -> str:
        return self.on_topic or self.name

    @property
    def dataschema(self) -> str:
        return dataschema_uri(self.name, self.version)

    @property
    def filename(self) -> str:
        return f"{self.name}.v{self.version}.schema.json"

    def json_schema(self) -> dict[str, Any]:
        envelope = CloudEvent[self.data_model]  # type: ignore[name-defined]
        schema = envelope.model_json_schema(mode="serialization")
        schema["$id"] = self.dataschema
        schema["title"] = f"{self.name} v{self.version}"
        return schema


ACTIVITY = Contract("lead.activity", 1, ActivityData)
SCORED = Contract("lead.scored", 1, LeadScoredData)
MQL = Contract("lead.mql", 1, LeadMqlData)
MQL_REVOKED = Contract("lead.mql_revoked", 1, LeadMqlRevokedData, on_topic="lead.mql")
ASSIGNED = Contract("lead.assigned", 1, LeadAssignedData)
STATUS = Contract("lead.status", 1, LeadStatusData)
SLA_EVENT = Contract("sla.events", 1, SlaEventData)

CONTRACTS = (ACTIVITY, SCORED, MQL, MQL_REVOKED, ASSIGNED, STATUS, SLA_EVENT)


def render(contract: Contract) -> str:
    return json.dumps(contract.json_schema(), indent=2, sort_keys=True) + "\n"


def write_all(directory: Path = JSON_DIR) -> list[Path]:
    """Regenerate the committed JSON Schema files; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for contract in CONTRACTS:
        path = directory / contract.filename
        path.write_text(render(contract), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write_all():
        print(written_path)
