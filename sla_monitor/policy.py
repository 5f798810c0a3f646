"""The follow-up policy: how long sales has to accept a lead, on which calendar."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sla_monitor.calendar import BusinessCalendar, add_business_time


class PolicyError(ValueError):
    pass


class AcceptPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    accept_within_hours: float = Field(gt=0)
    business_hours: bool = True
    calendar: BusinessCalendar = BusinessCalendar()

    def deadline(self, start: datetime) -> datetime:
        window = timedelta(hours=self.accept_within_hours)
        if not self.business_hours:
            return start + window
        return add_business_time(self.calendar, start, window)


def load_policy(path: Path) -> AcceptPolicy:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicyError(f"cannot read SLA policy {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return AcceptPolicy.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(root)'}: {error['msg']}"
            for error in exc.errors()
        )
        raise PolicyError(f"{path}: {problems}") from exc
