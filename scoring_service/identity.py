"""Identity keys and lead ids: who an activity belongs to.

A lead's id is derived from its identity keys alone: the smallest `lead_id_for(key)` over
every key the lead holds. When an activity brings a key whose id is smaller, or names two
leads at once, the leads it names are merged into the lead with the smallest id (created if
it is new). So a person's final lead id depends on the keys their activities carried, not
on the order in which those activities arrived, the batches they came in or the workers
that applied them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from schemas.events import ActivityData


def lead_id_for(identity_key: str) -> str:
    """The id a lead holding this identity key (and none with a smaller id) has."""
    return "ld_" + hashlib.sha256(identity_key.encode()).hexdigest()[:24]


def person_id(keys: Iterable[str]) -> str:
    """The lead id of a person known by these identity keys."""
    return min(lead_id_for(key) for key in keys)


def identity_keys(data: ActivityData) -> list[str]:
    """The identity keys an activity names: email, user id, anonymous id (those it has)."""
    identity = data.identity
    keys = []
    if identity.email:
        keys.append(f"email:{identity.email.lower()}")
    if identity.user_id:
        keys.append(f"user:{identity.user_id}")
    if identity.anonymous_id:
        keys.append(f"anon:{identity.anonymous_id}")
    return keys


def target_lead(named: Iterable[str], new_keys: Iterable[str]) -> str:
    """The lead an activity belongs to: the smallest id among the leads it names and the
    ids its not-yet-known keys would give."""
    return min([*named, *(lead_id_for(key) for key in new_keys)])
