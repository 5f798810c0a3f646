"""Choosing the rep for an MQL (pure): rules, the account owner, pools, strategies and turns.

`route` takes everything it decides on as plain data (the lead's facts, the routing file,
the reps' live state, the account owner, the time) and returns the decision with the turn
state it leaves; it reads no clock and no database, so the consumer and the tests give it
the same inputs and get the same answer.

**Turns are kept per rep, per pool** (stride scheduling): each rep has a pass that grows by
`1 / weight` (by 1 outside `weighted`) each time the pool gives them a lead, and the
eligible rep with the smallest pass gets the next one; among equal passes, whoever has
waited longest, then by rep id. Nobody's turn depends on the list of reps around them, so
adding, removing or pausing a rep never skips or doubles anyone else's turn: in round robin,
two reps who can both take every lead of a stretch get the same number, give or take one.
A rep who missed turns while the others went on (new, back from away, outside hours, full
or inactive) rejoins at the back of the current round, so they are not flooded with the
leads they missed, unless the pool has `catch_up: true`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from handoff_service.routing_file import QUEUE, Away, Pool, Rep, RoutingFile, RoutingRule, Strategy
from services.conditions import with_derived

Reason = Literal[
    "routed", "account_owner", "from_queue", "queued", "reassigned_after_breach", "manual"
]
"""Why the lead went where it did; `queued`: nobody could take it, it waits in the queue.
The router gives the first four; the caller relabels a reassignment or a manual one."""

SkipReason = Literal["inactive", "away", "outside_hours", "full"]

PERSONAL_EMAIL_DOMAINS = frozenset(
    {
        "aol.com",
        "gmail.com",
        "googlemail.com",
        "gmx.com",
        "gmx.de",
        "gmx.net",
        "hotmail.com",
        "hotmail.co.uk",
        "icloud.com",
        "live.com",
        "mail.com",
        "mail.ru",
        "me.com",
        "msn.com",
        "outlook.com",
        "proton.me",
        "protonmail.com",
        "qq.com",
        "t-online.de",
        "web.de",
        "yahoo.com",
        "yahoo.co.uk",
        "yahoo.fr",
        "yandex.ru",
    }
)
"""Email domains that say nothing about the lead's company: no account match on them."""


@dataclass(frozen=True)
class Lead:
    """What routing knows about an MQL's lead."""

    lead_id: str
    attributes: Mapping[str, Any] = field(default_factory=dict)
    email: str | None = None
    grade: str | None = None
    """Fit letter and engagement digit, e.g. `A1`."""
    source: str | None = None
    campaign: str | None = None
    trigger: str | None = None
    """The trigger that qualified the lead at once, e.g. `demo-request`."""


@dataclass(frozen=True)
class RepTurn:
    """A rep's place in a pool's turns: the smallest `pass_value` goes next, and among equal
    passes whoever has waited longest (the smallest `waiting_since`), then by rep id."""

    pass_value: float
    waiting_since: int
    """The pool's `dealt` count when the rep last got a lead from it, or (re)joined it."""


@dataclass(frozen=True)
class PoolTurns:
    """One pool's turns: how many leads it has dealt, `floor` (the pass of the last rep it
    served, the smallest among its reps then: a pass below it has missed turns), and each
    rep's turn."""

    dealt: int = 0
    floor: float = 0.0
    reps: Mapping[str, RepTurn] = field(default_factory=dict)


Turns = Mapping[str, PoolTurns]
"""Pool name -> its turns."""


@dataclass(frozen=True)
class RosterState:
    """The reps' live state: what the routing file cannot know."""

    open_leads: Mapping[str, int] = field(default_factory=dict)
    """Rep id -> leads assigned to them and not answered yet (accepted or rejected)."""
    away: Mapping[str, Sequence[Away]] = field(default_factory=dict)
    """Rep id -> away periods entered since the file was read (through the API)."""
    turns: Turns = field(default_factory=dict)

    def assigned(self, decision: Decision) -> RosterState:
        """The state after `decision`: the rep holds one more open lead, turns moved on."""
        if decision.rep_id is None:
            return self
        opened = {**self.open_leads, decision.rep_id: self.open(decision.rep_id) + 1}
        return replace(self, open_leads=opened, turns=decision.turns)

    def answered(self, rep_id: str) -> RosterState:
        """The state after `rep_id` accepted or rejected one of their open leads."""
        return replace(self, open_leads={**self.open_leads, rep_id: max(0, self.open(rep_id) - 1)})

    def open(self, rep_id: str) -> int:
        return self.open_leads.get(rep_id, 0)


