"""The routing file and the router: pure, no broker or database."""

from __future__ import annotations

import textwrap
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from handoff_service.router import (
    Decision,
    Lead,
    PoolTurns,
    QueuedLead,
    RepTurn,
    RosterState,
    Skip,
    account_domain,
    drain_queue,
    lead_facts,
    matching_rule,
    route,
    unavailable,
)
from handoff_service.routing_file import (
    Away,
    Rep,
    RoutingError,
    RoutingFile,
    load_routing,
    parse_routing_text,
    routing_from_document,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EXAMPLE = load_routing(EXAMPLES / "routing.yaml")
# Monday 2 November 2026, 15:00 UTC: 10:00 in New York, 15:00 in London, 16:00 in Berlin
MONDAY = datetime(2026, 11, 2, 15, tzinfo=UTC)


def rep(rep_id: str, pools: Sequence[str] = ("inbound",), **fields: Any) -> dict[str, Any]:
    return {
        "id": rep_id,
        "name": rep_id.title(),
        "email": f"{rep_id}@example.com",
        "pools": list(pools),
        **fields,
    }


def routing(
    reps: Iterable[dict[str, Any]],
    *,
    pools: Mapping[str, dict[str, Any]] | None = None,
    rules: Sequence[dict[str, Any]] | None = None,
) -> RoutingFile:
    return routing_from_document(
        {
            "pools": pools if pools is not None else {"inbound": {}},
            "rules": rules if rules is not None else [{"name": "all", "pool": "inbound"}],
            "reps": list(reps),
        }
    )


def lead(number: int = 1, **attributes: Any) -> Lead:
    return Lead(lead_id=f"ld_{number}", attributes=attributes)


def deal(
    table: RoutingFile,
    count: int,
    state: RosterState | None = None,
    now: datetime = MONDAY,
) -> tuple[list[str | None], RosterState]:
    """`count` leads routed one after another; the reps they went to, and the state after."""
    state = state or RosterState()
    chosen: list[str | None] = []
    for number in range(count):
        decision = route(lead(number), table, state, now)
        chosen.append(decision.rep_id)
        state = state.assigned(decision)
    return chosen, state


# --- rules and conditions -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("facts", "rule", "pool"),
    [
        ({"country": "DE", "company_size": 5000}, "enterprise", "enterprise"),  # first wins
        ({"country": "de", "company_size": 40}, "emea-by-country", "emea"),
        ({"region": "EMEA", "country": "KE"}, "emea-by-region", "emea"),
        ({"country": "US", "company_size": "1,200"}, "enterprise", "enterprise"),
        ({"country": "US", "company_size": 50}, "everyone-else", "inbound"),
        ({}, "everyone-else", "inbound"),
    ],
)
def test_the_first_matching_rule_of_the_example_decides_the_pool(
    facts: dict[str, Any], rule: str, pool: str
) -> None:
    decision = route(lead(**facts), EXAMPLE, RosterState(), MONDAY)
    assert (decision.rule, decision.tried[0], decision.reason) == (rule, pool, "routed")


def test_grade_and_source_are_facts_rules_can_name() -> None:
    webinar = Lead("ld_1", {"country": "US"}, grade="C2", source="webinar")
    good_webinar = replace(webinar, grade="A1")
    assert route(webinar, EXAMPLE, RosterState(), MONDAY).rule == "low-grade-webinar-leads"
    assert route(good_webinar, EXAMPLE, RosterState(), MONDAY).rule == "everyone-else"


@pytest.mark.parametrize(
    ("when", "matching", "other"),
    [
        ({"country": ["US", "CA"]}, {"country": " us "}, {"country": "GB"}),
        ({"company_size": {"min": 200, "max": 999}}, {"company_size": 200}, {"company_size": 1000}),
        ({"industry": "software"}, {"industry": "Software"}, {"industry": "banking"}),
        ({"industry": {"not_in": ["education"]}}, {"industry": "retail"}, {}),
        ({"grade": "A"}, {"grade": "A3"}, {"grade": "B1"}),
        ({"grade": ["A", "B1"]}, {"grade": "B1"}, {"grade": "B2"}),
        ({"grade": {"not_in": ["D"]}}, {"grade": "C4"}, {"grade": "D1"}),
        ({"grade": {"matches": "^[AB][12]$"}}, {"grade": "B2"}, {"grade": "B3"}),
        ({"source": ["partner", "event"]}, {"source": "Partner"}, {"source": "ads"}),
        ({"campaign": {"contains": "spring"}}, {"campaign": "2026-Spring-Launch"}, {}),
        ({"trigger": "demo-request"}, {"trigger": "demo-request"}, {"trigger": "pricing"}),
        ({"product_interest": "analytics"}, {"product_interest": "analytics"}, {}),
        ({"email_domain": {"matches": r"\.edu$"}}, {"email": "jo@mit.edu"}, {"email": "jo@a.io"}),
        ({"job_title": {"present": False}}, {"job_title": " "}, {"job_title": "CTO"}),
        ({"country": "DE", "company_size": {"min": 50}}, {"country": "DE", "company_size": 60},
         {"country": "DE", "company_size": 10}),
    ],
)  # fmt: skip
def test_rule_conditions_use_the_rulebook_vocabulary(
    when: dict[str, Any], matching: dict[str, Any], other: dict[str, Any]
) -> None:
    table = routing([rep("rep-a")], rules=[{"name": "only", "when": when, "pool": "inbound"}])
    for facts, expected in ((matching, "only"), (other, None)):
        known = {name: facts.pop(name) for name in ("grade", "source", "campaign", "trigger")
                 if name in facts}  # fmt: skip
        subject = Lead("ld_1", facts, email=facts.get("email"), **known)
        found = matching_rule(table, lead_facts(subject))
        assert (found.name if found else None) == expected, facts


