"""The rulebook: the qualified-lead definition sales and marketing agreed on, as a model.

A rulebook is one YAML file (see `examples/rulebook.yaml`) with five kinds of rules:

* `fit` — points for who the lead is (their current attributes). Not additive over time.
* `disqualifiers` — attributes that stop a lead from qualifying at all.
* `engagement` — points for what the lead does, with caps, decay and expiry.
* `triggers` — activities that qualify a lead at once, whatever the score.
* `mql`, `grades`, `decay`, `recycle` — how scores turn into grades and qualification.

This module only describes and validates; `scoring_service.engine` folds activities through
it. Conditions are compiled once, when the rulebook is loaded, into plain closures, because
matching runs for every activity on the hot path. The conditions on values (`if:` blocks,
`fields`) are the shared vocabulary of `services.conditions`, which routing rules use too.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PrivateAttr,
    model_validator,
)

from schemas.events import ActivityData, ActivityType
from services.conditions import (
    AttributesCheck,
    Conditions,
    Regex,
    StrictModel,
    Texts,
    TextSearch,
    all_conditions,
    as_number,
    contains_any,
    value_key,
    with_derived,
)
from services.conditions import Condition as Condition
from services.conditions import compile_regex as compile_regex
from services.conditions import timeline_months as timeline_months
from services.located_yaml import (
    ConfigFileError,
    Loc,
    located_error,
    parse_document,
    placed,
    printable,
    validate_document,
)
from services.located_yaml import Problem as Problem


class RulebookError(ConfigFileError):
    """A rulebook that cannot be used; the message names the file, the line and the field."""


T = TypeVar("T")
FitGrade = Literal["A", "B", "C", "D"]
FIT_GRADES: tuple[FitGrade, ...] = ("A", "B", "C", "D")


# --- conditions on activities ---------------------------------------------------------------

ActivityCheck = Callable[[ActivityData, float | None], bool]


def activity_url(activity: ActivityData) -> str | None:
    url = activity.properties.get("url")
    if not isinstance(url, str):
        page = activity.context.get("page")
        url = page.get("url") if isinstance(page, dict) else None
    return url if isinstance(url, str) else None


def activity_seconds(activity: ActivityData) -> float | None:
    for name in ("seconds", "duration"):
        number = as_number(activity.properties.get(name))
        if number is not None:
            return number
    return None


def activity_field(activity: ActivityData, name: str) -> Any:
    """A value this activity states: its property, else the lead attribute it carries."""
    value = activity.properties.get(name)
    return value if value is not None else activity.attributes.get(name)


def _content_name(activity: ActivityData) -> Any:
    properties = activity.properties
    for name in ("content", "title", "name"):
        if properties.get(name) is not None:
            return properties[name]
    return None


class ActivityMatch(StrictModel):
    """What one activity must look like; every condition given must hold.

    `new_session_after_minutes` matches a page view that comes at least that long after the
    lead's previous page view (in event time): a repeat visit. A lead's first page view is
    not a repeat visit.
    """

    activity: ActivityType | None = None
    event_name: str | None = None
    form: Texts | None = None
    content: Texts | None = None
    url_contains: Texts | None = None
    url: str | None = Field(default=None, description="A glob such as '*/blog/*'.")
    url_regex: Regex | None = None
    min_seconds: float | None = Field(default=None, ge=0)
    new_session_after_minutes: float | None = Field(default=None, gt=0)
    fields: Conditions | None = None

    _matches: ActivityCheck = PrivateAttr()
    _matches_of_type: ActivityCheck = PrivateAttr()

    @model_validator(mode="after")
    def _coherent(self) -> ActivityMatch:
        if not self.model_fields_set:
            raise ValueError("give at least one condition, e.g. activity: page_view")
        if self.new_session_after_minutes is not None and self.activity not in (
            None,
            ActivityType.PAGE_VIEW,
        ):
            raise ValueError("new_session_after_minutes applies to page_view activities only")
        return self

    def model_post_init(self, context: Any, /) -> None:
        checks = tuple(self._build_checks())
        self._matches = _all_of_activity(checks)
        self._matches_of_type = _all_of_activity(
            checks[1:] if self.activity is not None else checks
        )

    def predicate(self, *, type_known: bool = False) -> ActivityCheck:
        """`type_known`: the caller only passes activities of `activity`'s type (the compiled
        rulebook indexes rules by type), so the predicate need not check it again."""
        return self._matches_of_type if type_known else self._matches

    def matches(self, activity: ActivityData, gap_minutes: float | None = None) -> bool:
        """`gap_minutes`: time since the lead's previous page view, None if there was none."""
        return self._matches(activity, gap_minutes)

    def _build_checks(self) -> Iterator[ActivityCheck]:
        if self.activity is not None:  # first: model_post_init leaves it out for `type_known`
            kind = self.activity
            yield lambda activity, _gap: activity.activity_type == kind
        if self.event_name is not None:
            name = self.event_name.strip().casefold()
            yield lambda activity, _gap: activity.event_name.strip().casefold() == name
        if self.form is not None:
            yield _property_in("form", self.form)
        if self.content is not None:
            names = frozenset(value_key(item) for item in self.content)
            yield lambda activity, _gap: value_key(_content_name(activity)) in names
        yield from self._url_checks()
        if self.min_seconds is not None:
            yield _long_enough(self.min_seconds)
        if self.new_session_after_minutes is not None:
            yield _new_session(self.new_session_after_minutes)
        if self.fields:
            predicates = tuple(
                (name, condition.predicate()) for name, condition in self.fields.items()
            )
            yield lambda activity, _gap: all(
                holds(activity_field(activity, name)) for name, holds in predicates
            )

    def _url_checks(self) -> Iterator[ActivityCheck]:
        if self.url_contains is not None:
            needles = tuple(needle.casefold() for needle in self.url_contains)
            yield (
                lambda activity, _gap: (
                    (u := activity_url(activity)) is not None and (contains_any(u, needles))
                )
            )
        if self.url is not None:
            # Python's re is safe here: fnmatch translates `*` to atomic groups, which do not
            # backtrack, and a glob has no other repetition
            glob = re.compile(fnmatch.translate(self.url), re.IGNORECASE).match
            yield _url_found(lambda url: glob(url) is not None)
        if self.url_regex is not None:
            yield _url_found(compile_regex(self.url_regex))


