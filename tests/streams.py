"""Realistic activity streams for order-independence and fault tests.

People browse anonymously, identify with a user id and an e-mail address (some personal,
which the example rulebook disqualifies), come back on a second device, click e-mails,
download content, attend webinars and request demos. Events of one person carry different
identity keys, so on `lead.activity` they land on different partitions and can be applied in
any order; the stream also sends some of each person's facts late, as real trackers do.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import Row

from schemas.events import ActivityType, Identity
from scoring_service.models import Lead
from services.gateway.clean import activity_event

START = datetime(2026, 11, 16, 8, tzinfo=UTC)
INDUSTRIES = ("software", "fintech", "retail", "healthcare technology", "education")
TITLES = ("VP Marketing", "Sales Manager", "Growth Lead", "Engineer", "Student Intern")
PAGES = ("/pricing", "/product", "/features", "/blog/scoring", "/careers", "/")


@dataclass(frozen=True)
class StreamEvent:
    event_id: str
    time: datetime
    kind: ActivityType
    identity: Identity
    properties: dict[str, Any]
    attributes: dict[str, Any]

    def encoded(self) -> tuple[bytes, bytes]:
        """(Kafka key, CloudEvent JSON) as the gateway would produce them."""
        event = activity_event(
            event_id=self.event_id,
            source="test/stream",
            time=self.time,
            identity=self.identity,
            activity_type=self.kind,
            event_name=self.kind.value,
            properties=self.properties,
            attributes=self.attributes,
            context={},
            channel="test:stream",
            received_at=self.time,
        )
        return self.identity.key().encode(), event.model_dump_json().encode()


def person_events(rng: random.Random, n: int, days: int = 5) -> list[StreamEvent]:
    """One person's activities in event-time order."""
    events: list[StreamEvent] = []
    t = START + timedelta(minutes=rng.randrange(days * 24 * 60))
    anon, second_device = f"anon-{n}", f"anon-{n}-b"
    user = f"user-{n}"
    domain = "gmail.com" if rng.random() < 0.2 else f"corp{n % 37}.example"
    email = f"person{n}@{domain}"

    def add(kind: ActivityType, identity: Identity, minutes: float, **properties: Any) -> None:
        nonlocal t
        t += timedelta(minutes=minutes)
        attributes = properties.pop("attributes", {})
        events.append(StreamEvent(f"s{n}-{len(events)}", t, kind, identity, properties, attributes))

    for _ in range(rng.randrange(1, 5)):
        add(
            ActivityType.PAGE_VIEW,
            Identity(anonymous_id=anon),
            rng.uniform(0.5, 30),
            url=f"https://example.com{rng.choice(PAGES)}",
        )
    traits = {
        "company": f"Company {n % 37}",
        "industry": rng.choice(INDUSTRIES),
        "company_size": rng.choice((8, 150, 800, 6000)),
        "job_title": rng.choice(TITLES),
        "country": rng.choice(("US", "DE", "BR", "GB")),
    }
    add(
        ActivityType.IDENTIFY,
        Identity(anonymous_id=anon, user_id=user, email=email),
        rng.uniform(1, 10),
        attributes=traits,
    )
    if rng.random() < 0.4:  # a second device: anonymous first, then known
        add(
            ActivityType.PAGE_VIEW,
            Identity(anonymous_id=second_device),
            rng.uniform(60, 600),
            url="https://example.com/pricing",
        )
        add(
            ActivityType.IDENTIFY,
            Identity(anonymous_id=second_device, email=email),
            rng.uniform(1, 5),
        )
    for _ in range(rng.randrange(0, 4)):
        add(
            ActivityType.EMAIL_CLICK,
            Identity(email=email),
            rng.uniform(60, 2000),
            url="https://example.com/webinar",
        )
    if rng.random() < 0.5:
        add(
            ActivityType.CONTENT_DOWNLOAD,
            Identity(user_id=user),
            rng.uniform(10, 500),
            content="scoring-guide",
        )
    if rng.random() < 0.3:
        add(ActivityType.WEBINAR_ATTEND, Identity(email=email), rng.uniform(60, 900))
    if rng.random() < 0.25:
        add(
            ActivityType.FORM_SUBMIT,
            Identity(user_id=user),
            rng.uniform(5, 300),
            form="demo-request",
        )
    return events


def stream(people: int, seed: int = 7) -> list[StreamEvent]:
    """Every person's activities, in event-time order."""
    rng = random.Random(seed)
    events = [event for n in range(people) for event in person_events(rng, n)]
    return sorted(events, key=lambda event: (event.time, event.event_id))


def arrival_order(
    events: list[StreamEvent], seed: int, late_share: float = 0.2
) -> list[StreamEvent]:
    """The same events as they might arrive: mostly in time order, a share of them late."""
    rng = random.Random(seed)
    late_ids = {event.event_id for event in events if rng.random() < late_share}
    on_time = [event for event in events if event.event_id not in late_ids]
    late = [event for event in events if event.event_id in late_ids]
    rng.shuffle(late)
    merged = list(on_time)
    for event in late:
        merged.insert(rng.randrange(len(merged) + 1), event)
    return merged


class LeadView(NamedTuple):
    """What a user sees of a live lead, without processing-time details (timestamps, cycle
    numbers, the ids events were announced under): what must not depend on scheduling."""

    email: str | None
    score: float
    fit: float
    engagement: float
    grade: str | None
    disqualified_by: str | None
    stage: str
    source: str | None
    attributes: dict[str, Any]
    mql_stands: bool

    @classmethod
    def of(cls, lead: Lead | Row[Any]) -> LeadView:
        """From a `Lead`, or a row of `select(Lead.__table__)`."""
        return cls(
            lead.email,
            lead.score,
            lead.fit,
            lead.engagement,
            lead.grade,
            lead.disqualified_by,
            lead.stage,
            lead.source,
            lead.attributes,
            lead.mql_event_id is not None,
        )
