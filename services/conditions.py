"""The condition vocabulary on values, shared by the rulebook and the routing file.

A condition block (`if:` in a rulebook, `when:` in a routing rule) names values, such as a
lead's attributes, and the test each must pass: a value, a list, `{min, max}`,
`{contains}`, `{matches}` (RE2), `{present}`, `{not_in}`, `{within_months}`. Conditions are
compiled once, when their file is loaded, into plain closures, because matching runs for
every activity on scoring's hot path.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Annotated, Any

import re2
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    model_validator,
)


class StrictModel(BaseModel):
    """What a person writes in a config file: unknown keys are refused, values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


Check = Callable[[Any], bool]


def _scalar(value: Any) -> Any:
    if isinstance(value, str | int | float | bool):
        return value
    raise ValueError("expected a text, number or true/false value")


Scalar = Annotated[Any, AfterValidator(_scalar)]


def _as_tuple(value: Any) -> Any:
    """Lets a person write one value where a list is allowed: `form: demo-request`."""
    return (value,) if isinstance(value, str | int | float | bool) else value


Texts = Annotated[tuple[str, ...], BeforeValidator(_as_tuple)]


TextSearch = Callable[[str], bool]


def _re2_options() -> re2.Options:
    options = re2.Options()
    options.case_sensitive = False
    options.never_capture = True  # only whether a pattern is found matters
    options.log_errors = False  # a refused pattern is reported with its field, not on stderr
    return options


_RE2_OPTIONS = _re2_options()


def compile_regex(pattern: str) -> TextSearch:
    """A regular expression from a rule, RE2 syntax and without case, as `found(text)`.

    RE2 runs in time linear in the text whatever the pattern, so a rule such as
    `^(a+)+$` cannot stall scoring as it would with backtracking (Python's `re`). What only
    backtracking can do (backreferences, lookaround) is refused when the file is read.
    """
    try:
        search = re2.compile(pattern, _RE2_OPTIONS).search
    except re2.error as exc:
        raise ValueError(
            "not a valid regular expression (RE2 syntax: no backreferences or lookaround): "
            + _re2_reason(exc)
        ) from exc

    def found(text: str) -> bool:
        # bytes: RE2 needs no offsets back in characters; a lone surrogate (valid in JSON)
        # passes as bytes that match no character instead of failing to encode
        return search(text.encode("utf-8", "surrogatepass")) is not None

    return found


def _re2_reason(exc: Exception) -> str:
    reason = exc.args[0] if exc.args else exc
    return reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)


def _regex(pattern: str | None) -> str | None:
    if pattern is not None:
        compile_regex(pattern)
    return pattern


Regex = Annotated[str, AfterValidator(_regex)]


def value_key(value: Any) -> tuple[str, Any] | None:
    """How two values compare for `equals`/`in`: text ignores case and surrounding spaces."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", float(value))
    if isinstance(value, str):
        return ("s", value.strip().casefold())
    return None


def as_number(value: Any) -> float | None:
    """A number, also from form text such as "1,200"; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value.strip().replace(",", "").replace("_", ""))
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def is_present(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, list | dict | tuple):
        return bool(value)
    return True


_TIMELINE = re.compile(
    r"(?P<low>\d+(?:\.\d+)?)\s*(?:(?:-|\u2013|\u2014|to)\s*(?P<high>\d+(?:\.\d+)?))?\s*"
    r"(?P<unit>day|week|month|quarter|year|yr|mo)s?\b"
)
_TIMELINE_NOW = ("now", "immediately", "asap", "today", "this week", "this month")
_TIMELINE_OPEN = re.compile(r"\+|more than|over|longer than|>|after|not sure|no plan|unknown")
_MONTHS_PER = {"day": 1 / 30, "week": 7 / 30, "month": 1.0, "mo": 1.0, "quarter": 3.0}


def timeline_months(value: Any) -> float | None:
    """The latest month a stated purchase timeline reaches, e.g. "3-6 months" -> 6.

    Numbers are months. Text like "0-3 months", "within 2 quarters", "1 year" or "immediately"
    is understood; open-ended or unclear answers ("6+ months", "not sure") give None.
    """
    number = as_number(value)
    if number is not None:
        return number
    if not isinstance(value, str):
        return None
    text = value.strip().casefold()
    if any(word in text for word in _TIMELINE_NOW):
        return 0.0
    if _TIMELINE_OPEN.search(text):
        return None
    found = _TIMELINE.search(text)
    if found is None:
        return None
    high = float(found["high"] or found["low"])
    unit = found["unit"]
    return high * (12.0 if unit in ("year", "yr") else _MONTHS_PER[unit])


