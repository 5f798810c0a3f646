"""The scoring fold: a lead's activities through a rulebook, pure and deterministic.

Everything here is computed in event time from plain data; nothing reads a clock, a database
or the network. `apply` folds one activity into a `LeadState`; `replay` sorts activities by
(event time, event id) and folds them all, which is what live processing does after a late
event. Because `replay` is nothing but `apply` in that order, and a state survives
`to_json`/`from_json` unchanged, every path over the same activities ends in an identical
(`==`) state: any arrival order, any batching, a prefix replayed and the rest applied.

Engagement storage keeps state bounded:

* without expiry, points fold into one figure anchored at the time of the latest grant
  (multiplied down by the half-life on each grant, when there is one), so the state stays
  the same size however long the lead lives;
* with `expire_after_days`, each grant is kept until it expires (it has to be, to drop out
  on time) and pruned after that, so the state holds at most one expiry window of grants.

The ledger (`Step.lines`) explains a score: engagement lines are the points each rule
granted (after caps, before decay), and fit lines are changes, so that a lead's fit lines
always add up to its current fit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from schemas.events import ActivityData, ActivityType
from scoring_service.rules import Cap, Compiled, FitGrade, Rulebook, ScoringRule

STATE_FORMAT = 1
_MICROSECOND = timedelta(microseconds=1)
_MISSING = object()


@dataclass(frozen=True, slots=True)
class ActivityRecord:
    """One stored activity of a lead."""

    event_id: str
    time: datetime
    activity: ActivityData


# The fold's value objects are never changed once built, but they are not declared frozen: a
# frozen dataclass's __init__ sets each field through object.__setattr__, six times slower,
# and the fold builds several of them per activity (`leadflow bench scoring` profiles).


@dataclass(slots=True)
class LedgerLine:
    event_id: str
    time: datetime
    rule: str
    kind: Literal["fit", "engagement"]
    points: float


@dataclass(frozen=True, slots=True)
class Qualification:
    event_id: str
    time: datetime
    reason: Literal["threshold", "trigger"]
    trigger: str | None


@dataclass(slots=True)
class Grant:
    """Engagement points granted at one event time, kept only while they can expire.

    All rules' points from activities at the same time share one grant, since they decay
    and expire together; the ledger says which rule gave what.
    """

    time: datetime
    points: float


@dataclass(slots=True)
class CapCounter:
    """How often and how much one capped rule granted: in all, on `day` and in `week`."""

    times: int = 0
    points: float = 0.0
    day: int = 0
    day_times: int = 0
    day_points: float = 0.0
    week: int = 0
    week_times: int = 0
    week_points: float = 0.0


@dataclass(slots=True)
class LeadState:
    """Everything the fold needs to continue with a lead; treat it (and its dicts) as read-only.

    `fit_for` is the fingerprint of the rulebook the fit was computed with: fit is refreshed
    whenever it differs, e.g. for a state started from known attributes. Engagement, caps and
    sessions belong to the rulebook they were folded with; a new rulebook means a replay.
    """

    attributes: Mapping[str, Any] = field(default_factory=dict)
    fit_rules: tuple[tuple[str, float], ...] = ()
    fit: float = 0.0
    disqualified_by: tuple[str, ...] = ()
    fit_for: str | None = None
    grants: tuple[Grant, ...] = ()
    folded: float = 0.0
    folded_at: datetime | None = None
    caps: Mapping[str, CapCounter] = field(default_factory=dict)
    last_page_view: datetime | None = None
    last_time: datetime | None = None
    last_event_id: str | None = None
    cycle_start: datetime | None = None
    qualified_in_cycle: bool = False
    qualification: Qualification | None = None
    """What qualified the lead in the current cycle (in event time), if anything did."""
    source: str | None = None
    """Where the lead came from: the source of its first activity in event time."""

    @property
    def last_key(self) -> tuple[datetime, str] | None:
        """(event time, event id) of the last activity applied; the next must sort after it."""
        if self.last_time is None or self.last_event_id is None:
            return None
        return self.last_time, self.last_event_id

    def to_json(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "attributes": dict(self.attributes),
            "fit_rules": [[name, points] for name, points in self.fit_rules],
            "fit": self.fit,
            "disqualified_by": list(self.disqualified_by),
            "fit_for": self.fit_for,
            "grants": [[_micros(grant.time), grant.points] for grant in self.grants],
            "folded": self.folded,
            "folded_at": _iso(self.folded_at),
            "caps": {rule: _counter_json(counter) for rule, counter in self.caps.items()},
            "last_page_view": _iso(self.last_page_view),
            "last_time": _iso(self.last_time),
            "last_event_id": self.last_event_id,
            "cycle_start": _iso(self.cycle_start),
            "qualified_in_cycle": self.qualified_in_cycle,
            "qualification": _qualification_json(self.qualification),
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LeadState:
        if data.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown lead state format {data.get('format')!r}")
        try:
            return cls(
                attributes=dict(data["attributes"]),
                fit_rules=tuple((str(name), float(points)) for name, points in data["fit_rules"]),
                fit=float(data["fit"]),
                disqualified_by=tuple(data["disqualified_by"]),
                fit_for=data["fit_for"],
                grants=tuple(Grant(_from_micros(t), float(p)) for t, p in data["grants"]),
                folded=float(data["folded"]),
                folded_at=_maybe_time(data["folded_at"]),
                caps={rule: CapCounter(**counter) for rule, counter in data["caps"].items()},
                last_page_view=_maybe_time(data["last_page_view"]),
                last_time=_maybe_time(data["last_time"]),
                last_event_id=data["last_event_id"],
                cycle_start=_maybe_time(data["cycle_start"]),
                qualified_in_cycle=bool(data["qualified_in_cycle"]),
                qualification=_qualification_from(data.get("qualification")),
                source=data.get("source"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a lead state: {exc!r}") from exc


def _qualification_json(qualification: Qualification | None) -> dict[str, Any] | None:
    if qualification is None:
        return None
    return {
        "event_id": qualification.event_id,
        "time": qualification.time.isoformat(),
        "reason": qualification.reason,
        "trigger": qualification.trigger,
    }


def _qualification_from(data: Mapping[str, Any] | None) -> Qualification | None:
    """States written before qualifications were kept read as None (their MQLs went out)."""
    if data is None:
        return None
    reason = data["reason"]
    if reason not in ("threshold", "trigger"):
        raise ValueError(f"unknown qualification reason {reason!r}")
    return Qualification(data["event_id"], _time(data["time"]), reason, data["trigger"])


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(moment: datetime) -> int:
    """Grants can number hundreds: stored as integer microseconds, compact and quick to read."""
    return (moment - _EPOCH) // _MICROSECOND


def _from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(micros))


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _time(text: str) -> datetime:
    return utc(datetime.fromisoformat(text))


def _maybe_time(text: str | None) -> datetime | None:
    return None if text is None else _time(text)


def _counter_json(counter: CapCounter) -> dict[str, Any]:
    return {
        "times": counter.times,
        "points": counter.points,
        "day": counter.day,
        "day_times": counter.day_times,
        "day_points": counter.day_points,
        "week": counter.week,
        "week_times": counter.week_times,
        "week_points": counter.week_points,
    }


def utc(moment: datetime) -> datetime:
    """The same instant in UTC; naive times are refused, since event time must be exact."""
    if moment.tzinfo is UTC:
        return moment
    offset = moment.utcoffset()
    if offset is None:
        raise ValueError(f"event time {moment.isoformat()} has no time zone")
    return moment.replace(tzinfo=UTC) if not offset else moment.astimezone(UTC)


def initial_state(
    cycle_start: datetime | None = None, attributes: Mapping[str, Any] | None = None
) -> LeadState:
    """A lead before any activity; fit for `attributes` is computed on first use."""
    return LeadState(
        attributes=dict(attributes or {}),
        cycle_start=None if cycle_start is None else utc(cycle_start),
    )


@dataclass(slots=True)
class Step:
    """The result of one activity.

    `lines`: fit changes (when the activity changed which fit rules match) then engagement
    points granted after caps; rules that granted nothing have no line.
    `qualification`: set iff this activity made the lead qualify, at most once per cycle.
    """

    state: LeadState
    lines: tuple[LedgerLine, ...]
    qualification: Qualification | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A lead's scores as of a moment, rounded to 4 decimals; `total` = `fit` + `engagement`."""

    fit: float
    engagement: float
    total: float
    fit_grade: FitGrade
    engagement_grade: int
    grade: str
    disqualified_by: tuple[str, ...]


