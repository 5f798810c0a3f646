"""The rulebook and the scoring fold: pure, no broker or database."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.events import ActivityData, ActivityType, Identity
from scoring_service import engine
from scoring_service.engine import ActivityRecord, LeadState, LedgerLine, Step
from scoring_service.rules import (
    ActivityMatch,
    Condition,
    Rulebook,
    RulebookError,
    compile_regex,
    load_rulebook,
    parse_rulebook_text,
    rulebook_from_document,
    timeline_months,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MONDAY = datetime(2026, 11, 2, 9, tzinfo=UTC)
EXAMPLE = load_rulebook(EXAMPLES / "rulebook.yaml")
K = ActivityType


def activity(
    kind: ActivityType,
    *,
    email: str | None = None,
    attributes: dict[str, Any] | None = None,
    bot: bool = False,
    name: str | None = None,
    context: dict[str, Any] | None = None,
    **properties: Any,
) -> ActivityData:
    return ActivityData(
        activity_type=kind,
        event_name=name or kind.value,
        identity=Identity(anonymous_id="anon-1", email=email),
        properties=properties,
        attributes=attributes or {},
        context=context or {},
        channel="test",
        received_at=MONDAY,
        is_bot=bot,
    )


def rec(event_id: str, at: datetime, data: ActivityData) -> ActivityRecord:
    return ActivityRecord(event_id=event_id, time=at, activity=data)


def minutes(n: float) -> datetime:
    return MONDAY + timedelta(minutes=n)


def days(n: float) -> datetime:
    return MONDAY + timedelta(days=n)


def book(**sections: Any) -> Rulebook:
    document: dict[str, Any] = {"version": "test", "mql": {"threshold": 100}}
    document.update(sections)
    return rulebook_from_document(document)


def fold(rulebook: Rulebook, records: Sequence[ActivityRecord]) -> list[Step]:
    """Applies records one by one in the order given, from a new lead."""
    state, steps = engine.initial_state(), []
    for record in records:
        step = engine.apply(rulebook, state, record)
        steps.append(step)
        state = step.state
    return steps


def granted(steps: Sequence[Step]) -> list[list[tuple[str, float]]]:
    return [[(line.rule, line.points) for line in step.lines] for step in steps]


def clicks(count: int, every: timedelta, start: datetime = MONDAY) -> list[ActivityRecord]:
    return [rec(f"c{n:03}", start + every * n, activity(K.EMAIL_CLICK)) for n in range(count)]


# --- the example rulebook -------------------------------------------------------------------


def test_example_rulebook_scores_the_documented_journey() -> None:
    """The journey tests/test_pipeline.py follows end to end: 17, 25, 35, demo trigger."""
    steps = fold(
        EXAMPLE,
        [
            rec("m-1", MONDAY, activity(K.PAGE_VIEW, url="https://example.com/pricing")),
            rec("m-2", MONDAY, activity(K.EMAIL_CLICK, name="Email Link Clicked")),
            rec(
                "m-3",
                MONDAY,
                activity(
                    K.FORM_SUBMIT,
                    email="Dana@Example.org",
                    attributes={"company": "Initech"},
                    form="demo-request",
                ),
            ),
        ],
    )
    assert [engine.snapshot(EXAMPLE, s.state, MONDAY).total for s in steps] == [17, 25, 35]
    assert granted(steps)[0] == [("pricing-page-view", 15), ("page-view", 2)]
    qualification = steps[-1].qualification
    assert qualification is not None
    assert (qualification.reason, qualification.trigger) == ("trigger", "demo-request")
    final = engine.snapshot(EXAMPLE, steps[-1].state, MONDAY)
    assert (final.fit, final.disqualified_by, final.grade) == (0, (), "D3")


def test_example_rulebook_fingerprint_ignores_layout_but_not_content() -> None:
    text = (EXAMPLES / "rulebook.yaml").read_text()
    relaid = parse_rulebook_text(
        "# a comment\n" + text.replace("threshold: 100 ", "threshold: 100")
    )
    assert relaid.fingerprint() == EXAMPLE.fingerprint()
    changed = parse_rulebook_text(text.replace("threshold: 100", "threshold: 90"))
    assert changed.fingerprint() != EXAMPLE.fingerprint()


def test_example_careers_pages_score_nothing_and_personal_email_disqualifies() -> None:
    steps = fold(
        EXAMPLE,
        [
            rec("1", MONDAY, activity(K.PAGE_VIEW, url="https://x.io/careers/engineer")),
            rec(
                "2", minutes(1), activity(K.FORM_SUBMIT, email="pat@gmail.com", form="demo-request")
            ),
        ],
    )
    assert granted(steps)[0] == []
    assert steps[1].qualification is None
    assert engine.snapshot(EXAMPLE, steps[1].state, MONDAY).disqualified_by == ("personal-email",)


# --- conditions -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "value", "expected"),
    [
        ("Software", " software ", True),
        ("software", "hardware", False),
        (["US", "CA"], "us", True),
        (["US", "CA"], "MX", False),
        (5, 5.0, True),
        (True, 1, False),
        ({"not_in": ["US"]}, "DE", True),
        ({"not_in": ["US"]}, None, False),
        ({"min": 200, "max": 999}, "1,200", False),
        ({"min": 200, "max": 999}, "250", True),
        ({"min": 200, "max": 999}, 999, True),
        ({"min": 200}, "lots", False),
        ({"contains": "director"}, "Sales Director EMEA", True),
        ({"contains": ["vp", "chief"]}, "Chief of Staff", True),
        ({"contains": "director"}, 42, False),
        ({"matches": r"\bintern\b"}, "Marketing Intern", True),
        ({"matches": r"\bintern\b"}, "International Sales", False),
        ({"present": True}, "  ", False),
        ({"present": True}, "outages every week", True),
        ({"present": False}, None, True),
        ({"present": False}, "", True),
        ({"present": False}, "x", False),
        ({"within_months": 6}, "0-3 months", True),
        ({"within_months": 6}, "3\u20136 months", True),
        ({"within_months": 6}, "6-12 months", False),
        ({"within_months": 6}, "6+ months", False),
        ({"within_months": 6}, "immediately", True),
        ({"within_months": 6}, "within 2 quarters", True),
        ({"within_months": 6}, "1 year", False),
        ({"within_months": 6}, 4, True),
        ({"within_months": 6}, "not sure", False),
        ({"min": 1, "contains": "1"}, "15", True),
    ],
)
def test_condition(condition: Any, value: Any, expected: bool) -> None:
    assert Condition.model_validate(condition).holds(value) is expected


@pytest.mark.parametrize(
    ("text", "months"),
    [("0-3 months", 3), ("2 weeks", 14 / 30), ("next year", None), ("12", 12), ("18 mo", 18)],
)
def test_purchase_timeline_is_read_as_its_latest_month(text: str, months: float | None) -> None:
    assert timeline_months(text) == months


@pytest.mark.parametrize(
    ("when", "data", "gap", "expected"),
    [
        ({"url": "*/blog/*"}, activity(K.PAGE_VIEW, url="https://x.io/blog/post"), None, True),
        ({"url": "*/blog/*"}, activity(K.PAGE_VIEW, url="https://x.io/blog"), None, False),
        ({"url_regex": "/docs/v[0-9]+/"}, activity(K.PAGE_VIEW, url="/DOCS/v2/a"), None, True),
        (
            {"url_contains": "/pricing"},
            activity(K.PAGE_VIEW, context={"page": {"url": "https://x.io/pricing"}}),
            None,
            True,
        ),
        ({"url_contains": "/pricing"}, activity(K.PAGE_VIEW), None, False),
        (
            {"form": ["demo-request", "contact-sales"]},
            activity(K.FORM_SUBMIT, form="Contact-Sales"),
            None,
            True,
        ),
        (
            {"content": "ROI calculator"},
            activity(K.CONTENT_DOWNLOAD, title="roi calculator"),
            None,
            True,
        ),
        ({"min_seconds": 120}, activity(K.PAGE_VIEW, duration=150), None, True),
        ({"min_seconds": 120}, activity(K.PAGE_VIEW, seconds="90"), None, False),
        (
            {"activity": "custom", "event_name": "trial started"},
            activity(K.CUSTOM, name="Trial Started"),
            None,
            True,
        ),
        (
            {"activity": "custom", "event_name": "trial started"},
            activity(K.CUSTOM, name="Trial Ended"),
            None,
            False,
        ),
        (
            {"fields": {"pain": {"present": True}}},
            activity(K.FORM_SUBMIT, pain="bad support"),
            None,
            True,
        ),
        (
            {"fields": {"pain": {"present": True}}},
            activity(K.IDENTIFY, attributes={"pain": "x"}),
            None,
            True,
        ),
        ({"new_session_after_minutes": 30}, activity(K.PAGE_VIEW), 30.0, True),
        ({"new_session_after_minutes": 30}, activity(K.PAGE_VIEW), 29.9, False),
        ({"new_session_after_minutes": 30}, activity(K.PAGE_VIEW), None, False),
    ],
)
def test_activity_match(
    when: dict[str, Any], data: ActivityData, gap: float | None, expected: bool
) -> None:
    assert ActivityMatch.model_validate(when).matches(data, gap) is expected


# --- fit and disqualifiers ------------------------------------------------------------------

FIT_BOOK = book(
    fit=[
        {"name": "software", "if": {"industry": "software"}, "points": 20},
        {"name": "mid-market", "if": {"company_size": {"min": 200, "max": 4999}}, "points": 15},
        {"name": "tiny", "if": {"company_size": {"max": 19}}, "points": -10},
        {"name": "work-email", "if": {"email_domain": {"not_in": ["gmail.com"]}}, "points": 5},
    ],
    disqualifiers=[{"name": "student", "if": {"seniority": "student"}}],
    triggers=[{"name": "demo", "when": {"form": "demo"}}],
)


def identify(event_id: str, at: datetime, **attributes: Any) -> ActivityRecord:
    return rec(event_id, at, activity(K.IDENTIFY, attributes=attributes))


def test_fit_follows_current_attributes_and_its_lines_add_up() -> None:
    steps = fold(
        FIT_BOOK,
        [
            identify("1", minutes(0), industry="Software", company_size="300"),
            identify("2", minutes(1), industry="software", company_size=300),
            identify("3", minutes(2), company_size=12),
            rec("4", minutes(3), activity(K.EMAIL_OPEN, email="Ann@Corp.example")),
        ],
    )
    assert granted(steps) == [
        [("software", 20), ("mid-market", 15)],
        [],
        [("mid-market", -15), ("tiny", -10)],
        [("work-email", 5)],
    ]
    state = steps[-1].state
    assert state.fit == 15 == sum(line.points for step in steps for line in step.lines)
    assert state.attributes["email"] == "ann@corp.example"
    assert engine.fit_score(FIT_BOOK, state.attributes) == (
        15,
        (("software", 20), ("tiny", -10), ("work-email", 5)),
    )


def test_later_event_time_wins_per_attribute_and_none_does_not_erase() -> None:
    state, _ = engine.replay(
        FIT_BOOK,
        [
            identify("b", minutes(5), industry="retail", country=None),
            identify("a", minutes(1), industry="software", country="US"),
        ],
    )
    assert state.attributes == {"industry": "retail", "country": "US"}


def test_initial_attributes_are_scored_on_first_use() -> None:
    start = engine.initial_state(attributes={"industry": "software"})
    assert engine.snapshot(FIT_BOOK, start, MONDAY).fit == 20
    step = engine.apply(FIT_BOOK, start, rec("1", MONDAY, activity(K.EMAIL_OPEN)))
    assert granted([step]) == [[("software", 20)]]
    assert step.state.fit == 20


def test_disqualifier_blocks_triggers_until_it_no_longer_applies() -> None:
    steps = fold(
        FIT_BOOK,
        [
            identify("1", minutes(0), seniority="Student"),
            rec("2", minutes(1), activity(K.FORM_SUBMIT, form="demo")),
            identify("3", minutes(2), seniority="manager"),
            rec("4", minutes(3), activity(K.FORM_SUBMIT, form="demo")),
        ],
    )
    assert engine.snapshot(FIT_BOOK, steps[1].state, MONDAY).disqualified_by == ("student",)
    assert [step.qualification is not None for step in steps] == [False, False, False, True]


# --- engagement: matching, caps, sessions ---------------------------------------------------


def test_every_matching_rule_scores_and_unless_excludes() -> None:
    rulebook = book(
        engagement=[
            {"name": "pricing", "when": {"url_contains": "/pricing"}, "points": 15},
            {
                "name": "page",
                "when": {"activity": "page_view"},
                "unless": {"url_contains": ["/careers", "/jobs"]},
                "points": 2,
            },
            {"name": "careers", "when": {"url_contains": "/careers"}, "points": -3},
        ]
    )
    steps = fold(
        rulebook,
        [
            rec("1", minutes(0), activity(K.PAGE_VIEW, url="https://x.io/pricing")),
            rec("2", minutes(1), activity(K.PAGE_VIEW, url="https://x.io/careers")),
            rec("3", minutes(2), activity(K.EMAIL_CLICK, url="https://x.io/pricing")),
        ],
    )
    assert granted(steps) == [[("pricing", 15), ("page", 2)], [("careers", -3)], [("pricing", 15)]]


def capped(cap: dict[str, Any], points: float = 10) -> Rulebook:
    return book(
        engagement=[
            {"name": "click", "when": {"activity": "email_click"}, "points": points, "cap": cap}
        ]
    )


def points_of(steps: Sequence[Step]) -> list[float]:
    return [sum(line.points for line in step.lines) for step in steps]


def test_daily_cap_counts_calendar_days_in_utc() -> None:
    late_evening = MONDAY.replace(hour=23, minute=50)
    steps = fold(capped({"times_per_day": 2}), clicks(4, timedelta(minutes=4), late_evening))
    assert points_of(steps) == [10, 10, 0, 10]  # the 4th click is on Tuesday


def test_weekly_cap_counts_iso_weeks() -> None:
    sunday = MONDAY - timedelta(hours=20)
    steps = fold(capped({"times_per_week": 2}), clicks(4, timedelta(hours=4), sunday))
    assert points_of(steps) == [10, 10, 0, 10]  # 01:00 Monday starts a new week


def test_lifetime_caps_on_times_and_points_grant_the_remainder() -> None:
    assert points_of(fold(capped({"times": 1}), clicks(3, timedelta(days=1)))) == [10, 0, 0]
    assert points_of(fold(capped({"points": 25}), clicks(4, timedelta(days=1)))) == [10, 10, 5, 0]
    negative = fold(capped({"points_per_week": 8}, points=-5), clicks(3, timedelta(hours=1)))
    assert points_of(negative) == [-5, -3, 0]


def test_repeat_visit_needs_a_gap_since_the_previous_page_view() -> None:
    rulebook = book(
        engagement=[
            {
                "name": "return-visit",
                "when": {"activity": "page_view", "new_session_after_minutes": 30},
                "points": 5,
            }
        ]
    )
    views = [
        rec(f"v{at}", minutes(at), activity(K.PAGE_VIEW, url="/")) for at in (0, 10, 45, 50, 120)
    ]
    views.insert(2, rec("click", minutes(44), activity(K.EMAIL_CLICK)))
    assert points_of(fold(rulebook, views)) == [0, 0, 0, 5, 0, 5]


def test_bots_change_nothing_but_the_last_key() -> None:
    start = engine.apply(EXAMPLE, engine.initial_state(), rec("1", MONDAY, activity(K.EMAIL_OPEN)))
    bot = rec(
        "2", minutes(1), activity(K.FORM_SUBMIT, form="demo-request", bot=True, attributes={"x": 1})
    )
    step = engine.apply(EXAMPLE, start.state, bot)
    assert (step.lines, step.qualification) == ((), None)
    assert step.state.last_key == (minutes(1), "2")
    assert step.state == replace(start.state, last_time=minutes(1), last_event_id="2")


def test_apply_refuses_out_of_order_and_naive_times() -> None:
    state = engine.apply(
        EXAMPLE, engine.initial_state(), rec("b", MONDAY, activity(K.EMAIL_OPEN))
    ).state
    with pytest.raises(ValueError, match="not after the last one applied"):
        engine.apply(EXAMPLE, state, rec("a", MONDAY, activity(K.EMAIL_OPEN)))
    with pytest.raises(ValueError, match="no time zone"):
        engine.apply(EXAMPLE, state, rec("c", datetime(2026, 12, 1), activity(K.EMAIL_OPEN)))


# --- decay and expiry -----------------------------------------------------------------------

HUNDRED = [{"name": "attend", "when": {"activity": "webinar_attend"}, "points": 100}]


def attended(*at: datetime) -> list[ActivityRecord]:
    return [rec(f"w{n}", moment, activity(K.WEBINAR_ATTEND)) for n, moment in enumerate(at)]


def engagement(rulebook: Rulebook, state: LeadState, at: datetime) -> float:
    return engine.snapshot(rulebook, state, at).engagement


def test_half_life_decays_engagement_exactly_in_event_time() -> None:
    rulebook = book(engagement=HUNDRED, decay={"half_life_days": 30}, mql={"threshold": 1000})
    state, _ = engine.replay(rulebook, attended(days(0), days(30)))
    assert engagement(rulebook, state, days(30)) == 150
    assert engagement(rulebook, state, days(60)) == 75
    assert engagement(rulebook, state, days(45)) == round(100 * 2**-0.5 + 50 * 2**-0.5, 4)
    assert engagement(rulebook, state, days(10)) == 150, "no reading before the last activity"
    assert len(state.to_json()["grants"]) == 0, "decay alone keeps one folded figure"


def test_expired_points_stop_counting_and_leave_the_state() -> None:
    rulebook = book(engagement=HUNDRED, decay={"expire_after_days": 10})
    state, _ = engine.replay(rulebook, attended(days(0), days(5)))
    assert engagement(rulebook, state, days(10) - timedelta(microseconds=1)) == 200
    assert engagement(rulebook, state, days(10)) == 100
    assert engagement(rulebook, state, days(15)) == 0
    later, _ = engine.replay(rulebook, attended(days(12)), start=state)
    assert [grant.time for grant in later.grants] == [days(5), days(12)]
    latest, _ = engine.replay(rulebook, attended(days(15)), start=later)
    assert [grant.time for grant in latest.grants] == [days(12), days(15)]


def test_decay_and_expiry_together() -> None:
    rulebook = book(engagement=HUNDRED, decay={"half_life_days": 10, "expire_after_days": 20})
    state, _ = engine.replay(rulebook, attended(days(0)))
    assert [engagement(rulebook, state, days(d)) for d in (10, 19, 20)] == [
        50,
        round(100 * 2**-1.9, 4),
        0,
    ]


def test_threshold_is_checked_with_decayed_engagement_at_the_activity_time() -> None:
    rulebook = book(
        engagement=[{"name": "attend", "when": {"activity": "webinar_attend"}, "points": 60}],
        decay={"half_life_days": 30},
    )
    late = fold(rulebook, attended(days(0), days(60)))
    assert late[-1].qualification is None  # 15 + 60 < 100
    soon = fold(rulebook, attended(days(0), days(1), days(2)))
    assert [s.qualification is not None for s in soon] == [False, True, False]
    qualification = soon[1].qualification
    assert qualification is not None
    assert (qualification.reason, qualification.event_id, qualification.time) == (
        "threshold",
        "w1",
        days(1),
    )


# --- grades and qualification ---------------------------------------------------------------


def test_grades_from_bands() -> None:
    rulebook = book(
        grades={"fit": {"A": 50, "B": 30, "C": 10}, "engagement": {1: 90, 2: 60, 3: 30}},
        fit=[{"name": "size", "if": {"company_size": {"min": 1}}, "points": 30}],
        engagement=[{"name": "attend", "when": {"activity": "webinar_attend"}, "points": 30}],
        mql={"threshold": 1000},
    )
    steps = fold(
        rulebook,
        [identify("0", MONDAY, company_size=5), *attended(minutes(1), minutes(2), minutes(3))],
    )
    assert [engine.snapshot(rulebook, s.state, MONDAY).grade for s in steps] == [
        "B4",
        "B3",
        "B2",
        "B1",
    ]
    assert engine.snapshot(rulebook, engine.initial_state(), MONDAY).grade == "D4"


def test_min_fit_grade_holds_back_a_threshold_mql_until_fit_is_good_enough() -> None:
    rulebook = book(
        mql={"threshold": 50, "min_fit_grade": "B"},
        grades={"fit": {"A": 30, "B": 20, "C": 10}},
        fit=FIT_BOOK.model_dump(by_alias=True)["fit"][:1],
        engagement=HUNDRED,
    )
    steps = fold(rulebook, [*attended(minutes(0)), identify("z", minutes(1), industry="software")])
    assert [s.qualification is not None for s in steps] == [False, True]
    snap = engine.snapshot(rulebook, steps[1].state, minutes(1))
    assert (snap.fit, snap.engagement, snap.total, snap.fit_grade) == (20, 100, 120, "B")


@pytest.mark.parametrize(
    ("data", "trigger"),
    [
        (activity(K.FORM_SUBMIT, form="demo-request"), "demo-request"),
        (activity(K.FORM_SUBMIT, form="contact-sales"), "contact-sales"),
        (activity(K.FORM_SUBMIT, form="newsletter"), None),
        (
            activity(K.FORM_SUBMIT, form="quote", purchase_timeline="3-6 months"),
            "buying-within-6-months",
        ),
        (
            activity(K.IDENTIFY, attributes={"purchase_timeline": "0-3 months"}),
            "buying-within-6-months",
        ),
        (activity(K.FORM_SUBMIT, purchase_timeline="6-12 months"), None),
        (
            activity(K.FORM_SUBMIT, form="feedback", pain="support never answers"),
            "pain-with-current-provider",
        ),
        (activity(K.FORM_SUBMIT, form="switching-provider"), "switching-provider"),
    ],
)
def test_example_triggers(data: ActivityData, trigger: str | None) -> None:
    step = engine.apply(EXAMPLE, engine.initial_state(), rec("1", MONDAY, data))
    found = step.qualification.trigger if step.qualification else None
    assert found == trigger


def test_qualifies_once_per_cycle_and_again_after_recycle_reset() -> None:
    demo = [
        rec(f"d{n}", minutes(n), activity(K.FORM_SUBMIT, form="demo-request")) for n in range(2)
    ]
    first = fold(EXAMPLE, demo)
    assert [s.qualification is not None for s in first] == [True, False]
    state = engine.recycle(EXAMPLE, first[-1].state, minutes(10))
    assert (state.cycle_start, state.qualified_in_cycle) == (minutes(10), False)
    assert engagement(EXAMPLE, state, minutes(10)) == 0
    assert state.caps == {}
    late = engine.apply(EXAMPLE, state, rec("late", minutes(5), activity(K.WEBINAR_ATTEND)))
    assert (late.lines, late.qualification) == ((), None), "before the cycle: ignored"
    again = engine.apply(EXAMPLE, late.state, rec("d9", minutes(11), demo[0].activity))
    assert again.qualification is not None
    assert points_of([again]) == [10], "the daily form cap started over too"


def test_recycle_keep_carries_engagement_and_counts_late_activity() -> None:
    rulebook = book(engagement=HUNDRED, recycle="keep", mql={"threshold": 150})
    qualified = fold(rulebook, attended(minutes(0), minutes(1)))
    assert qualified[-1].qualification is not None
    state = engine.recycle(rulebook, qualified[-1].state, minutes(10))
    assert engagement(rulebook, state, minutes(10)) == 200
    late = engine.apply(rulebook, state, rec("w9", minutes(5), activity(K.WEBINAR_ATTEND)))
    assert points_of([late]) == [100]
    assert late.qualification is None, "activity from before the cycle never qualifies"
    assert engine.apply(rulebook, late.state, attended(minutes(11))[0]).qualification is not None


def test_recycle_cannot_start_before_what_was_already_applied() -> None:
    state = fold(EXAMPLE, attended(minutes(10)))[-1].state
    cycle_start = engine.recycle(EXAMPLE, state, minutes(3)).cycle_start
    assert cycle_start == minutes(10) + timedelta(microseconds=1)


def test_top_rules_sum_per_rule_and_drop_rules_netting_zero() -> None:
    def line(rule: str, points: float) -> LedgerLine:
        return LedgerLine("e", MONDAY, rule, "engagement", points)

    lines = [line("a", 5), line("b", 8), line("a", 5), line("c", 1), line("d", 3), line("d", -3)]
    assert engine.top_rules(lines, limit=2) == [("a", 10), ("b", 8)]
    assert engine.top_rules(lines) == [("a", 10), ("b", 8), ("c", 1)]


def test_state_round_trips_through_json_and_refuses_junk() -> None:
    state, _ = engine.replay(
        EXAMPLE,
        [
            identify("0", MONDAY, company_size=300, seniority="vp"),
            rec("1", minutes(1), activity(K.PAGE_VIEW, url="/pricing", seconds=300)),
        ],
    )
    restored = LeadState.from_json(json.loads(json.dumps(state.to_json())))
    assert restored == state
    with pytest.raises(ValueError, match="lead state format"):
        LeadState.from_json({})
    with pytest.raises(ValueError, match="not a lead state"):
        LeadState.from_json({"format": 1})


# --- rulebook files and their errors --------------------------------------------------------

VALID_HEAD = 'version: "1"\nmql:\n  threshold: 100\n'


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        (
            "engagement:\n  - name: a\n    when: {activity: page_view}\n    points: 1\n"
            "  - name: b\n    when:\n      activity: teleport\n    points: 1\n",
            10,
            "engagement[1].when.activity: Input should be 'page_view'",
        ),
        (
            "fit:\n  - name: a\n    if: {title: {matches: '('}}\n    points: 1\n",
            6,
            "fit[0].if.title.matches: not a valid regular expression",
        ),
        (  # backreferences and lookaround need backtracking, which RE2 does not do
            "engagement:\n  - name: a\n    when: {activity: page_view}\n    points: 1\n"
            "  - name: b\n    when:\n      activity: page_view\n"
            "      url_regex: '/(docs)/\\1'\n    points: 1\n",
            11,
            "engagement[1].when.url_regex: not a valid regular expression (RE2 syntax: no "
            "backreferences or lookaround): invalid escape sequence: \\1",
        ),
        (
            "fit:\n  - name: a\n    if: {title: {matches: 'vp(?! of sales)'}}\n    points: 1\n",
            6,
            "fit[0].if.title.matches: not a valid regular expression (RE2 syntax",
        ),
        (
            "fit:\n  - name: a\n    if: {size: {min: 9, max: 1}}\n    points: 1\n",
            6,
            "fit[0].if.size: min must not be above max",
        ),
        (
            "fit:\n  - name: a\n    if: {size: {over: 9}}\n    points: 1\n",
            6,
            "fit[0].if.size.over: Extra inputs are not permitted",
        ),
        (
            "engagement:\n  - name: a\n    when: {activity: page_view}\n",
            5,
            "engagement[0].points: Field required",
        ),
        (
            "engagement:\n  - name: a\n    when: {}\n    points: 1\n",
            6,
            "engagement[0].when: give at least one condition",
        ),
        (
            "engagement:\n  - name: a\n"
            "    when: {activity: email_open, new_session_after_minutes: 5}\n    points: 1\n",
            6,
            "engagement[0].when: new_session_after_minutes applies to page_view activities only",
        ),
        (
            "engagement:\n  - name: a\n    when: {activity: email_open}\n    points: lots\n",
            7,
            "engagement[0].points: Input should be a valid number",
        ),
        (
            "engagement:\n  - name: a\n    when: {activity: email_open}\n    points: 1\n"
            "    cap: {per_day: 1}\n",
            8,
            "engagement[0].cap.per_day: Extra inputs",
        ),
        (
            "grades:\n  fit: {A: 10, B: 20, C: 5}\n",
            5,
            "grades.fit: each better grade needs a higher minimum",
        ),
        (
            "grades:\n  engagement:\n    1: 50\n    2: 50\n    3: 10\n",
            5,
            "grades.engagement: each better grade needs a higher minimum",
        ),
        ("recycle: forget\n", 4, "recycle: Input should be 'reset' or 'keep'"),
        ("bonus: 3\n", 4, "bonus: Extra inputs are not permitted"),
        (
            "decay:\n  half_life_days: 0\n",
            5,
            "decay.half_life_days: Input should be greater than 0",
        ),
        (
            "triggers:\n  - name: a\n    when: {form: x}\n    when: {form: y}\n",
            7,
            "triggers[0].when: 'when' is given twice",
        ),
        (
            "fit:\n  - {name: dup, if: {a: 1}, points: 1}\n"
            "triggers:\n  - name: dup\n    when: {form: x}\n",
            7,
            "triggers[0].name: 'dup' is already used by fit[0]",
        ),
        (
            "disqualifiers:\n  - name: a\n    if: {email_domain: [gmail.com, [nested]]}\n",
            6,
            "disqualifiers[0].if.email_domain.in[1]: expected a text",
        ),
    ],
)
def test_bad_rulebook_names_file_line_and_field(body: str, line: int, message: str) -> None:
    with pytest.raises(RulebookError) as caught:
        parse_rulebook_text(VALID_HEAD + body, "rules.yaml")
    assert f"rules.yaml line {line}: {message}" in str(caught.value)
    assert caught.value.problems[0].line == line


def test_missing_top_level_fields_and_every_error_are_reported() -> None:
    with pytest.raises(RulebookError) as caught:
        parse_rulebook_text("description: x\nmql: {threshold: -5}\n", "r.yaml")
    assert str(caught.value).splitlines() == [
        "r.yaml line 1: version: Field required",
        "r.yaml line 2: mql.threshold: Input should be greater than 0",
    ]


def test_document_without_a_file_has_no_line_numbers() -> None:
    with pytest.raises(RulebookError, match=r"^api: mql: Field required$"):
        rulebook_from_document({"version": "1"}, origin="api")


def test_unreadable_empty_or_broken_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(RulebookError, match="cannot read rulebook"):
        load_rulebook(tmp_path / "missing.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    with pytest.raises(RulebookError, match=r"empty\.yaml: the rulebook is empty"):
        load_rulebook(empty)
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: '1'\nfit: [unclosed\n")
    with pytest.raises(RulebookError, match=r"broken\.yaml line 3: not valid YAML"):
        load_rulebook(broken)


# --- regular expressions run on RE2: linear time, whatever the pattern ----------------------

CATASTROPHIC = "^(a+)+$"  # exponential for a backtracking engine on 'aaa…ab'


def test_catastrophic_patterns_are_evaluated_in_linear_time() -> None:
    """With Python's re, each evaluation that finds nothing would not return in a lifetime."""
    adversarial = "a" * 10_000 + "b"
    assert compile_regex(CATASTROPHIC)(adversarial) is False
    assert compile_regex(CATASTROPHIC)("a" * 10_000) is True
    assert Condition.model_validate({"matches": CATASTROPHIC}).holds("a" * 50 + "b") is False
    when = ActivityMatch.model_validate({"activity": "page_view", "url_regex": "(x+x+)+y"})
    assert when.matches(activity(K.PAGE_VIEW, url="x" * 10_000)) is False
    assert when.matches(activity(K.PAGE_VIEW, url="xxy")) is True


