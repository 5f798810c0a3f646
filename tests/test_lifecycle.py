"""The lead's lifecycle (schemas.lifecycle): the stages and the one transition rule (pure)."""

from __future__ import annotations

import pytest

from schemas.events import LeadStatusData
from schemas.lifecycle import (
    SALES_STAGES,
    InvalidTransition,
    LeadStage,
    StageEvent,
    allows,
    next_stage,
)

LEAD, MQL, SAL, SQL = LeadStage.LEAD, LeadStage.MQL, LeadStage.SAL, LeadStage.SQL
REJECTED, NURTURE, MERGED = LeadStage.REJECTED, LeadStage.NURTURE, LeadStage.MERGED


def test_the_stages_are_the_strings_stored_and_sent() -> None:
    assert [stage.value for stage in LeadStage] == [
        "lead",
        "mql",
        "sal",
        "sql",
        "rejected",
        "nurture",
        "merged",
    ]
    assert LeadStage("mql") is MQL and MQL == "mql"


def test_a_lead_qualifies_and_sales_takes_it_to_an_opportunity() -> None:
    stage = LEAD
    for event, expected in [
        (StageEvent.QUALIFIED, MQL),
        (StageEvent.CONTACTED, MQL),
        (StageEvent.ACCEPTED, SAL),
        (StageEvent.CONTACTED, SAL),
        (StageEvent.CONVERTED, SQL),
    ]:
        stage = next_stage(stage, event)
        assert stage is expected, event


def test_a_rejected_or_recycled_lead_can_qualify_again_from_nurture() -> None:
    assert next_stage(MQL, StageEvent.REJECTED) is REJECTED
    assert next_stage(REJECTED, StageEvent.RECYCLED) is NURTURE
    assert next_stage(NURTURE, StageEvent.QUALIFIED) is MQL
    for stage in SALES_STAGES:
        assert next_stage(stage, StageEvent.RECYCLED) is NURTURE


def test_a_revocation_returns_the_lead_to_where_its_cycle_began() -> None:
    assert next_stage(MQL, StageEvent.REVOKED) is LEAD
    assert next_stage(MQL, StageEvent.REVOKED, recycled=True) is NURTURE


def test_once_sales_acted_an_mql_is_not_revoked() -> None:
    for stage in (SAL, SQL, REJECTED):
        assert not allows(stage, StageEvent.REVOKED)
        with pytest.raises(InvalidTransition, match=f"revoked does not apply to .* {stage}"):
            next_stage(stage, StageEvent.REVOKED)
    assert not allows(LEAD, StageEvent.REVOKED)


def test_a_qualification_keeps_a_stage_sales_holds() -> None:
    for stage in SALES_STAGES:
        assert next_stage(stage, StageEvent.QUALIFIED) is stage


def test_rep_actions_need_a_qualified_lead() -> None:
    for stage in (LEAD, NURTURE):
        for event in (StageEvent.ACCEPTED, StageEvent.REJECTED, StageEvent.RECYCLED):
            assert not allows(stage, event)
            with pytest.raises(InvalidTransition):
                next_stage(stage, event)


def test_rep_actions_move_between_the_stages_sales_holds_in_any_order() -> None:
    targets = {StageEvent.ACCEPTED: SAL, StageEvent.REJECTED: REJECTED, StageEvent.CONVERTED: SQL}
    for stage in SALES_STAGES:
        for event, target in targets.items():
            assert next_stage(stage, event) is target
        assert next_stage(stage, StageEvent.CONTACTED) is stage


def test_any_lead_can_be_merged_and_a_merged_lead_moves_no_more() -> None:
    for stage in LeadStage:
        assert next_stage(stage, StageEvent.MERGED) is MERGED
    for event in StageEvent:
        assert allows(MERGED, event) is (event is StageEvent.MERGED)


def test_allows_says_exactly_when_next_stage_refuses() -> None:
    for stage in LeadStage:
        for event in StageEvent:
            try:
                next_stage(stage, event)
            except InvalidTransition:
                assert not allows(stage, event), (stage, event)
            else:
                assert allows(stage, event), (stage, event)


def test_every_rep_action_on_lead_status_is_a_stage_event() -> None:
    statuses = LeadStatusData.model_json_schema()["properties"]["status"]["enum"]
    assert {StageEvent(status) for status in statuses} == {
        StageEvent.ACCEPTED,
        StageEvent.REJECTED,
        StageEvent.CONTACTED,
        StageEvent.CONVERTED,
        StageEvent.RECYCLED,
    }