# --- the fold -------------------------------------------------------------------------------


def apply(rulebook: Rulebook, state: LeadState, record: ActivityRecord) -> Step:
    """Fold one activity into the state.

    Activities must come in (event time, event id) order: a key at or before the last one
    applied raises ValueError (replay from the log instead). Bot activities only advance
    that key. Activities before the cycle start never qualify; under `recycle: reset` they
    earn no engagement either (they belong to the cycle that was reset).
    """
    time = utc(record.time)
    _check_order(state, time, record.event_id)
    activity = record.activity
    if activity.is_bot:
        return Step(replace(state, last_time=time, last_event_id=record.event_id), (), None)
    compiled = rulebook.compiled
    lines: list[LedgerLine] = []
    profile = _profile(compiled, state, activity, record.event_id, time, lines)
    gap = _page_view_gap(state, activity, time)
    in_cycle = state.cycle_start is None or time >= state.cycle_start
    engagement = _Engagement.of(state)
    if in_cycle or rulebook.recycle == "keep":
        engagement.prune(rulebook, time)
        for rule in compiled.engagement[activity.activity_type]:
            if rule.matches(activity, gap):
                points = engagement.grant(rulebook, rule, time)
                if points != 0:
                    lines.append(LedgerLine(record.event_id, time, rule.name, "engagement", points))
    new_state = LeadState(
        attributes=profile.attributes,
        fit_rules=profile.fit_rules,
        fit=profile.fit,
        disqualified_by=profile.disqualified_by,
        fit_for=profile.fit_for,
        grants=engagement.grants,
        folded=engagement.folded,
        folded_at=engagement.folded_at,
        caps=engagement.caps,
        last_page_view=time if _is_page_view(activity) else state.last_page_view,
        last_time=time,
        last_event_id=record.event_id,
        cycle_start=state.cycle_start,
        qualified_in_cycle=state.qualified_in_cycle,
        qualification=state.qualification,
        source=state.source or source_of(activity),
    )
    qualification = None
    if in_cycle and not new_state.qualified_in_cycle and not new_state.disqualified_by:
        qualification = _qualification(
            rulebook, compiled, new_state, activity, gap, record.event_id, time
        )
        if qualification is not None:
            new_state.qualified_in_cycle = True
            new_state.qualification = qualification
    return Step(new_state, tuple(lines), qualification)