def test_a_rulebook_with_a_catastrophic_pattern_scores_normally() -> None:
    rulebook = parse_rulebook_text(
        VALID_HEAD
        + "fit:\n  - name: a-run\n    if: {job_title: {matches: '^(a+)+$'}}\n    points: 7\n"
    )
    assert rulebook.fit_for({"job_title": "a" * 10_000 + "b"}) == ()
    assert rulebook.fit_for({"job_title": "AAAA"}) == (("a-run", 7.0),)


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        (r"/docs/v[0-9]+/", "https://x.io/DOCS/v12/intro", True),  # without case, as before
        (r"\bintern\b", "Summer Intern", True),
        (r"\bintern\b", "International", False),
        ("é", "CAFÉ", True),  # case folding beyond ASCII
        ("^café$", "café", True),
        ("a.c", "a\ud800c", True),  # a lone surrogate (valid in JSON) is one character
        ("^x$", "x\ud800", False),
        (r"(?P<v>v[0-9])\.", "v2.1", True),
        (r"end\z", "the end", True),
    ],
)
def test_regex_matches_like_a_search_without_case(pattern: str, text: str, expected: bool) -> None:
    assert compile_regex(pattern)(text) is expected


@pytest.mark.parametrize(
    "pattern",
    [r"(a)\1", r"(?=a)b", r"(?<!a)b", r"a\Z", "a{2000}", "(", "[z-a]"],
)
def test_patterns_re2_cannot_run_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match="not a valid regular expression"):
        compile_regex(pattern)


