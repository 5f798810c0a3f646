"""The follow-up policy: how long sales has to accept a lead, on which calendar."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from services.config_files import load_model
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
    return load_model(path, AcceptPolicy, what="SLA policy", error=PolicyError)