@dataclass(frozen=True)
class Skip:
    """A rep who could not take the lead; `pool` is None for the account owner."""

    rep_id: str
    reason: SkipReason
    pool: str | None


@dataclass(frozen=True)
class Decision:
    """Where a lead goes, and why."""

    lead_id: str
    rep_id: str | None
    """None: the lead waits in the queue."""
    reason: Reason
    rule: str | None
    """The routing rule that matched; None when none did."""
    pool: str | None
    """The pool that gave the lead (after fallbacks); None for the account owner or queue."""
    strategy: Strategy | None
    tried: tuple[str, ...]
    """The pools asked, in order: the rule's, then its fallbacks."""
    skipped: tuple[Skip, ...]
    turns: Turns
    """The turn state after this decision (unchanged unless a pool gave the lead)."""

    @property
    def queued(self) -> bool:
        return self.rep_id is None


@dataclass(frozen=True)
class QueuedLead:
    lead: Lead
    queued_at: datetime
    account_owner: str | None = None
    exclude: frozenset[str] = frozenset()
    """Reps who must not get it (e.g. the one who missed its deadline)."""


@dataclass(frozen=True)
class Drained:
    decisions: tuple[Decision, ...]
    """The leads assigned, in the order they were queued."""
    waiting: tuple[QueuedLead, ...]
    """The leads nobody can take yet, still in order."""
    state: RosterState


# --- the lead's facts -----------------------------------------------------------------------


def lead_facts(lead: Lead) -> Mapping[str, Any]:
    """What routing rules see: the lead's attributes, with `email`, `email_domain`, `grade`,
    `source`, `campaign` and `trigger` when known (those given on `lead` win)."""
    facts = dict(lead.attributes)
    known = {
        "email": lead.email,
        "grade": lead.grade,
        "source": lead.source,
        "campaign": lead.campaign,
        "trigger": lead.trigger,
    }
    facts.update((name, value) for name, value in known.items() if value is not None)
    return with_derived(facts)


def account_domain(lead: Lead) -> str | None:
    """The company a lead belongs to, for account matching: its `company_domain`, else its
    email's domain unless that is a personal address (gmail.com, …)."""
    company = _domain(lead.attributes.get("company_domain"))
    if company is not None:
        return company
    email = lead.email if lead.email is not None else lead.attributes.get("email")
    if not isinstance(email, str) or "@" not in email:
        return None
    domain = _domain(email.rsplit("@", 1)[1])
    return None if domain in PERSONAL_EMAIL_DOMAINS else domain


def domain_of(value: Any) -> str | None:
    """A company's domain as account matching keys it: `https://www.Initech.com/about` ->
    `initech.com`; None for what is not a domain."""
    return _domain(value)


def _domain(value: Any) -> str | None:
    """`https://www.Initech.com/about` -> `initech.com`; None for what is not a domain."""
    if not isinstance(value, str):
        return None
    text = value.strip().casefold()
    text = text.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0].strip(".")
    text = text.removeprefix("www.")
    return text if "." in text and " " not in text else None


def matching_rule(routing: RoutingFile, facts: Mapping[str, Any]) -> RoutingRule | None:
    """The first rule whose condition the facts meet."""
    return next((rule for rule in routing.rules if rule.matches(facts)), None)


# --- who can take a lead --------------------------------------------------------------------


def unavailable(rep: Rep, state: RosterState, now: datetime) -> SkipReason | None:
    """Why `rep` cannot take a lead at `now`, or None when they can."""
    if not rep.active:
        return "inactive"
    if rep.away_at(now, state.away.get(rep.id, ())):
        return "away"
    if not rep.in_hours(now):
        return "outside_hours"
    if rep.capacity is not None and state.open(rep.id) >= rep.capacity:
        return "full"
    return None


# --- routing --------------------------------------------------------------------------------