def _all_of_activity(checks: tuple[ActivityCheck, ...]) -> ActivityCheck:
    """The checks as one predicate (run for every rule on every activity: a single check is
    returned as it is)."""
    if not checks:
        return _always
    if len(checks) == 1:
        return checks[0]

    def matches(activity: ActivityData, gap: float | None) -> bool:
        # a loop rather than all(<generator>): this runs per rule per activity
        for check in checks:  # noqa: SIM110
            if not check(activity, gap):
                return False
        return True

    return matches


def _always(_activity: ActivityData, _gap: float | None) -> bool:
    return True


def _long_enough(least: float) -> ActivityCheck:
    def check(activity: ActivityData, _gap: float | None) -> bool:
        seconds = activity_seconds(activity)
        return seconds is not None and seconds >= least

    return check


def _url_found(found: TextSearch) -> ActivityCheck:
    def check(activity: ActivityData, _gap: float | None) -> bool:
        url = activity_url(activity)
        return url is not None and found(url)

    return check


def _property_in(name: str, allowed_values: tuple[str, ...]) -> ActivityCheck:
    allowed = frozenset(value_key(item) for item in allowed_values)
    return lambda activity, _gap: value_key(activity.properties.get(name)) in allowed


def _new_session(minutes: float) -> ActivityCheck:
    return lambda activity, gap: (
        activity.activity_type == ActivityType.PAGE_VIEW and gap is not None and gap >= minutes
    )


# --- rules ----------------------------------------------------------------------------------

RuleName = Annotated[str, Field(min_length=1, max_length=100), AfterValidator(printable)]


class _ActivityRule(StrictModel):
    name: RuleName
    when: ActivityMatch
    unless: ActivityMatch | None = None

    def predicate(self, *, type_known: bool = False) -> ActivityCheck:
        """`when` holds and `unless` (if given) does not; `type_known` as for `when`."""
        when = self.when.predicate(type_known=type_known)
        if self.unless is None:
            return when
        unless = self.unless.predicate()
        return lambda activity, gap: when(activity, gap) and not unless(activity, gap)

    def matches(self, activity: ActivityData, gap_minutes: float | None = None) -> bool:
        """For one-off checks; the engine runs the predicates `Rulebook.compiled` holds."""
        return self.predicate()(activity, gap_minutes)


class Cap(StrictModel):
    """Limits on one engagement rule so repeating an action cannot farm points.

    Days and ISO weeks are calendar periods in UTC of the activity's event time. Point caps
    bound the size of the points (also for negative rules); the last grant may be partial.
    """

    times: int | None = Field(default=None, ge=1)
    times_per_day: int | None = Field(default=None, ge=1)
    times_per_week: int | None = Field(default=None, ge=1)
    points: float | None = Field(default=None, gt=0)
    points_per_day: float | None = Field(default=None, gt=0)
    points_per_week: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _some_limit(self) -> Cap:
        if not self.model_fields_set:
            raise ValueError("give at least one limit, e.g. times_per_day: 1")
        return self


class EngagementRule(_ActivityRule):
    points: float
    cap: Cap | None = None