def test_rules_check_reports_a_pattern_re2_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from services.launch.cli import main as cli_main  # the whole CLI: only this test needs it

    path = tmp_path / "rules.yaml"
    path.write_text(
        VALID_HEAD + "triggers:\n  - name: t\n    when:\n      url_regex: '(?<=/app)/demo'\n"
    )
    assert cli_main(["rules", "check", str(path)]) == 2
    error = capsys.readouterr().err
    assert f"{path} line 7: triggers[0].when.url_regex: not a valid regular expression" in error
    assert "invalid perl operator" in error


# --- determinism, property-based ------------------------------------------------------------


def example_variant(**changes: Any) -> Rulebook:
    return rulebook_from_document({**EXAMPLE.model_dump(mode="json", by_alias=True), **changes})


PROPERTY_BOOKS = [
    EXAMPLE,
    example_variant(
        decay={"half_life_days": 7, "expire_after_days": 20}, recycle="keep", mql={"threshold": 60}
    ),
    example_variant(decay={}, mql={"threshold": 80}),
]

URLS = ["https://x.io/pricing", "https://x.io/product/a", "https://x.io/careers", "/blog/a", None]
FORMS = ["demo-request", "newsletter", "contact-sales", None]
ATTRIBUTES: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {},
    optional={
        "seniority": st.sampled_from(["student", "director", "manager", None]),
        "company_size": st.sampled_from([5, 300, 9000, "1,200"]),
        "industry": st.sampled_from(["software", "retail"]),
        "purchase_timeline": st.sampled_from(["0-3 months", "6-12 months"]),
    },
)