def source_of(activity: ActivityData) -> str:
    """Where an activity came from: its UTM source if it carries one, else its channel."""
    campaign = activity.context.get("campaign")
    if isinstance(campaign, dict) and campaign.get("source"):
        return str(campaign["source"])
    utm = activity.properties.get("utm_source")
    return str(utm) if utm else activity.channel


def _check_order(state: LeadState, time: datetime, event_id: str) -> None:
    last = state.last_key
    if last is not None and (time, event_id) <= last:
        raise ValueError(
            f"activity {event_id} at {time.isoformat()} is not after the last one applied "
            f"({last[1]} at {last[0].isoformat()}); replay instead"
        )


def _is_page_view(activity: ActivityData) -> bool:
    return activity.activity_type == ActivityType.PAGE_VIEW


def _page_view_gap(state: LeadState, activity: ActivityData, time: datetime) -> float | None:
    """Minutes since the lead's previous page view, for a page view; None otherwise."""
    if activity.activity_type != ActivityType.PAGE_VIEW or state.last_page_view is None:
        return None
    return (time - state.last_page_view).total_seconds() / 60.0


def _qualification(
    rulebook: Rulebook,
    compiled: Compiled,
    state: LeadState,
    activity: ActivityData,
    gap: float | None,
    event_id: str,
    time: datetime,
) -> Qualification | None:
    trigger = compiled.trigger_for(activity, gap)
    if trigger is not None:
        return Qualification(event_id, time, "trigger", trigger)
    # the total first: it is what rules most activities out, and cheaper than the grades
    _, _, total = _scores(state.fit, engagement_at(rulebook, state, time))
    if total < rulebook.mql.threshold:
        return None
    if rulebook.mql.fit_grade_ok(snapshot(rulebook, state, time).fit_grade):
        return Qualification(event_id, time, "threshold", None)
    return None