class Trigger(_ActivityRule):
    """An activity that qualifies the lead at once, whatever the score."""


class FitRule(StrictModel):
    name: RuleName
    if_: Conditions = Field(alias="if", min_length=1)
    points: float


class Disqualifier(StrictModel):
    """Attributes that block qualification (also by trigger), whatever the score."""

    name: RuleName
    if_: Conditions = Field(alias="if", min_length=1)


# --- scores to grades and qualification -----------------------------------------------------


class FitBands(StrictModel):
    """The lowest fit score for each letter; below C is D. A is the best fit."""

    A: float = 60
    B: float = 35
    C: float = 15

    @model_validator(mode="after")
    def _descending(self) -> FitBands:
        if not self.A > self.B > self.C:
            raise ValueError("each better grade needs a higher minimum: A > B > C")
        return self

    def grade(self, fit: float) -> FitGrade:
        if fit >= self.A:
            return "A"
        if fit >= self.B:
            return "B"
        return "C" if fit >= self.C else "D"


class EngagementBands(StrictModel):
    """The lowest engagement score for each digit; below 3 is 4. 1 is the most engaged."""

    one: float = Field(default=100, alias="1")
    two: float = Field(default=50, alias="2")
    three: float = Field(default=20, alias="3")

    @model_validator(mode="before")
    @classmethod
    def _text_keys(cls, data: Any) -> Any:
        return {str(key): value for key, value in data.items()} if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _descending(self) -> EngagementBands:
        if not self.one > self.two > self.three:
            raise ValueError("each better grade needs a higher minimum: 1 > 2 > 3")
        return self

    def grade(self, engagement: float) -> int:
        if engagement >= self.one:
            return 1
        if engagement >= self.two:
            return 2
        return 3 if engagement >= self.three else 4


class Grades(StrictModel):
    """A grade such as "A1" is fit letter + engagement digit; "A1" is the best lead."""

    fit: FitBands = FitBands()
    engagement: EngagementBands = EngagementBands()


class Mql(StrictModel):
    threshold: float = Field(gt=0)
    min_fit_grade: FitGrade | None = None

    def fit_grade_ok(self, grade: FitGrade) -> bool:
        if self.min_fit_grade is None:
            return True
        return FIT_GRADES.index(grade) <= FIT_GRADES.index(self.min_fit_grade)


class Decay(StrictModel):
    """How engagement fades, in event time: halving every `half_life_days`, and/or points
    that stop counting `expire_after_days` after the activity. Neither is required."""

    half_life_days: float | None = Field(default=None, gt=0)
    expire_after_days: float | None = Field(default=None, gt=0)

    def factor(self, seconds: float) -> float:
        """How much of a point is left `seconds` after it was granted (decay only)."""
        if self.half_life_days is None or seconds == 0:
            return 1.0
        return float(2.0 ** (-seconds / (self.half_life_days * 86400.0)))

    @property
    def expiry_seconds(self) -> float | None:
        days = self.expire_after_days
        return None if days is None else days * 86400.0


def _text(value: Any) -> Any:
    return str(value) if isinstance(value, int | float | date) else value


class Rulebook(StrictModel):
    version: Annotated[
        str, BeforeValidator(_text), Field(min_length=1, max_length=100), AfterValidator(printable)
    ]
    description: str | None = None
    mql: Mql
    grades: Grades = Grades()
    decay: Decay = Decay()
    recycle: Literal["reset", "keep"] = Field(
        default="reset",
        description="On recycle to nurture: engagement starts from zero (reset) or carries on.",
    )
    fit: tuple[FitRule, ...] = ()
    disqualifiers: tuple[Disqualifier, ...] = ()
    engagement: tuple[EngagementRule, ...] = ()
    triggers: tuple[Trigger, ...] = ()

    def model_post_init(self, context: Any, /) -> None:
        _ = self.compiled  # built while validating, so a rule that cannot compile is refused

    @cached_property
    def compiled(self) -> Compiled:
        """The rules as plain predicates, built once; what the engine runs per activity.

        A cached property rather than a private attribute: it is read for every activity,
        and pydantic serves private attributes through a slow `__getattr__`."""
        return Compiled.of(self)

    def fingerprint(self) -> str:
        """A stable hash of the rules' content (not of the file's layout or comments)."""
        return self.compiled.fingerprint

    def trigger_for(self, activity: ActivityData, gap_minutes: float | None = None) -> str | None:
        return self.compiled.trigger_for(activity, gap_minutes)

    def fit_for(self, attributes: Mapping[str, Any]) -> tuple[tuple[str, float], ...]:
        return self.compiled.fit_for(attributes)

    def disqualified_by(self, attributes: Mapping[str, Any]) -> tuple[str, ...]:
        return self.compiled.disqualified_by(attributes)


