"""Choosing a rep for an MQL (pure): the roster and the round-robin strategy."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, EmailStr, Field, model_validator

from services.config_files import load_model


class RosterError(ValueError):
    pass


class Rep(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    email: EmailStr
    active: bool = True


class Roster(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pool: str = Field(default="default", min_length=1)
    reps: tuple[Rep, ...]

    @model_validator(mode="after")
    def _unique_active(self) -> Roster:
        ids = [rep.id for rep in self.reps]
        if len(ids) != len(set(ids)):
            raise ValueError("rep ids must be unique")
        if not any(rep.active for rep in self.reps):
            raise ValueError("the roster needs at least one active rep")
        return self

    @property
    def active_reps(self) -> tuple[Rep, ...]:
        return tuple(rep for rep in self.reps if rep.active)


def round_robin(reps: tuple[Rep, ...], cursor: int) -> tuple[Rep, int]:
    """The rep whose turn it is after `cursor` assignments, and the next cursor."""
    if not reps:
        raise ValueError("no active rep to assign to")
    return reps[cursor % len(reps)], cursor + 1


def load_roster(path: Path) -> Roster:
    return load_model(path, Roster, what="roster", error=RosterError)