def test_facts_given_on_the_lead_win_over_attributes_of_the_same_name() -> None:
    facts = lead_facts(Lead("ld_1", {"source": "old", "email": "a@b.io"}, source="webinar"))
    assert facts["source"] == "webinar"
    assert facts["email_domain"] == "b.io"


def test_a_lead_no_rule_matches_waits_in_the_queue() -> None:
    only_de = {"name": "de", "when": {"country": "DE"}, "pool": "inbound"}
    table = routing([rep("rep-a")], rules=[only_de])
    decision = route(lead(country="FR"), table, RosterState(), MONDAY)
    assert (decision.rep_id, decision.reason, decision.rule, decision.pool) == (
        None, "queued", None, None,
    )  # fmt: skip
    assert decision.queued


# --- strategies -----------------------------------------------------------------------------


def test_round_robin_deals_in_turn_and_ignores_weights() -> None:
    table = routing([rep("rep-a", weight=5), rep("rep-b"), rep("rep-c")])
    chosen, _ = deal(table, 7)
    assert chosen == ["rep-a", "rep-b", "rep-c", "rep-a", "rep-b", "rep-c", "rep-a"]


def test_weighted_shares_stay_within_two_percent_of_the_weights_over_10000_leads() -> None:
    weights = {"rep-a": 1, "rep-b": 2, "rep-c": 3, "rep-d": 1.5, "rep-e": 0.5}
    table = routing(
        [rep(rep_id, weight=weight) for rep_id, weight in weights.items()],
        pools={"inbound": {"strategy": "weighted"}},
    )
    chosen, _ = deal(table, 10_000)
    counts = Counter(chosen)
    total = sum(weights.values())
    for rep_id, weight in weights.items():
        expected = 10_000 * weight / total
        assert abs(counts[rep_id] - expected) <= 0.02 * expected, (rep_id, counts)


def test_weighted_interleaves_rather_than_dealing_in_runs() -> None:
    table = routing(
        [rep("rep-a", weight=2), rep("rep-b")], pools={"inbound": {"strategy": "weighted"}}
    )
    chosen, _ = deal(table, 300)
    assert chosen[:6] == ["rep-a", "rep-b", "rep-a", "rep-b", "rep-a", "rep-a"]
    for dealt in range(1, 301):  # never more than one lead off the 2:1 share
        assert abs(chosen[:dealt].count("rep-a") - 2 * dealt / 3) <= 1


def test_load_balanced_gives_the_lead_to_the_fewest_open_leads_ties_by_turn() -> None:
    table = routing(
        [rep("rep-a"), rep("rep-b"), rep("rep-c")],
        pools={"inbound": {"strategy": "load_balanced"}},
    )
    state = RosterState(open_leads={"rep-a": 3, "rep-b": 1, "rep-c": 1})
    chosen, state = deal(table, 5, state)
    assert chosen == ["rep-b", "rep-c", "rep-b", "rep-c", "rep-a"]
    assert state.open_leads == {"rep-a": 4, "rep-b": 3, "rep-c": 3}
    chosen, _ = deal(table, 3, state)
    assert chosen == ["rep-b", "rep-c", "rep-a"]  # equal loads: whose turn it is


def test_decisions_record_the_rule_pool_strategy_and_new_turns() -> None:
    table = routing([rep("rep-a"), rep("rep-b")], pools={"inbound": {"strategy": "weighted"}})
    decision = route(lead(), table, RosterState(), MONDAY)
    assert decision == Decision(
        lead_id="ld_1",
        rep_id="rep-a",
        reason="routed",
        rule="all",
        pool="inbound",
        strategy="weighted",
        tried=("inbound",),
        skipped=(),
        turns=decision.turns,
    )
    assert decision.turns["inbound"] == PoolTurns(
        dealt=1, floor=0.0, reps={"rep-a": RepTurn(1.0, 1), "rep-b": RepTurn(0.0, 0)}
    )