@st.composite
def activities(draw: st.DrawFn) -> ActivityData:
    kind = draw(st.sampled_from(list(ActivityType)))
    properties: dict[str, Any] = {}
    if kind == K.PAGE_VIEW:
        properties["url"] = draw(st.sampled_from(URLS))
        properties["seconds"] = draw(st.sampled_from([None, 30, 200]))
    if kind == K.FORM_SUBMIT:
        properties["form"] = draw(st.sampled_from(FORMS))
    return ActivityData(
        activity_type=kind,
        event_name="Trial Started" if kind == K.CUSTOM else kind.value,
        identity=Identity(
            anonymous_id="a", email=draw(st.sampled_from([None, "a@corp.example", "b@gmail.com"]))
        ),
        properties={name: value for name, value in properties.items() if value is not None},
        attributes=draw(ATTRIBUTES),
        channel="test",
        received_at=MONDAY,
        is_bot=draw(st.integers(0, 9)) == 0,
    )


@st.composite
def histories(draw: st.DrawFn) -> list[ActivityRecord]:
    """One lead's records in arrival order: ties in time, late arrivals, redeliveries."""
    count = draw(st.integers(1, 30))
    records = [
        rec(
            f"e{index:02}",
            MONDAY + timedelta(minutes=37 * draw(st.integers(0, 2500))),
            draw(activities()),
        )
        for index in range(count)
    ]
    redelivered = draw(st.lists(st.sampled_from(records), max_size=3))
    return draw(st.permutations(records + redelivered))


