"""The rulebook: the written definition of a qualified lead, and its pure evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.events import ActivityData, ActivityType
from services.config_files import load_model, validate


class RulebookError(ValueError):
    """A rulebook that cannot be used; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Match(_Strict):
    """What an activity must look like for a rule to apply; every given condition must hold."""

    activity: ActivityType | None = None
    event_name: str | None = None
    form: str | None = None
    url_contains: str | None = None

    def matches(self, activity: ActivityData) -> bool:
        if self.activity is not None and activity.activity_type != self.activity:
            return False
        if self.event_name is not None and activity.event_name != self.event_name:
            return False
        if self.form is not None and activity.properties.get("form") != self.form:
            return False
        if self.url_contains is not None:
            url = activity.properties.get("url") or activity.context.get("page", {}).get("url")
            if not isinstance(url, str) or self.url_contains not in url:
                return False
        return True


class PointsRule(_Strict):
    name: str = Field(min_length=1)
    when: Match
    points: float


class TriggerRule(_Strict):
    """An activity that qualifies the lead at once, whatever the score."""

    name: str = Field(min_length=1)
    when: Match


class Mql(_Strict):
    threshold: float = Field(gt=0)


class Rulebook(_Strict):
    version: str = Field(min_length=1)
    mql: Mql
    engagement: tuple[PointsRule, ...] = ()
    triggers: tuple[TriggerRule, ...] = ()


@dataclass(frozen=True)
class Contribution:
    rule: str
    points: float


@dataclass(frozen=True)
class Qualification:
    reason: str  # "threshold" or "trigger"
    trigger: str | None


@dataclass(frozen=True)
class Outcome:
    contributions: tuple[Contribution, ...]
    score: float
    qualification: Qualification | None


def contributions_for(rulebook: Rulebook, activity: ActivityData) -> tuple[Contribution, ...]:
    return tuple(
        Contribution(rule.name, rule.points)
        for rule in rulebook.engagement
        if rule.when.matches(activity)
    )


def trigger_for(rulebook: Rulebook, activity: ActivityData) -> str | None:
    return next((rule.name for rule in rulebook.triggers if rule.when.matches(activity)), None)


def evaluate(
    rulebook: Rulebook, activity: ActivityData, *, score: float, qualified: bool
) -> Outcome:
    """Apply one activity to a lead whose current score is `score`.

    `qualified` says whether the lead already qualified in its current cycle; a lead
    qualifies at most once per cycle.
    """
    if activity.is_bot:
        return Outcome((), score, None)
    contributions = contributions_for(rulebook, activity)
    new_score = score + sum(item.points for item in contributions)
    qualification = None
    if not qualified:
        trigger = trigger_for(rulebook, activity)
        if trigger is not None:
            qualification = Qualification("trigger", trigger)
        elif new_score >= rulebook.mql.threshold:
            qualification = Qualification("threshold", None)
    return Outcome(contributions, new_score, qualification)


def top_contributions(items: Sequence[Contribution], limit: int = 5) -> list[Contribution]:
    """The rules that gave the most points, summed per rule."""
    totals: dict[str, float] = {}
    for item in items:
        totals[item.rule] = totals.get(item.rule, 0.0) + item.points
    ranked = sorted(totals.items(), key=lambda pair: (-pair[1], pair[0]))
    return [Contribution(rule, points) for rule, points in ranked[:limit]]


def parse_rulebook(document: Any, *, origin: str = "rulebook") -> Rulebook:
    return validate(Rulebook, document, origin=origin, error=RulebookError)


def load_rulebook(path: Path) -> Rulebook:
    return load_model(path, Rulebook, what="rulebook", error=RulebookError)
