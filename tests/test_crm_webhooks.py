"""Status changes from the CRM: signed per Standard Webhooks, read by the CRM's YAML mapping
(HubSpot, Salesforce, generic), applied through the same action code as HTTP with origin
`crm:<source>`. An unknown lead or status value is a 422 naming it and nothing is recorded; a
redelivered webhook changes nothing. On SQLite and PostgreSQL, and through the pipeline."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from handoff_service.action_models import CrmDelivery, CrmRecord, HandoffAction
from handoff_service.actions import ActionRules
from handoff_service.crm import (
    CrmMappingError,
    RecordLink,
    Skipped,
    StatusChange,
    load_crm_mappings,
    parse_crm_mapping,
    read_changes,
)
from handoff_service.crm_api import configured_crm_sources
from schemas.topics import LEAD_STATUS
from services.clock import Clock, ManualClock
from services.gateway.mapping import MappingError
from services.gateway.signature import sign
from services.gateway.webhooks import configured_sources
from services.launch.runtime import Runtime
from services.settings import Settings
from tests.conftest import EXAMPLES, http_client
from tests.support import eventually, read_topic, values
from tests.test_rep_actions import (
    CRM_SECRETS,
    DEMO,
    LEAD,
    OTHER,
    ROUTING,
    Desk,
    crm_settings,
    error_of,
    handed_off,
    open_desk,
    running_with_crms,
    stage_of,
)

MAPPINGS = load_crm_mappings(EXAMPLES / "crm", reason_codes=ROUTING.reason_codes)
HUBSPOT, SALESFORCE, GENERIC = MAPPINGS["hubspot"], MAPPINGS["salesforce"], MAPPINGS["generic"]


def hubspot_event(
    name: str, value: str, *, object_id: int = 1246965, at: int = 0
) -> dict[str, Any]:
    return {
        "eventId": 3816279340 + at,
        "subscriptionId": 25,
        "portalId": 33,
        "appId": 1160452,
        "occurredAt": 1795443600000 + at,  # 2026-11-23T14:20:00Z
        "subscriptionType": "contact.propertyChange",
        "attemptNumber": 0,
        "objectId": object_id,
        "propertyName": name,
        "propertyValue": value,
        "changeSource": "CRM_UI",
        "sourceId": "userId:4051200",
    }


def salesforce_lead(status: str, **fields: Any) -> dict[str, Any]:
    lead = {
        "Id": "00Q5g00000Xk2rTEAR",
        "Leadflow_Lead_Id__c": LEAD,
        "Email": "dana@initech.com",
        "Status": status,
        "Unqualified_Reason__c": None,
        "Description": None,
        "Owner": {"Email": "Ada@Example.com"},
        "LastModifiedBy": {"Email": "ada@example.com"},
        "LastModifiedDate": "2026-11-23T14:50:00.000+0000",
        "ConvertedOpportunityId": None,
        "Opportunity_Amount__c": None,
    }
    lead.update(fields)
    return {"event": "lead_status_changed", "lead": lead}


# --- the mappings (pure) --------------------------------------------------------------------


def test_the_shipped_mappings_load_against_the_routing_files_reason_codes() -> None:
    assert set(MAPPINGS) == {"hubspot", "salesforce", "generic"}
    with pytest.raises(CrmMappingError, match="unknown reason code 'bad_timing'"):
        load_crm_mappings(EXAMPLES / "crm", reason_codes={"not_icp": "x"})


def test_hubspot_property_changes() -> None:
    payload = [
        hubspot_event("leadflow_lead_id", LEAD),
        hubspot_event("hs_lead_status", "UNQUALIFIED", at=1),
        hubspot_event("firstname", "Dana", at=2),
        hubspot_event("hs_lead_status", "CONNECTED", at=3),
        hubspot_event("hs_lead_status", "NEW", at=4),
    ]
    link, unqualified, other, connected_accept, connected_touch, new = read_changes(
        HUBSPOT, payload
    )
    assert isinstance(link, RecordLink) and link.record_id == "1246965"
    assert link.lead.lead_id == LEAD and link.lead.field == "0.propertyValue"
    assert isinstance(unqualified, StatusChange)
    assert (unqualified.action, unqualified.reason, unqualified.value) == (
        "reject",
        "not_icp",
        "UNQUALIFIED",
    )
    assert unqualified.lead.record_id == "1246965" and unqualified.lead.lead_id is None
    assert unqualified.field == "1.propertyValue"
    assert unqualified.actor == "userId:4051200"
    assert unqualified.time is not None and unqualified.time.isoformat().startswith("2026-11-23")
    assert other == Skipped(2, "not a status change")
    assert isinstance(connected_accept, StatusChange) and isinstance(connected_touch, StatusChange)
    assert (connected_accept.action, connected_touch.action) == ("accept", "contacted")
    assert connected_touch.channel == "call"
    assert isinstance(new, Skipped) and "'NEW' is ignored" in new.why


def test_a_status_the_mapping_does_not_know_is_refused_naming_it() -> None:
    with pytest.raises(MappingError) as refused:
        read_changes(HUBSPOT, [hubspot_event("hs_lead_status", "MAYBE_LATER")])
    (problem,) = refused.value.fields
    assert problem["field"] == "0.propertyValue"
    assert "'MAYBE_LATER' is not in the hubspot mapping" in problem["message"]
    assert "NEW, OPEN, IN_PROGRESS" in problem["message"]


def test_salesforce_lead_status_with_its_reason_and_owner() -> None:
    body = salesforce_lead(
        "Closed - Not Converted", Unqualified_Reason__c="No budget", Description="Q3"
    )
    (change,) = read_changes(SALESFORCE, body)
    assert isinstance(change, StatusChange)
    assert (change.action, change.reason, change.note) == ("reject", "no_budget", "Q3")
    assert change.lead.lead_id == LEAD and change.lead.field == "lead.Leadflow_Lead_Id__c"
    assert change.owner_email == "ada@example.com"
    assert change.field == "lead.Status"
    (plain,) = read_changes(SALESFORCE, salesforce_lead("Closed - Not Converted"))
    assert isinstance(plain, StatusChange) and plain.reason == "not_icp"  # the status's own
    with pytest.raises(MappingError) as refused:
        read_changes(
            SALESFORCE, salesforce_lead("Closed - Not Converted", Unqualified_Reason__c="Other")
        )
    assert refused.value.fields[0]["field"] == "lead.Unqualified_Reason__c"
    assert "'Other'" in refused.value.fields[0]["message"]
    accept, convert = read_changes(
        SALESFORCE,
        salesforce_lead(
            "Closed - Converted", ConvertedOpportunityId="006Qy0001", Opportunity_Amount__c="9.5"
        ),
    )
    assert isinstance(convert, StatusChange) and isinstance(accept, StatusChange)
    assert (accept.action, accept.opportunity_id) == ("accept", None)
    assert (convert.opportunity_id, convert.amount) == ("006Qy0001", 9.5)


def test_generic_changes_and_what_cannot_be_read() -> None:
    one = read_changes(
        GENERIC, {"email": "Dana@Initech.com", "status": "Contacted", "channel": "email"}
    )
    (change,) = one
    assert isinstance(change, StatusChange)
    assert (change.action, change.channel, change.lead.email) == (
        "contacted",
        "email",
        "dana@initech.com",
    )
    several = read_changes(
        GENERIC,
        {"changes": [{"lead_id": LEAD, "status": "rejected", "reason": "student"}]},
    )
    assert isinstance(several[0], StatusChange) and several[0].lead.field == "changes.0.lead_id"
    with pytest.raises(MappingError) as refused:
        read_changes(
            GENERIC,
            {
                "changes": [
                    {"status": "accepted"},
                    {"lead_id": LEAD, "status": "converted", "amount": "lots"},
                    {"lead_id": "a\x00b", "status": "accepted"},
                ]
            },
        )
    fields = [problem["field"] for problem in refused.value.fields]
    assert fields == ["changes.0.lead_id | email", "changes.1.amount", "changes.2.lead_id"]


def test_a_mapping_file_is_checked_with_lines() -> None:
    text = "\n".join(
        [
            "status: state",
            "lead_id: id",
            "statuses:",
            "  Dead: {action: reject, reason: too_small}",
            "  Working: contacted",
            "  Won: {action: convert, channel: call}",
        ]
    )
    with pytest.raises(CrmMappingError) as refused:
        parse_crm_mapping(text, "mine.yaml", source="mine", reason_codes=ROUTING.reason_codes)
    message = str(refused.value)
    assert "mine.yaml line 4: statuses.Dead.reason: unknown reason code 'too_small'" in message
    assert "mine.yaml line 5: statuses.Working: contacted needs a channel" in message
    assert "mine.yaml line 6: statuses.Won.channel: convert takes no channel" in message
    with pytest.raises(CrmMappingError, match="give lead_id, email or record_id"):
        parse_crm_mapping("status: s\nstatuses: {A: accept}", "x.yaml", source="x", reason_codes={})


def test_crm_secrets_are_the_handoff_services_not_the_gateways(tmp_path: Path) -> None:
    settings = crm_settings(Settings(data_dir=tmp_path))
    assert configured_sources(settings) == {}  # the gateway leaves crm:* alone
    rules = ActionRules(ROUTING.reason_codes)
    assert set(configured_crm_sources(settings, rules)) == {"hubspot", "salesforce", "generic"}
    missing = settings.model_copy(
        update={"webhook_secrets": {"crm:pipedrive": CRM_SECRETS["crm:generic"]}}
    )
    with pytest.raises(ValueError, match="names CRM 'pipedrive'"):
        configured_crm_sources(missing, rules)


# --- over HTTP ------------------------------------------------------------------------------


@pytest.fixture
async def desk(database_url: str, tmp_path: Path) -> AsyncIterator[Desk]:
    async with open_desk(database_url, tmp_path) as opened:
        yield opened


@pytest.fixture
async def crm_pipeline(settings: Settings, clock: ManualClock) -> AsyncIterator[Runtime]:
    async with running_with_crms(settings, clock) as runtime:
        yield runtime


async def deliver(
    api: httpx.AsyncClient,
    source: str,
    payload: Any,
    webhook_id: str,
    clock: Clock,
    *,
    secret: str | None = None,
    skew: int = 0,
) -> httpx.Response:
    body = json.dumps(payload).encode()
    timestamp = int(clock.now().timestamp()) + skew
    signature = sign(secret or CRM_SECRETS[f"crm:{source}"], webhook_id, timestamp, body)
    return await api.post(
        f"/webhooks/crm/{source}",
        content=body,
        headers={
            "content-type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature,
        },
    )


async def recorded(desk: Desk) -> tuple[int, int]:
    """(actions applied, deliveries recorded)."""
    async with desk.context.sessions() as session:
        actions = await session.scalar(select(func.count()).select_from(HandoffAction))
        deliveries = await session.scalar(select(func.count()).select_from(CrmDelivery))
    return actions or 0, deliveries or 0


async def test_a_crm_status_change_is_the_reps_action(desk: Desk) -> None:
    await desk.assign()
    change = {"lead_id": LEAD, "status": "rejected", "reason": "not_icp", "changed_by": "ada"}
    response = await deliver(desk.api, "generic", change, "msg_1", desk.clock)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["success"] is True and answer["duplicate"] is False
    (result,) = answer["changes"]
    assert (result["outcome"], result["lead_id"], result["action"]) == ("applied", LEAD, "reject")
    assert result["result"]["status"] == "rejected"
    (event,) = await desk.emitted()
    assert event["id"] == f"status:{LEAD}:1:1:reject"
    data = event["data"]
    assert (data["status"], data["reason"], data["rep_id"]) == ("rejected", "not_icp", "rep-ada")
    assert (data["origin"], data["actor"]) == ("crm:generic", "generic:ada")
    (assignment,) = await desk.attempts()
    assert assignment.status == "rejected"

    redelivered = await deliver(desk.api, "generic", change, "msg_1", desk.clock)
    assert redelivered.status_code == 200
    assert redelivered.json() == {**answer, "duplicate": True}
    again = await deliver(desk.api, "generic", change, "msg_2", desk.clock)  # a new delivery
    assert again.json()["changes"][0]["outcome"] == "repeated"
    assert len(await desk.emitted()) == 1
    assert await recorded(desk) == (1, 2)


async def test_an_unknown_lead_or_status_is_a_422_and_nothing_is_recorded(desk: Desk) -> None:
    await desk.assign()
    both = {
        "changes": [
            {"lead_id": LEAD, "status": "accepted"},
            {"lead_id": "ld_nobody", "status": "accepted"},
        ]
    }
    unknown = error_of(await deliver(desk.api, "generic", both, "msg_1", desk.clock), 422)
    assert unknown["code"] == "unknown_lead"
    assert "ld_nobody" in unknown["message"] and "change 1" in unknown["message"]
    assert unknown["fields"][0]["field"] == "changes.1.lead_id"
    by_email = {"email": "nobody@initech.com", "status": "accepted"}
    no_email = error_of(await deliver(desk.api, "generic", by_email, "msg_2", desk.clock), 422)
    assert "nobody@initech.com" in no_email["message"]
    value = {"lead_id": LEAD, "status": "thinking"}
    unmapped = error_of(await deliver(desk.api, "generic", value, "msg_3", desk.clock), 422)
    assert unmapped["code"] == "unmappable_payload"
    assert unmapped["fields"][0]["field"] == "status" and "'thinking'" in unmapped["message"]
    code = {"lead_id": LEAD, "status": "rejected", "reason": "too_small"}
    bad_code = error_of(await deliver(desk.api, "generic", code, "msg_4", desk.clock), 422)
    assert "unknown reason code 'too_small'" in bad_code["message"]
    assert await recorded(desk) == (0, 0) and await desk.emitted() == []
    (assignment,) = await desk.attempts()
    assert assignment.status == "assigned"
    # the same webhook-id, now readable, is applied: a refused delivery was not recorded
    fixed = await deliver(desk.api, "generic", both["changes"][0], "msg_1", desk.clock)
    assert fixed.status_code == 200 and fixed.json()["duplicate"] is False


async def test_a_refused_change_refuses_the_whole_delivery(desk: Desk) -> None:
    await desk.assign(LEAD, status="rejected")
    await desk.assign(OTHER)
    both = {
        "changes": [
            {"lead_id": OTHER, "status": "accepted"},
            {"lead_id": LEAD, "status": "accepted"},
        ]
    }
    refused = error_of(await deliver(desk.api, "generic", both, "msg_1", desk.clock), 409)
    assert refused["code"] == "conflict"
    assert "change 1 (changes.1.status 'accepted': accept)" in refused["message"]
    assert "cycle 1 is rejected" in refused["message"]
    assert await recorded(desk) == (0, 0) and await desk.emitted() == []


async def test_leads_found_by_email_and_by_linked_record(desk: Desk) -> None:
    await desk.assign(LEAD, email="Dana@Initech.com")
    touched = {"email": "dana@initech.com", "status": "contacted", "channel": "meeting"}
    response = await deliver(desk.api, "generic", touched, "msg_1", desk.clock)
    assert response.status_code == 200, response.text
    assert response.json()["changes"][0]["lead_id"] == LEAD

    status = [hubspot_event("hs_lead_status", "OPEN")]
    unlinked = error_of(await deliver(desk.api, "hubspot", status, "hs_1", desk.clock), 422)
    assert "hubspot record '1246965' is not linked" in unlinked["message"]
    link = [hubspot_event("leadflow_lead_id", LEAD)]
    linked = await deliver(desk.api, "hubspot", link, "hs_2", desk.clock)
    assert linked.json()["changes"] == [
        {
            "index": 0,
            "outcome": "linked",
            "lead_id": LEAD,
            "status_value": None,
            "action": None,
            "detail": None,
            "result": None,
        }
    ]
    accepted = await deliver(desk.api, "hubspot", status, "hs_3", desk.clock)
    assert accepted.status_code == 200, accepted.text
    (change,) = accepted.json()["changes"]
    assert (change["outcome"], change["status_value"], change["action"]) == (
        "applied",
        "OPEN",
        "accept",
    )
    assert change["result"]["actor"] == "hubspot:userId:4051200"
    # occurredAt (14:20 UTC) is before the assignment (14:30): the action is kept after it
    assert change["result"]["at"] == "2026-11-23T14:30:00+00:00"
    async with desk.context.sessions() as session:
        record = await session.get(CrmRecord, ("hubspot", "1246965"))
    assert record is not None and record.lead_id == LEAD
    statuses = [event["data"]["status"] for event in await desk.emitted()]
    assert statuses == ["contacted", "accepted"]


async def test_the_crm_owner_must_hold_the_lead(desk: Desk) -> None:
    await desk.assign(LEAD, "rep-grace")
    theirs = error_of(
        await deliver(desk.api, "salesforce", salesforce_lead("Accepted"), "sf_1", desk.clock),
        403,
    )
    assert theirs["code"] == "not_your_lead" and "held by rep-grace" in theirs["message"]
    stranger = salesforce_lead("Accepted", Owner={"Email": "someone@example.com"})
    unknown = error_of(await deliver(desk.api, "salesforce", stranger, "sf_2", desk.clock), 422)
    assert "'someone@example.com' is not a leadflow rep" in unknown["message"]
    grace = salesforce_lead(
        "Closed - Converted",
        Owner={"Email": "grace@example.com"},
        ConvertedOpportunityId="006Qy0001",
        Opportunity_Amount__c=12000,
    )
    converted = await deliver(desk.api, "salesforce", grace, "sf_3", desk.clock)
    assert converted.status_code == 200, converted.text
    assert [change["action"] for change in converted.json()["changes"]] == ["accept", "convert"]
    events = await desk.emitted()
    assert [event["data"]["status"] for event in events] == ["accepted", "converted"]
    assert events[1]["data"]["opportunity_id"] == "006Qy0001"
    assert events[1]["data"]["amount"] == 12000
    assert events[1]["data"]["actor"] == "salesforce:ada@example.com"


async def test_signatures_sources_and_the_replay_window(desk: Desk) -> None:
    await desk.assign()
    change = {"lead_id": LEAD, "status": "accepted"}
    forged = await deliver(
        desk.api, "generic", change, "msg_1", desk.clock, secret=CRM_SECRETS["crm:hubspot"]
    )
    assert error_of(forged, 401)["code"] == "invalid_signature"
    stale = await deliver(desk.api, "generic", change, "msg_1", desk.clock, skew=-3600)
    assert "too old" in error_of(stale, 401)["message"]
    unknown = await desk.api.post("/webhooks/crm/pipedrive", json=change)
    assert error_of(unknown, 404)["code"] == "unknown_source"
    assert await recorded(desk) == (0, 0)


# --- through the pipeline -------------------------------------------------------------------


async def test_a_crm_status_change_reaches_scoring_like_the_http_action(
    crm_pipeline: Runtime,
) -> None:
    settings = crm_pipeline.settings
    async with http_client(crm_pipeline) as client:
        by_http, _ = await handed_off(crm_pipeline, client, DEMO)
        other = {
            **DEMO,
            "anonymousId": "visitor-crm",
            "messageId": "demo-2",
            "traits": {"email": "erin@initrode.com", "company": "Initrode"},
        }
        by_crm, _ = await handed_off(crm_pipeline, client, other)
        response = await client.post(f"/handoff/leads/{by_http}/reject", json={"reason": "not_icp"})
        assert response.status_code == 200, response.text
        change = {"email": "Erin@Initrode.com", "status": "rejected", "reason": "not_icp"}
        delivered = await deliver(client, "generic", change, "crm_1", crm_pipeline.clock)
        assert delivered.status_code == 200, delivered.text
        assert delivered.json()["changes"][0]["lead_id"] == by_crm
        await eventually(lambda: stage_of(client, by_http, "rejected"))
        await eventually(lambda: stage_of(client, by_crm, "rejected"))
        records = values(await read_topic(settings, LEAD_STATUS, expect=2))
        assert len(records) == 2
        http_data, crm_data = sorted(
            (record["data"] for record in records), key=lambda data: data["origin"]
        )
        assert (http_data["origin"], crm_data["origin"]) == ("api", "crm:generic")
        same = ("status", "reason", "cycle")
        assert [http_data[name] for name in same] == [crm_data[name] for name in same]

        redelivered = await deliver(client, "generic", change, "crm_1", crm_pipeline.clock)
        assert redelivered.json()["duplicate"] is True
        assert len(values(await read_topic(settings, LEAD_STATUS, expect=2))) == 2
        lead = await stage_of(client, by_crm, "rejected")
        assert lead is not None