# --- attributes and fit ---------------------------------------------------------------------


@dataclass(slots=True)
class _Profile:
    attributes: Mapping[str, Any]
    fit_rules: tuple[tuple[str, float], ...]
    fit: float
    disqualified_by: tuple[str, ...]
    fit_for: str


def _profile(
    compiled: Compiled,
    state: LeadState,
    activity: ActivityData,
    event_id: str,
    time: datetime,
    lines: list[LedgerLine],
) -> _Profile:
    """Merges what the activity states about the lead; refreshes fit when that changed it."""
    attributes = _merged(state.attributes, activity)
    fingerprint = compiled.fingerprint
    if attributes is state.attributes and state.fit_for == fingerprint:
        return _Profile(
            attributes, state.fit_rules, state.fit, state.disqualified_by, state.fit_for
        )
    fit_rules = compiled.fit_for(attributes)
    lines.extend(
        LedgerLine(event_id, time, rule, "fit", points)
        for rule, points in _fit_changes(state.fit_rules, fit_rules)
    )
    return _Profile(
        attributes,
        fit_rules,
        _sum(points for _, points in fit_rules),
        compiled.disqualified_by(attributes),
        fingerprint,
    )


def _merged(attributes: Mapping[str, Any], activity: ActivityData) -> Mapping[str, Any]:
    """The attributes after this activity; the same object when nothing changed.

    Values of None are ignored: senders use them for "unknown", not to erase. The identity's
    email counts as a stated `email` unless the activity states one itself.
    """
    stated = {name: value for name, value in activity.attributes.items() if value is not None}
    email = activity.identity.email
    if email and "email" not in stated:
        stated["email"] = email.lower()
    for name, value in stated.items():
        if attributes.get(name, _MISSING) != value:
            return {**attributes, **stated}
    return attributes


def _fit_changes(
    before: tuple[tuple[str, float], ...], after: tuple[tuple[str, float], ...]
) -> list[tuple[str, float]]:
    old, new = dict(before), dict(after)
    changes = [(rule, -points) for rule, points in before if rule not in new]
    changes += [(rule, points - old.get(rule, 0.0)) for rule, points in after]
    return [(rule, points) for rule, points in changes if points != 0]


def fit_score(
    rulebook: Rulebook, attributes: Mapping[str, Any]
) -> tuple[float, tuple[tuple[str, float], ...]]:
    """The fit score of these attributes and the fit rules that give it."""
    rules = rulebook.fit_for(attributes)
    return _round(_sum(points for _, points in rules)), rules


# --- engagement, caps, decay and expiry -----------------------------------------------------