class Condition(StrictModel):
    """Tests on one value; every test given must hold.

    Shorthand: a plain value means `equals`, a list means `in`. Text compares without case.
    A missing or empty value satisfies only `present: false`.
    """

    equals: Scalar | None = None
    in_: tuple[Scalar, ...] | None = Field(default=None, alias="in")
    not_in: tuple[Scalar, ...] | None = None
    min: float | None = None
    max: float | None = None
    contains: Texts | None = None
    matches: Regex | None = None
    present: bool | None = None
    within_months: float | None = Field(default=None, ge=0)

    _holds: Check = PrivateAttr()

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, list | tuple):
            return {"in": data}
        if isinstance(data, str | int | float | bool):
            return {"equals": data}
        return data

    @model_validator(mode="after")
    def _coherent(self) -> Condition:
        if not self.model_fields_set:
            raise ValueError(
                "give at least one test: equals, in, not_in, min, max, contains, matches, "
                "present or within_months"
            )
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min must not be above max")
        return self

    def model_post_init(self, context: Any, /) -> None:
        self._holds = _all_of_value(self.present, tuple(self._build_checks()))

    def predicate(self) -> Check:
        return self._holds

    def holds(self, value: Any) -> bool:
        return self._holds(value)

    def _build_checks(self) -> Iterator[Check]:
        if self.equals is not None:
            wanted = value_key(self.equals)
            yield lambda value: value_key(value) == wanted
        if self.in_ is not None:
            allowed = frozenset(value_key(item) for item in self.in_)
            yield lambda value: value_key(value) in allowed
        if self.not_in is not None:
            refused = frozenset(value_key(item) for item in self.not_in)
            yield lambda value: value_key(value) not in refused
        yield from self._number_checks()
        if self.contains is not None:
            needles = tuple(needle.casefold() for needle in self.contains)
            yield lambda value: isinstance(value, str) and contains_any(value, needles)
        if self.matches is not None:
            found = compile_regex(self.matches)
            yield lambda value: isinstance(value, str) and found(value)
        if self.within_months is not None:
            limit = self.within_months
            yield lambda value: (months := timeline_months(value)) is not None and months <= limit

    def _number_checks(self) -> Iterator[Check]:
        low, high = self.min, self.max
        if low is not None:
            yield lambda value: (number := as_number(value)) is not None and number >= low
        if high is not None:
            yield lambda value: (number := as_number(value)) is not None and number <= high


def _all_of_value(wanted_presence: bool | None, checks: tuple[Check, ...]) -> Check:
    def holds(value: Any) -> bool:
        present = is_present(value)
        if wanted_presence is not None and present != wanted_presence:
            return False
        if not present:
            return not checks
        return all(check(value) for check in checks)

    return holds


def contains_any(text: str, needles: tuple[str, ...]) -> bool:
    folded = text.casefold()
    return any(needle in folded for needle in needles)


Conditions = dict[str, Condition]


AttributesCheck = Callable[[Mapping[str, Any]], bool]


def all_conditions(conditions: Mapping[str, Condition]) -> AttributesCheck:
    """One predicate over a mapping of values: every named value meets its condition."""
    pairs = tuple((name, condition.predicate()) for name, condition in conditions.items())

    def holds(values: Mapping[str, Any]) -> bool:
        # a loop rather than all(<generator>): this runs per rule per activity
        for name, check in pairs:  # noqa: SIM110
            if not check(values.get(name)):
                return False
        return True

    return holds


def with_derived(attributes: Mapping[str, Any]) -> Mapping[str, Any]:
    """Adds `email_domain` (from `email`) unless the attributes already carry one."""
    email = attributes.get("email")
    if "email_domain" in attributes or not isinstance(email, str) or "@" not in email:
        return attributes
    return {**attributes, "email_domain": email.rsplit("@", 1)[1].strip().lower()}