def stored(state: LeadState) -> LeadState:
    """What the database gives back: the state through JSON text."""
    return LeadState.from_json(json.loads(json.dumps(state.to_json())))


def unique_sorted(records: Sequence[ActivityRecord]) -> list[ActivityRecord]:
    by_key = {(r.time, r.event_id): r for r in records}
    return [by_key[key] for key in sorted(by_key)]


PROPERTY_SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
READ_AT = MONDAY + timedelta(days=120)


@PROPERTY_SETTINGS
@given(history=histories(), rulebook=st.sampled_from(PROPERTY_BOOKS), seed=st.randoms())
def test_replay_does_not_depend_on_arrival_order(
    history: list[ActivityRecord], rulebook: Rulebook, seed: Any
) -> None:
    state, steps = engine.replay(rulebook, history)
    shuffled = list(history)
    seed.shuffle(shuffled)
    again, steps_again = engine.replay(rulebook, shuffled)
    assert again == state
    assert steps_again == steps
    assert engine.snapshot(rulebook, again, READ_AT) == engine.snapshot(rulebook, state, READ_AT)


@PROPERTY_SETTINGS
@given(history=histories(), rulebook=st.sampled_from(PROPERTY_BOOKS), cut=st.integers(0, 40))
def test_one_by_one_and_prefix_then_rest_equal_a_full_replay(
    history: list[ActivityRecord], rulebook: Rulebook, cut: int
) -> None:
    full, steps = engine.replay(rulebook, history)
    ordered = unique_sorted(history)
    one_by_one = fold(rulebook, ordered)
    assert [step.state for step in one_by_one] == [step.state for step in steps]
    prefix, _ = engine.replay(rulebook, ordered[:cut])
    rest, _ = engine.replay(rulebook, ordered[cut:], start=stored(prefix))
    assert rest == full