@dataclass(slots=True)
class _Engagement:
    """A working copy of a state's engagement for one `apply`; copies a part only to change it."""

    grants: tuple[Grant, ...]
    folded: float
    folded_at: datetime | None
    caps: Mapping[str, CapCounter]

    @classmethod
    def of(cls, state: LeadState) -> _Engagement:
        return cls(state.grants, state.folded, state.folded_at, state.caps)

    def prune(self, rulebook: Rulebook, now: datetime) -> None:
        expiry = rulebook.decay.expiry_seconds
        if expiry is None or not self.grants:
            return
        keep = next(
            (i for i, g in enumerate(self.grants) if (now - g.time).total_seconds() < expiry),
            len(self.grants),
        )
        if keep:
            self.grants = self.grants[keep:]

    def grant(self, rulebook: Rulebook, rule: ScoringRule, time: datetime) -> float:
        """Records the rule's points at `time`, as far as its caps allow; returns those."""
        points = rule.points
        if rule.cap is not None:
            counter = self.caps.get(rule.name)
            points, updated = _capped(rule.cap, counter, time, points)
            if updated is not None and updated is not counter:
                self.caps = {**self.caps, rule.name: updated}
        if points == 0:
            return 0.0
        decay = rulebook.decay
        if decay.expire_after_days is not None:
            self._keep(time, points)
        elif self.folded_at is None:
            self.folded, self.folded_at = points, time
        else:
            elapsed = (time - self.folded_at).total_seconds()
            self.folded = self.folded * decay.factor(elapsed) + points
            self.folded_at = time
        return points

    def _keep(self, time: datetime, points: float) -> None:
        last = self.grants[-1] if self.grants else None
        if last is not None and last.time == time:
            self.grants = (*self.grants[:-1], Grant(time, last.points + points))
        else:
            self.grants = (*self.grants, Grant(time, points))


def _capped(
    cap: Cap, counter: CapCounter | None, time: datetime, points: float
) -> tuple[float, CapCounter | None]:
    day = time.toordinal()
    year, week_number, _ = time.isocalendar()
    week = year * 100 + week_number
    seen = counter or CapCounter()
    day_times, day_points = (seen.day_times, seen.day_points) if seen.day == day else (0, 0.0)
    week_times, week_points = (seen.week_times, seen.week_points) if seen.week == week else (0, 0.0)
    if (
        _reached(cap.times, seen.times)
        or _reached(cap.times_per_day, day_times)
        or _reached(cap.times_per_week, week_times)
    ):
        return 0.0, counter
    size = abs(points)
    for limit, used in (
        (cap.points, seen.points),
        (cap.points_per_day, day_points),
        (cap.points_per_week, week_points),
    ):
        if limit is not None:
            size = min(size, limit - used)
    if size <= 0:
        return 0.0, counter
    return math.copysign(size, points), CapCounter(
        times=seen.times + 1,
        points=seen.points + size,
        day=day,
        day_times=day_times + 1,
        day_points=day_points + size,
        week=week,
        week_times=week_times + 1,
        week_points=week_points + size,
    )


def _reached(limit: int | None, used: int) -> bool:
    return limit is not None and used >= limit


def engagement_at(rulebook: Rulebook, state: LeadState, at: datetime) -> float:
    """Unrounded engagement as of `at` (not before the last activity applied)."""
    decay = rulebook.decay
    value = 0.0
    if state.folded_at is not None:
        value = state.folded * decay.factor((at - state.folded_at).total_seconds())
    expiry = decay.expiry_seconds
    for grant in state.grants:
        age = (at - grant.time).total_seconds()
        if expiry is None or age < expiry:
            value += grant.points * decay.factor(age)
    return value


# --- reading and cycles ---------------------------------------------------------------------