def route(
    lead: Lead,
    routing: RoutingFile,
    state: RosterState,
    now: datetime,
    *,
    account_owner: str | None = None,
    exclude: Collection[str] = (),
) -> Decision:
    """Where `lead` goes at `now` (aware): the first matching rule; the account owner
    (`account_owner`, the rep id owning `account_domain(lead)`) if the rule allows it and
    they can take the lead; else the rule's pool by its strategy, then its fallbacks; else
    the queue. `exclude`: reps who must not get it (the one who missed the deadline).

    The account owner's lead does not use a turn: they get it as the owner, not in turn.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    rule = matching_rule(routing, lead_facts(lead))
    if rule is None:
        return _queued(lead, None, (), (), state)
    skipped: list[Skip] = []
    if rule.account_match and account_owner is not None and account_owner not in exclude:
        owner = routing.rep(account_owner)
        why = "inactive" if owner is None else unavailable(owner, state, now)
        if why is None:
            return Decision(
                lead_id=lead.lead_id,
                rep_id=account_owner,
                reason="account_owner",
                rule=rule.name,
                pool=None,
                strategy=None,
                tried=(),
                skipped=(),
                turns=state.turns,
            )
        skipped.append(Skip(account_owner, why, None))
    return _through_pools(lead, rule, routing, state, now, exclude, skipped)


def _through_pools(
    lead: Lead,
    rule: RoutingRule,
    routing: RoutingFile,
    state: RosterState,
    now: datetime,
    exclude: Collection[str],
    skipped: list[Skip],
) -> Decision:
    """The rule's pool, then its fallbacks, until one has a rep who can take the lead."""
    tried: list[str] = []
    name = rule.pool
    while name != QUEUE and name not in tried:
        tried.append(name)
        pool = routing.pools[name]
        candidates: list[Rep] = []
        for rep in routing.members(name):
            if rep.id in exclude:
                continue
            why = unavailable(rep, state, now)
            if why is None:
                candidates.append(rep)
            else:
                skipped.append(Skip(rep.id, why, name))
        if candidates:
            winner, turns = _take_turn(name, pool, candidates, state)
            return Decision(
                lead_id=lead.lead_id,
                rep_id=winner.id,
                reason="routed",
                rule=rule.name,
                pool=name,
                strategy=pool.strategy,
                tried=tuple(tried),
                skipped=tuple(skipped),
                turns={**state.turns, name: turns},
            )
        name = pool.fallback
    return _queued(lead, rule.name, tuple(tried), tuple(skipped), state)


def _queued(
    lead: Lead,
    rule: str | None,
    tried: tuple[str, ...],
    skipped: tuple[Skip, ...],
    state: RosterState,
) -> Decision:
    return Decision(
        lead_id=lead.lead_id,
        rep_id=None,
        reason="queued",
        rule=rule,
        pool=None,
        strategy=None,
        tried=tried,
        skipped=skipped,
        turns=state.turns,
    )


def _take_turn(
    name: str, pool: Pool, candidates: Sequence[Rep], state: RosterState
) -> tuple[Rep, PoolTurns]:
    """The candidate whose turn it is by the pool's strategy, and the pool's turns after."""
    turns = state.turns.get(name, PoolTurns())
    places = _rejoined(turns, pool, candidates)

    def order(rep: Rep) -> tuple[float, int, str]:
        place = places[rep.id]
        return place.pass_value, place.waiting_since, rep.id

    if pool.strategy == "load_balanced":
        winner = min(candidates, key=lambda rep: (state.open(rep.id), *order(rep)))
    else:
        winner = min(candidates, key=order)
    served = places[winner.id].pass_value
    stride = 1.0 / winner.weight if pool.strategy == "weighted" else 1.0
    places[winner.id] = RepTurn(served + stride, turns.dealt + 1)
    return winner, PoolTurns(dealt=turns.dealt + 1, floor=max(turns.floor, served), reps=places)


def _rejoined(turns: PoolTurns, pool: Pool, candidates: Iterable[Rep]) -> dict[str, RepTurn]:
    """The turns with every candidate who is new, or has missed turns, placed at the back of
    the current round: at the smallest pass among those who kept up, after those waiting.
    With `catch_up`, only new reps are placed; the others keep their missed turns."""
    places = dict(turns.reps)
    kept_up = [
        places[rep.id].pass_value
        for rep in candidates
        if rep.id in places and places[rep.id].pass_value >= turns.floor
    ]
    back_of_round = RepTurn(min(kept_up, default=turns.floor), turns.dealt)
    for rep in candidates:
        known = places.get(rep.id)
        if known is None or (known.pass_value < turns.floor and not pool.catch_up):
            places[rep.id] = back_of_round
    return places


def drain_queue(
    queued: Sequence[QueuedLead], routing: RoutingFile, state: RosterState, now: datetime
) -> Drained:
    """Route the queued leads again, oldest first (ties in the given order): those someone
    can take now are assigned (`from_queue`), the rest keep waiting, in order. A lead's
    `exclude`d reps are never given it."""
    decisions: list[Decision] = []
    waiting: list[QueuedLead] = []
    for item in sorted(queued, key=lambda each: each.queued_at):
        decision = route(
            item.lead, routing, state, now, account_owner=item.account_owner, exclude=item.exclude
        )
        if decision.queued:
            waiting.append(item)
            continue
        decision = replace(decision, reason="from_queue")
        decisions.append(decision)
        state = state.assigned(decision)
    return Drained(tuple(decisions), tuple(waiting), state)