def test_now_must_be_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        route(lead(), EXAMPLE, RosterState(), datetime(2026, 11, 2, 15))


# --- capacity -------------------------------------------------------------------------------

CAPACITIES = {"rep-a": 1, "rep-b": 2, "rep-c": 3}
CAPPED = routing(
    [rep(rep_id, capacity=capacity) for rep_id, capacity in CAPACITIES.items()],
    pools={"inbound": {"strategy": "load_balanced"}},
)

operations = st.lists(
    st.one_of(
        st.just(("lead", "")),
        st.tuples(st.just("answer"), st.sampled_from(sorted(CAPACITIES))),
        st.just(("drain", "")),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(operations)
def test_capacity_is_never_exceeded_and_nobody_free_leaves_a_lead_queued(
    steps: list[tuple[str, str]],
) -> None:
    state = RosterState()
    queue: list[QueuedLead] = []
    now = MONDAY
    for number, (kind, rep_id) in enumerate(steps):
        now += timedelta(minutes=1)
        if kind == "lead":
            decision = route(lead(number), CAPPED, state, now)
            if decision.queued:
                assert {skip.reason for skip in decision.skipped} == {"full"}
                queue.append(QueuedLead(lead(number), now))
            state = state.assigned(decision)
        elif kind == "answer" and state.open(rep_id) > 0:
            state = state.answered(rep_id)
        elif kind == "drain":
            drained = drain_queue(queue, CAPPED, state, now)
            assert all(decision.reason == "from_queue" for decision in drained.decisions)
            queue, state = list(drained.waiting), drained.state
            if queue:
                assert all(state.open(rep_id) == cap for rep_id, cap in CAPACITIES.items())
        assert all(state.open(rep_id) <= cap for rep_id, cap in CAPACITIES.items())


def test_a_full_rep_is_skipped_with_the_reason() -> None:
    state = RosterState(open_leads={"rep-a": 1})
    decision = route(lead(), CAPPED, state, MONDAY)
    assert decision.rep_id == "rep-b"
    assert decision.skipped == (Skip("rep-a", "full", "inbound"),)


# --- working hours, time zones, DST ---------------------------------------------------------

NINE_TO_FIVE = {"mon-fri": "09:00-17:00"}
WORLD = routing(
    [
        rep("rep-ny", time_zone="America/New_York", hours=NINE_TO_FIVE),
        rep("rep-london", time_zone="Europe/London", hours=NINE_TO_FIVE),
        rep("rep-berlin", time_zone="Europe/Berlin", hours=NINE_TO_FIVE),
    ]
)


@pytest.mark.parametrize(
    ("moment", "working"),
    [
        (datetime(2026, 11, 2, 7, 59, tzinfo=UTC), set()),
        (datetime(2026, 11, 2, 8, 0, tzinfo=UTC), {"rep-berlin"}),  # 09:00 CET
        (datetime(2026, 11, 2, 9, 0, tzinfo=UTC), {"rep-berlin", "rep-london"}),
        (datetime(2026, 11, 2, 14, 0, tzinfo=UTC), {"rep-berlin", "rep-london", "rep-ny"}),
        (datetime(2026, 11, 2, 16, 0, tzinfo=UTC), {"rep-london", "rep-ny"}),  # 17:00 CET
        (datetime(2026, 11, 2, 21, 59, tzinfo=UTC), {"rep-ny"}),
        (datetime(2026, 11, 2, 22, 0, tzinfo=UTC), set()),
        (datetime(2026, 11, 7, 14, 0, tzinfo=UTC), set()),  # Saturday
        # a Friday evening in New York is Saturday in Berlin
        (datetime(2026, 11, 6, 21, 0, tzinfo=UTC), {"rep-ny"}),
    ],
)
def test_working_hours_are_each_reps_own_local_time(moment: datetime, working: set[str]) -> None:
    state = RosterState()
    assert {r.id for r in WORLD.reps if unavailable(r, state, moment) is None} == working


@pytest.mark.parametrize(
    ("moment", "in_hours"),
    [
        # New York moves to daylight time on Sunday 8 March 2026: 09:00 is 14:00 UTC before
        (datetime(2026, 3, 6, 13, 30, tzinfo=UTC), False),  # Fri 08:30 EST
        (datetime(2026, 3, 6, 14, 0, tzinfo=UTC), True),  # Fri 09:00 EST
        (datetime(2026, 3, 9, 12, 30, tzinfo=UTC), False),  # Mon 08:30 EDT
        (datetime(2026, 3, 9, 13, 0, tzinfo=UTC), True),  # Mon 09:00 EDT
        (datetime(2026, 3, 9, 20, 59, tzinfo=UTC), True),  # Mon 16:59 EDT
        (datetime(2026, 3, 9, 21, 0, tzinfo=UTC), False),  # Mon 17:00 EDT
        # ... and back to standard time on Sunday 1 November 2026
        (datetime(2026, 10, 30, 13, 0, tzinfo=UTC), True),  # Fri 09:00 EDT
        (datetime(2026, 11, 2, 13, 30, tzinfo=UTC), False),  # Mon 08:30 EST
        (datetime(2026, 11, 2, 14, 0, tzinfo=UTC), True),  # Mon 09:00 EST
    ],
)
def test_hours_follow_daylight_saving_time(moment: datetime, in_hours: bool) -> None:
    new_york = WORLD.rep("rep-ny")
    assert new_york is not None and new_york.in_hours(moment) is in_hours


@pytest.mark.parametrize(
    ("moment", "in_hours"),
    [
        (datetime(2026, 3, 8, 6, 30, tzinfo=UTC), True),  # 01:30 EST
        (datetime(2026, 3, 8, 7, 30, tzinfo=UTC), True),  # 03:30 EDT: 02:xx never happened
        (datetime(2026, 3, 8, 8, 0, tzinfo=UTC), False),  # 04:00 EDT
        (datetime(2026, 11, 1, 5, 30, tzinfo=UTC), True),  # the first 01:30 (EDT)
        (datetime(2026, 11, 1, 6, 30, tzinfo=UTC), True),  # the second 01:30 (EST)
        (datetime(2026, 11, 1, 9, 0, tzinfo=UTC), False),  # 04:00 EST
    ],
)
def test_hours_on_the_night_the_clocks_change(moment: datetime, in_hours: bool) -> None:
    night = routing([rep("rep-ny", time_zone="America/New_York", hours={"sun": "01:00-04:00"})])
    assert night.reps[0].in_hours(moment) is in_hours


def test_several_ranges_a_day_and_days_off() -> None:
    hours = {"mon-fri": ["08:00-12:30", "13:30-17:00"], "sat": "off"}
    berlin = routing([rep("rep-a", time_zone="Europe/Berlin", hours=hours)]).reps[0]
    assert berlin.hours is not None and berlin.hours["sat"] == ()
    assert berlin.in_hours(datetime(2026, 11, 2, 11, 29, tzinfo=UTC))  # 12:29 CET
    assert not berlin.in_hours(datetime(2026, 11, 2, 11, 30, tzinfo=UTC))  # lunch
    assert berlin.in_hours(datetime(2026, 11, 2, 12, 30, tzinfo=UTC))  # 13:30
    assert not berlin.in_hours(datetime(2026, 11, 7, 10, 0, tzinfo=UTC))  # Saturday


def test_reps_outside_their_hours_are_skipped_with_the_reason() -> None:
    early = datetime(2026, 11, 2, 8, 30, tzinfo=UTC)
    decision = route(lead(), WORLD, RosterState(), early)
    assert decision.rep_id == "rep-berlin"
    assert decision.skipped == (
        Skip("rep-ny", "outside_hours", "inbound"),
        Skip("rep-london", "outside_hours", "inbound"),
    )


# --- away and inactive ----------------------------------------------------------------------


def test_away_dates_are_whole_days_in_the_reps_time_zone() -> None:
    grace = EXAMPLE.rep("rep-grace")  # away 2026-12-24 to 2027-01-01, New York
    assert grace is not None
    assert not grace.away_at(datetime(2026, 12, 24, 4, 59, tzinfo=UTC))  # 23:59 on the 23rd
    assert grace.away_at(datetime(2026, 12, 24, 5, 0, tzinfo=UTC))
    assert grace.away_at(datetime(2027, 1, 2, 4, 59, tzinfo=UTC))  # 23:59 on 1 January
    assert not grace.away_at(datetime(2027, 1, 2, 5, 0, tzinfo=UTC))


def test_away_from_the_live_state_times_and_open_ended_periods() -> None:
    table = routing(
        [
            rep("rep-a", time_zone="Europe/Berlin", away=[{"from": "2026-11-02T16:30"}]),
            rep("rep-b", away=[{"from": "2026-11-01T00:00Z", "until": "2026-11-02T15:00Z"}]),
            rep("rep-c"),
            rep("rep-d", active=False),
        ]
    )
    state = RosterState(away={"rep-c": [Away.model_validate({"from": date(2026, 11, 2)})]})
    reasons = {r.id: unavailable(r, state, MONDAY) for r in table.reps}
    # rep-a leaves at 16:30 Berlin time, 15:30 UTC; rep-b was back at 15:00 UTC
    assert reasons == {"rep-a": None, "rep-b": None, "rep-c": "away", "rep-d": "inactive"}
    later = MONDAY + timedelta(minutes=30)
    assert unavailable(table.reps[0], state, later) == "away"


# --- account match --------------------------------------------------------------------------

OWNED = routing(
    [rep("rep-a"), rep("rep-b"), rep("rep-owner", pools=[], capacity=1)],
    rules=[
        {"name": "partners", "when": {"source": "partner"}, "pool": "inbound",
         "account_match": False},
        {"name": "all", "pool": "inbound"},
    ],
)  # fmt: skip


def test_a_known_accounts_lead_goes_to_its_owner_without_using_a_turn() -> None:
    decision = route(lead(), OWNED, RosterState(), MONDAY, account_owner="rep-owner")
    assert (decision.rep_id, decision.reason, decision.rule, decision.pool) == (
        "rep-owner", "account_owner", "all", None,
    )  # fmt: skip
    assert decision.turns == {}


@pytest.mark.parametrize(
    ("state", "owner", "why"),
    [
        (RosterState(open_leads={"rep-owner": 1}), "rep-owner", "full"),
        (RosterState(away={"rep-owner": [Away.model_validate({"from": "2026-11-01"})]}),
         "rep-owner", "away"),
        (RosterState(), "rep-gone", "inactive"),
    ],
)  # fmt: skip
def test_an_owner_who_cannot_take_it_is_skipped_and_the_pool_deals_it(
    state: RosterState, owner: str, why: str
) -> None:
    decision = route(lead(), OWNED, state, MONDAY, account_owner=owner)
    assert (decision.rep_id, decision.reason) == ("rep-a", "routed")
    assert decision.skipped == (Skip(owner, why, None),)  # type: ignore[arg-type]


def test_account_match_can_be_turned_off_per_rule_and_excluded_reps_are_passed_over() -> None:
    partner = Lead("ld_1", {}, source="partner")
    decision = route(partner, OWNED, RosterState(), MONDAY, account_owner="rep-owner")
    assert (decision.rule, decision.rep_id, decision.reason) == ("partners", "rep-a", "routed")
    again = route(
        lead(), OWNED, RosterState(), MONDAY, account_owner="rep-owner",
        exclude={"rep-owner", "rep-a"},
    )  # fmt: skip
    assert again.rep_id == "rep-b"


@pytest.mark.parametrize(
    ("subject", "domain"),
    [
        (Lead("l", {"company_domain": "https://www.Initech.com/about"}), "initech.com"),
        (Lead("l", {"company_domain": "initech.com", "email": "x@other.io"}), "initech.com"),
        (Lead("l", {}, email="dana@Initech.com"), "initech.com"),
        (Lead("l", {"email": "dana@initech.com"}), "initech.com"),
        (Lead("l", {}, email="dana@gmail.com"), None),
        (Lead("l", {"company_domain": "n/a"}), None),
        (Lead("l", {}), None),
    ],
)
def test_the_account_is_the_company_domain_else_a_business_email_domain(
    subject: Lead, domain: str | None
) -> None:
    assert account_domain(subject) == domain


# --- fairness across roster changes ---------------------------------------------------------

FOUR = [rep("rep-a"), rep("rep-b"), rep("rep-c"), rep("rep-d")]


def test_removing_a_rep_skips_and_doubles_nobody() -> None:
    table = routing(FOUR)
    chosen, state = deal(table, 6)
    assert chosen == ["rep-a", "rep-b", "rep-c", "rep-d", "rep-a", "rep-b"]
    without_c = table.with_reps([r for r in table.reps if r.id != "rep-c"])
    chosen, _ = deal(without_c, 6, state)
    assert chosen == ["rep-d", "rep-a", "rep-b", "rep-d", "rep-a", "rep-b"]


def test_a_new_rep_joins_at_the_back_of_the_current_round() -> None:
    table = routing(FOUR)
    _, state = deal(table, 6)  # a, b, c, d, a, b: c and d are next
    joined = table.with_reps([*table.reps, Rep.model_validate(rep("rep-abe"))])
    chosen, _ = deal(joined, 10, state)
    assert chosen == ["rep-c", "rep-d", "rep-abe", "rep-a", "rep-b"] * 2


@pytest.mark.parametrize("pause", ["away", "inactive"])
def test_a_rep_back_from_a_pause_is_not_flooded(pause: str) -> None:
    table = routing(FOUR[:3])
    _, state = deal(table, 3)
    if pause == "away":
        paused = replace(state, away={"rep-b": [Away.model_validate({"from": "2026-11-01"})]})
        chosen, state = deal(table, 30, paused)
        state = replace(state, away={})
    else:
        inactive_b = [r.model_copy(update={"active": r.id != "rep-b"}) for r in table.reps]
        chosen, state = deal(table.with_reps(inactive_b), 30, state)
    assert Counter(chosen) == {"rep-a": 15, "rep-c": 15}
    chosen, _ = deal(table, 30, state)
    assert Counter(chosen) == {"rep-a": 10, "rep-b": 10, "rep-c": 10}
    assert chosen[:3] == ["rep-a", "rep-b", "rep-c"]


def test_a_pool_with_catch_up_gives_the_returning_rep_the_turns_they_missed() -> None:
    table = routing(FOUR[:3], pools={"inbound": {"catch_up": True}})
    _, state = deal(table, 3)
    away = replace(state, away={"rep-b": [Away.model_validate({"from": "2026-11-01"})]})
    _, state = deal(table, 30, away)
    chosen, _ = deal(table, 15, replace(state, away={}))
    assert chosen == ["rep-b"] * 15


roster_events = st.lists(
    st.tuples(st.sampled_from(["leads", "pause", "resume", "remove", "add"]), st.integers(0, 3)),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(roster_events, st.sampled_from(["round_robin", "load_balanced"]))
@example([("remove", 0), ("leads", 1), ("add", 0), ("leads", 1)], "round_robin")
def test_reps_available_throughout_any_stretch_get_turns_within_one_of_each_other(
    events: list[tuple[str, int]], strategy: str
) -> None:
    """Whatever happens to the roster around them, two reps who could take every lead of a
    stretch of leads got the same number of them, give or take one."""
    table = routing([rep(f"rep-{n}") for n in range(3)], pools={"inbound": {"strategy": strategy}})
    members = {r.id: r for r in table.reps}
    paused: set[str] = set()
    state = RosterState()
    history: list[tuple[str, frozenset[str]]] = []  # (who got it, who could have)
    for kind, number in events:
        rep_id = f"rep-{number}"
        if kind == "leads":
            current = table.with_reps(
                [r.model_copy(update={"active": r.id not in paused}) for r in members.values()]
            )
            for _ in range(number * 3):
                decision = route(lead(), current, state, MONDAY)
                if decision.rep_id is None:
                    break
                history.append((decision.rep_id, frozenset(set(members) - paused)))
                # leads are answered at once: only turns decide, as in round robin
                state = state.assigned(decision).answered(decision.rep_id)
        elif kind == "pause":
            paused.add(rep_id)
        elif kind == "resume":
            paused.discard(rep_id)
        elif kind == "remove":
            members.pop(rep_id, None)
        elif rep_id not in members:
            members[rep_id] = Rep.model_validate(rep(rep_id))
    for start in range(len(history)):
        counts: Counter[str] = Counter()
        throughout = set(history[start][1])
        for chosen, available in history[start:]:
            throughout &= available
            counts[chosen] += 1
            if len(throughout) > 1:
                got = [counts[r] for r in throughout]
                assert max(got) - min(got) <= 1, (history[start:], throughout)


# --- fallbacks, the queue, draining ---------------------------------------------------------

CHAIN = routing(
    [rep("rep-ent", pools=["enterprise"]), rep("rep-emea", pools=["emea"], capacity=1),
     rep("rep-in", pools=["inbound"], capacity=1)],
    pools={"enterprise": {"fallback": "emea"}, "emea": {"fallback": "inbound"}, "inbound": {}},
    rules=[{"name": "big", "when": {"company_size": {"min": 1000}}, "pool": "enterprise"},
           {"name": "all", "pool": "inbound"}],
)  # fmt: skip


def test_nobody_free_in_the_pool_sends_the_lead_down_its_fallback_chain() -> None:
    state = RosterState(away={"rep-ent": [Away.model_validate({"from": "2026-11-01"})]})
    first = route(lead(1, company_size=5000), CHAIN, state, MONDAY)
    assert (first.rep_id, first.pool, first.tried) == ("rep-emea", "emea", ("enterprise", "emea"))
    assert first.skipped == (Skip("rep-ent", "away", "enterprise"),)
    state = state.assigned(first)
    second = route(lead(2, company_size=5000), CHAIN, state, MONDAY)
    assert (second.rep_id, second.pool) == ("rep-in", "inbound")
    state = state.assigned(second)
    third = route(lead(3, company_size=5000), CHAIN, state, MONDAY)
    assert (third.rep_id, third.reason, third.rule) == (None, "queued", "big")
    assert third.tried == ("enterprise", "emea", "inbound")
    assert [skip.reason for skip in third.skipped] == ["away", "full", "full"]
    assert third.turns == state.turns


def test_draining_the_queue_assigns_in_arrival_order_to_whoever_can_now_take_them() -> None:
    full = RosterState(
        open_leads={"rep-emea": 1, "rep-in": 1},
        away={"rep-ent": [Away.model_validate({"from": "2026-11-01", "until": "2026-11-01"})]},
    )
    queued = [
        QueuedLead(lead(2, company_size=5000), MONDAY + timedelta(minutes=2)),
        QueuedLead(lead(1), MONDAY + timedelta(minutes=1)),
        QueuedLead(lead(3), MONDAY + timedelta(minutes=3)),
    ]
    nothing = drain_queue(queued, CHAIN, full, MONDAY - timedelta(days=1))
    assert nothing.decisions == ()
    assert [each.lead.lead_id for each in nothing.waiting] == ["ld_1", "ld_2", "ld_3"]

    freed = full.answered("rep-in")  # rep-in can take one lead again; rep-ent is back
    drained = drain_queue(queued, CHAIN, freed, MONDAY)
    # the oldest lead, ld_1, took rep-in's one free place; ld_3 finds none
    assert [(d.lead_id, d.rep_id, d.reason) for d in drained.decisions] == [
        ("ld_1", "rep-in", "from_queue"),
        ("ld_2", "rep-ent", "from_queue"),
    ]
    assert [each.lead.lead_id for each in drained.waiting] == ["ld_3"]
    assert drained.state.open_leads == {"rep-emea": 1, "rep-in": 1, "rep-ent": 1}


def test_queued_leads_go_out_when_working_hours_start() -> None:
    overnight = datetime(2026, 11, 3, 3, 0, tzinfo=UTC)
    decision = route(lead(), WORLD, RosterState(), overnight)
    assert decision.queued
    queued = [QueuedLead(lead(), overnight)]
    assert drain_queue(queued, WORLD, RosterState(), overnight).waiting == tuple(queued)
    morning = datetime(2026, 11, 3, 8, 0, tzinfo=UTC)  # 09:00 in Berlin
    drained = drain_queue(queued, WORLD, RosterState(), morning)
    assert [(d.rep_id, d.reason) for d in drained.decisions] == [("rep-berlin", "from_queue")]


def test_a_drained_lead_still_goes_to_its_account_owner() -> None:
    queued = [QueuedLead(lead(), MONDAY, account_owner="rep-owner")]
    drained = drain_queue(queued, OWNED, RosterState(), MONDAY)
    assert [(d.rep_id, d.reason) for d in drained.decisions] == [("rep-owner", "from_queue")]


# --- the routing file -----------------------------------------------------------------------


def test_the_example_file_is_the_rosters_successor() -> None:
    assert {r.id for r in EXAMPLE.members("inbound")} >= {"rep-ada", "rep-grace", "rep-alan"}
    assert set(EXAMPLE.reason_codes) == {
        "not_icp", "bad_contact_data", "no_budget", "student", "competitor", "duplicate",
        "existing_customer", "bad_timing",
    }  # fmt: skip
    assert EXAMPLE.reason_codes["student"].label == "Student or researcher"
    assert {r.time_zone for r in EXAMPLE.reps} == {
        "America/New_York", "Europe/London", "Europe/Berlin",
    }  # fmt: skip


VALID = """\
reason_codes:
  not_icp: Not our ideal customer
pools:
  inbound: {fallback: queue}
  emea: {strategy: round_robin, fallback: inbound}
rules:
  - name: emea
    when: {country: [DE, FR]}
    pool: emea
  - name: all
    pool: inbound
reps:
  - id: rep-ada
    name: Ada
    email: ada@example.com
    pools: [inbound, emea]
    time_zone: Europe/London
    hours:
      mon-fri: "09:00-17:00"
"""


def test_the_valid_base_parses() -> None:
    parsed = parse_routing_text(VALID)
    assert parsed.rules[0].pool == "emea"
    assert parsed.reps[0].hours is not None and set(parsed.reps[0].hours) == {
        "mon", "tue", "wed", "thu", "fri",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("old", "new", "line", "message"),
    [
        ("    pool: emea\n", "    pool: emae\n", 9,
         "rules[0].pool: unknown pool 'emae'; the pools are inbound, emea"),
        ("pools: [inbound, emea]", "pools: [inbound, apac]", 16,
         "reps[0].pools[1]: unknown pool 'apac'"),
        ("fallback: inbound}", "fallback: nowhere}", 5,
         "pools.emea.fallback: unknown pool 'nowhere'; the pools are inbound, emea or queue"),
        ("inbound: {fallback: queue}", "inbound: {fallback: emea}", 4,
         "pools.inbound.fallback: the fallbacks go round in a circle (inbound -> emea -> "
         "inbound); end the chain with queue"),
        ("    pools: [inbound, emea]\n", "    pools: [inbound, emea]\n    capacity: 0\n", 17,
         "reps[0].capacity: Input should be greater than or equal to 1"),
        ('mon-fri: "09:00-17:00"', 'mon-fri: "09:00-13:00, 12:00-17:00"', 19,
         "reps[0].hours.mon-fri: 12:00-17:00 overlaps 09:00-13:00"),
        ('mon-fri: "09:00-17:00"', 'mon-fri: "09:00-17:00"\n      Mon: "18:00-19:00"', 18,
         "reps[0].hours: mon is given twice (mon-fri and Mon)"),
        ('mon-fri: "09:00-17:00"', 'mon-fri: "22:00-06:00"', 19,
         "reps[0].hours.mon-fri[0]: 22:00-06:00: the end must come after the start"),
        ('mon-fri: "09:00-17:00"', "mon-fri: 9am-5pm", 19,
         "reps[0].hours.mon-fri[0]: '9am-5pm' is not a range of hours"),
        ('mon-fri: "09:00-17:00"', 'weekdays: "09:00-17:00"', 18,
         "reps[0].hours: 'weekdays' is not a day"),
        ("Europe/London", "Europe/Londres", 17,
         "reps[0].time_zone: unknown time zone 'Europe/Londres'"),
        ("strategy: round_robin", "strategy: random", 5,
         "pools.emea.strategy: Input should be 'round_robin', 'weighted' or 'load_balanced'"),
        ("when: {country: [DE, FR]}", "when: {grade: [A, E1]}", 8,
         "rules[0].when: grade: 'E1' is not a grade"),
        ("when: {country: [DE, FR]}", "when: {}", 8,
         "rules[0].when: give at least one condition"),
        ("when: {country: [DE, FR]}", "when: {country: {matches: '(a)\\1'}}", 8,
         "rules[0].when.country.matches: not a valid regular expression"),
        ("  - name: all\n    pool: inbound\n",
         "  - name: all\n    pool: inbound\n  - name: late\n    pool: emea\n", 12,
         "rules[2]: never used: rules[1] above has no `when` and takes every lead"),
        ("  - name: all\n", "  - name: emea\n", 10, "rules[1].name: 'emea' is already used"),
        ("  not_icp:", "  Not-ICP:", 2, "reason_codes.Not-ICP: 'Not-ICP' is not a reason code"),
        ("  emea: {strategy", "  queue: {strategy", 5, "pools.queue: 'queue' is the unassigned"),
        ("    name: Ada\n", "    name: Ada\n    nickname: Ada\n", 15,
         "reps[0].nickname: Extra inputs are not permitted"),
        ("    name: Ada\n", "    name: Ada\n    away: [{from: 2026-12-24, until: 2026-12-01}]\n",
         15, "reps[0].away[0]: until must not come before from"),
        ("    name: Ada\n", "    name: Ada\n    name: Bea\n", 15,
         "reps[0].name: 'name' is given twice"),
        ("    pools: [inbound, emea]\n", "    pools: [inbound, emea]\n    weight: 0\n", 17,
         "reps[0].weight: Input should be greater than 0"),
        ('mon-fri: "09:00-17:00"', "mon-fri: [17:00]", 19,
         'reps[0].hours.mon-fri[0]: a range of hours is text: write it as "09:00-17:00"'),
    ],
)  # fmt: skip
def test_routing_file_problems_name_the_line_and_field(
    old: str, new: str, line: int, message: str
) -> None:
    assert old in VALID
    with pytest.raises(RoutingError) as caught:
        parse_routing_text(VALID.replace(old, new, 1), "routing.yaml")
    assert f"routing.yaml line {line}: {message}" in str(caught.value), str(caught.value)
    assert caught.value.problems[0].line == line


def test_duplicate_reps_and_every_problem_at_once() -> None:
    text = VALID + textwrap.indent(
        "- id: rep-ada\n  name: Ada again\n  email: ADA@example.com\n  pools: [apac]\n", "  "
    )
    with pytest.raises(RoutingError) as caught:
        parse_routing_text(text, "routing.yaml")
    assert str(caught.value).splitlines() == [
        "routing.yaml line 20: reps[1].id: 'rep-ada' is already used by reps[0]",
        "routing.yaml line 22: reps[1].email: 'ADA@example.com' is already used by reps[0]",
        "routing.yaml line 23: reps[1].pools[0]: unknown pool 'apac'; the pools are inbound, emea",
    ]


def test_empty_unreadable_and_broken_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(RoutingError, match=r"missing\.yaml"):
        load_routing(tmp_path / "missing.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    with pytest.raises(RoutingError, match=r"empty\.yaml: the routing file is empty"):
        load_routing(empty)
    broken = tmp_path / "broken.yaml"
    broken.write_text("pools:\n  inbound: {}\nrules: [\n")
    with pytest.raises(RoutingError, match=r"broken\.yaml line 4: not valid YAML"):
        load_routing(broken)
    no_such_day = VALID.replace("  name: Ada\n", "  name: Ada\n    away: [{from: 2026-13-01}]\n")
    with pytest.raises(RoutingError, match=r"line 15: not valid YAML: '2026-13-01' is not a date"):
        parse_routing_text(no_such_day)


def test_a_roster_change_is_validated_like_the_file_and_names_the_field() -> None:
    table = parse_routing_text(VALID)
    bad = Rep.model_validate(rep("rep-bea", pools=["apac"]))
    with pytest.raises(RoutingError) as caught:
        table.with_reps([*table.reps, bad])
    assert caught.value.problems[0].field == "reps[1].pools[0]"
    assert caught.value.problems[0].line is None
    stored = Rep.model_validate(table.reps[0].model_dump(mode="json", by_alias=True))
    assert stored == table.reps[0]  # a rep survives JSON, e.g. in the database
