"""What a candidate rulebook would have done: MQL counts over a date range, from the log (pure)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from scoring_service import engine
from scoring_service.engine import ActivityRecord
from scoring_service.rules import Rulebook


@dataclass(frozen=True)
class LeadHistory:
    lead_id: str
    source: str | None
    records: tuple[ActivityRecord, ...]


@dataclass
class Tally:
    """MQLs a rulebook produces in a window: how many, of which grade, from which source."""

    mqls: int = 0
    by_grade: Counter[str] = field(default_factory=Counter)
    by_source: Counter[str] = field(default_factory=Counter)
    by_reason: Counter[str] = field(default_factory=Counter)

    def add(self, other: Tally) -> None:
        self.mqls += other.mqls
        self.by_grade.update(other.by_grade)
        self.by_source.update(other.by_source)
        self.by_reason.update(other.by_reason)


def first_qualification(
    rulebook: Rulebook, history: LeadHistory, end: datetime
) -> tuple[engine.Qualification, str] | None:
    """When (and at which grade) the lead would first have qualified before `end`."""
    records = [record for record in history.records if record.time < end]
    _, steps = engine.replay(rulebook, records)
    for step in steps:
        if step.qualification is not None:
            view = engine.snapshot(rulebook, step.state, step.qualification.time)
            return step.qualification, view.grade
    return None


def count(
    result: Tally, rulebook: Rulebook, history: LeadHistory, start: datetime, end: datetime
) -> None:
    """Add the lead to `result` if it would first have qualified within [start, end)."""
    found = first_qualification(rulebook, history, end)
    if found is None or found[0].time < start:
        return
    qualification, grade = found
    result.mqls += 1
    result.by_grade[grade] += 1
    result.by_source[history.source or "unknown"] += 1
    result.by_reason[qualification.trigger or qualification.reason] += 1


def compare(
    candidate: Rulebook,
    current: Rulebook,
    histories: Iterable[LeadHistory],
    start: datetime,
    end: datetime,
) -> tuple[Tally, Tally]:
    """Tallies of the candidate and the current rulebook over one pass of the histories."""
    proposed, actual = Tally(), Tally()
    for history in histories:
        count(proposed, candidate, history, start, end)
        count(actual, current, history, start, end)
    return proposed, actual