def snapshot(rulebook: Rulebook, state: LeadState, at: datetime) -> Snapshot:
    """The lead's scores and grade as of `at`, with engagement decayed and expired.

    A moment before the last applied activity reads as that activity's time: a score
    cannot be read from before what it already counts.
    """
    at = utc(at)
    if state.last_time is not None and at < state.last_time:
        at = state.last_time
    if state.fit_for == rulebook.fingerprint():
        fit, disqualified_by = state.fit, state.disqualified_by
    else:
        fit = fit_score(rulebook, state.attributes)[0]
        disqualified_by = rulebook.disqualified_by(state.attributes)
    fit, engagement, total = _scores(fit, engagement_at(rulebook, state, at))
    fit_grade = rulebook.grades.fit.grade(fit)
    engagement_grade = rulebook.grades.engagement.grade(engagement)
    return Snapshot(
        fit=fit,
        engagement=engagement,
        total=total,
        fit_grade=fit_grade,
        engagement_grade=engagement_grade,
        grade=f"{fit_grade}{engagement_grade}",
        disqualified_by=disqualified_by,
    )


def _scores(fit: float, engagement: float) -> tuple[float, float, float]:
    """Fit, engagement and their total as a lead shows them (and qualifies on them)."""
    fit, engagement = _round(fit), _round(engagement)
    return fit, engagement, _round(fit + engagement)


def recycle(rulebook: Rulebook, state: LeadState, at: datetime) -> LeadState:
    """Starts a new qualification cycle at `at` (a lead handed back to nurture).

    Under `recycle: reset` engagement and cap counters start from zero; under `keep` they
    carry on. A cycle cannot start at or before an activity already applied, so `at` moves
    to just after the last one; read the effective start from `cycle_start` and pass that to
    `replay(recycles=...)` to reproduce this state from the log.
    """
    at = utc(at)
    if state.last_time is not None and at <= state.last_time:
        at = state.last_time + _MICROSECOND
    if rulebook.recycle == "reset":
        state = replace(state, grants=(), folded=0.0, folded_at=None, caps={})
    return replace(state, cycle_start=at, qualified_in_cycle=False, qualification=None)


def _record_key(record: ActivityRecord) -> tuple[datetime, str]:
    return utc(record.time), record.event_id


def replay(
    rulebook: Rulebook,
    records: Iterable[ActivityRecord],
    *,
    start: LeadState | None = None,
    recycles: Iterable[datetime] = (),
) -> tuple[LeadState, list[Step]]:
    """Folds `records` in (event time, event id) order, from `start` or a new lead.

    A record whose key repeats an earlier one's is the same event delivered twice and is
    applied once. `recycles` are cycle starts (as `recycle` recorded them): each takes effect
    before the first record at or after it; those at or before `start.cycle_start` are
    already part of `start` and are skipped.
    """
    state = start or initial_state()
    pending = sorted(
        at for at in map(utc, recycles) if state.cycle_start is None or at > state.cycle_start
    )
    steps: list[Step] = []
    previous: tuple[datetime, str] | None = None
    for record in sorted(records, key=_record_key):
        key = _record_key(record)
        if key == previous:
            continue
        previous = key
        while pending and pending[0] <= key[0]:
            state = recycle(rulebook, state, pending.pop(0))
        step = apply(rulebook, state, record)
        steps.append(step)
        state = step.state
    for at in pending:
        state = recycle(rulebook, state, at)
    return state, steps


def top_rules(lines: Iterable[LedgerLine], limit: int = 5) -> list[tuple[str, float]]:
    """The rules that gave the most points, summed per rule; rules netting zero are left out."""
    return rank_rules(((line.rule, line.points) for line in lines), limit)


def rank_rules(points: Iterable[tuple[str, float]], limit: int = 5) -> list[tuple[str, float]]:
    """(rule, points) pairs summed per rule and ranked, best first; zero totals left out."""
    totals: dict[str, float] = {}
    for rule, value in points:
        totals[rule] = totals.get(rule, 0.0) + value
    ranked = sorted(
        ((rule, _round(points)) for rule, points in totals.items() if _round(points) != 0),
        key=lambda pair: (-pair[1], pair[0]),
    )
    return ranked[:limit]


def _sum(values: Iterable[float]) -> float:
    total = 0.0
    for value in values:
        total += value
    return total


def _round(value: float) -> float:
    return round(value, 4) + 0.0