@PROPERTY_SETTINGS
@given(
    history=histories(),
    rulebook=st.sampled_from(PROPERTY_BOOKS),
    cuts=st.lists(st.integers(0, 40), max_size=5),
)
def test_live_processing_in_any_batches_ends_where_replay_does(
    history: list[ActivityRecord], rulebook: Rulebook, cuts: list[int]
) -> None:
    """Live: apply a batch on top when it comes after the state, else replay all seen."""
    bounds = [0, *sorted(cuts), len(history)]
    state, seen = engine.initial_state(), []
    for low, high in itertools.pairwise(bounds):
        batch = unique_sorted(history[low:high])
        seen += history[low:high]
        if not batch:
            continue
        last = state.last_key
        if last is None or (batch[0].time, batch[0].event_id) > last:
            state, _ = engine.replay(rulebook, batch, start=stored(state))
        else:
            state, _ = engine.replay(rulebook, seen)
    assert state == engine.replay(rulebook, history)[0]


@PROPERTY_SETTINGS
@given(
    history=histories(),
    rulebook=st.sampled_from(PROPERTY_BOOKS),
    recycle_minute=st.integers(0, 37 * 2500),
)
def test_recycling_live_equals_replaying_with_the_recycle(
    history: list[ActivityRecord], rulebook: Rulebook, recycle_minute: int
) -> None:
    at = MONDAY + timedelta(minutes=recycle_minute, seconds=1)
    ordered = unique_sorted(history)
    before = [r for r in ordered if r.time < at]
    state, _ = engine.replay(rulebook, before)
    state = engine.recycle(rulebook, stored(state), at)
    live, _ = engine.replay(rulebook, [r for r in ordered if r.time >= at], start=state)
    assert live == engine.replay(rulebook, history, recycles=[at])[0]
    from_cycle_start, _ = engine.replay(rulebook, history, start=engine.initial_state(at))
    assert from_cycle_start == live, "replaying the log into the current cycle agrees too"


def test_control_characters_in_versions_and_rule_names_are_refused() -> None:
    """They would become event ids, ledger rows and database text; PostgreSQL refuses NUL."""
    text = (
        'version: "2026\\0"\nmql: {threshold: 10}\nengagement:\n'
        '  - name: "page\\x1bview"\n    when: {activity: page_view}\n    points: 1\n'
    )
    with pytest.raises(RulebookError) as caught:
        parse_rulebook_text(text, "r.yaml")
    assert str(caught.value).splitlines() == [
        "r.yaml line 1: version: must not contain control characters (found U+0000)",
        "r.yaml line 4: engagement[0].name: must not contain control characters (found U+001B)",
    ]