@dataclass(frozen=True, slots=True)
class ScoringRule:
    """An engagement rule ready to run: `matches(activity, gap_minutes)`, for activities of
    the type it is indexed under in `Compiled` (it does not check the type again)."""

    name: str
    points: float
    cap: Cap | None
    matches: ActivityCheck


@dataclass(frozen=True, slots=True)
class Compiled:
    """A rulebook's rules as plain closures indexed by activity type; a rule's closure
    assumes an activity of the type it is found under.

    Pydantic models answer private-attribute lookups slowly; the fold touches this object
    (plain slots) instead, several times per activity.
    """

    fingerprint: str
    engagement: Mapping[ActivityType, tuple[ScoringRule, ...]]
    triggers: Mapping[ActivityType, tuple[tuple[str, ActivityCheck], ...]]
    fit: tuple[tuple[str, float, AttributesCheck], ...]
    disqualifiers: tuple[tuple[str, AttributesCheck], ...]

    @classmethod
    def of(cls, rulebook: Rulebook) -> Compiled:
        canonical = json.dumps(
            rulebook.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":")
        )
        engagement = [
            (
                rule.when.activity,
                ScoringRule(rule.name, rule.points, rule.cap, rule.predicate(type_known=True)),
            )
            for rule in rulebook.engagement
        ]
        triggers = [
            (rule.when.activity, (rule.name, rule.predicate(type_known=True)))
            for rule in rulebook.triggers
        ]
        return cls(
            fingerprint=hashlib.sha256(canonical.encode()).hexdigest()[:16],
            engagement={kind: _for_type(engagement, kind) for kind in ActivityType},
            triggers={kind: _for_type(triggers, kind) for kind in ActivityType},
            fit=tuple((rule.name, rule.points, all_conditions(rule.if_)) for rule in rulebook.fit),
            disqualifiers=tuple(
                (rule.name, all_conditions(rule.if_)) for rule in rulebook.disqualifiers
            ),
        )

    def trigger_for(self, activity: ActivityData, gap_minutes: float | None) -> str | None:
        for name, matches in self.triggers[activity.activity_type]:
            if matches(activity, gap_minutes):
                return name
        return None

    def fit_for(self, attributes: Mapping[str, Any]) -> tuple[tuple[str, float], ...]:
        """The fit rules these attributes match, with their points, in rulebook order."""
        view = with_derived(attributes)
        return tuple((name, points) for name, points, holds in self.fit if holds(view))

    def disqualified_by(self, attributes: Mapping[str, Any]) -> tuple[str, ...]:
        view = with_derived(attributes)
        return tuple(name for name, holds in self.disqualifiers if holds(view))


def _for_type(rules: Sequence[tuple[ActivityType | None, T]], kind: ActivityType) -> tuple[T, ...]:
    return tuple(rule for only, rule in rules if only is None or only == kind)


# --- loading, with errors that point at a line ----------------------------------------------


def rulebook_from_document(document: Any, *, origin: str = "rulebook") -> Rulebook:
    """Validate an already-parsed document (e.g. JSON from the admin API); no line numbers."""
    return _validated(document, origin=origin, root=None)


def parse_rulebook_text(text: str, origin: str = "rulebook.yaml") -> Rulebook:
    root, document = parse_document(text, origin, what="rulebook", error=RulebookError)
    return _validated(document, origin=origin, root=root)


def read_rulebook_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulebookError(f"cannot read rulebook {path}: {exc.strerror}") from exc


def load_rulebook(path: Path) -> Rulebook:
    return parse_rulebook_text(read_rulebook_text(path), str(path))


def _validated(document: Any, *, origin: str, root: yaml.Node | None) -> Rulebook:
    rulebook = validate_document(Rulebook, document, origin=origin, root=root, error=RulebookError)
    clashes = list(_name_clashes(rulebook))
    if clashes:
        raise located_error(
            RulebookError, origin, [placed(root, loc, message) for loc, message in clashes]
        )
    return rulebook


def _name_clashes(rulebook: Rulebook) -> Iterator[tuple[Loc, str]]:
    """Rule names identify rules in the ledger, so each is used once across all sections."""
    first: dict[str, str] = {}
    sections: tuple[tuple[str, Sequence[Any]], ...] = (
        ("fit", rulebook.fit),
        ("disqualifiers", rulebook.disqualifiers),
        ("engagement", rulebook.engagement),
        ("triggers", rulebook.triggers),
    )
    for section, rules in sections:
        for index, rule in enumerate(rules):
            here = f"{section}[{index}]"
            if rule.name in first:
                yield (
                    (section, index, "name"),
                    f"'{rule.name}' is already used by {first[rule.name]}",
                )
            else:
                first[rule.name] = here
