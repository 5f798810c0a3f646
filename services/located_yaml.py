"""YAML files people edit (the rulebook, the routing file), with errors that point at a line.

A problem is reported as `rules.yaml line 14: engagement[2].when.activity: Input should be …`:
the file, the line of the deepest part of the field's path that exists in the file, and the
field. Validation is the pydantic model's; this module only reads the text and places what
goes wrong.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a file; `line` is 1-based, None when the source has no lines."""

    field: str
    message: str
    line: int | None = None


class ConfigFileError(ValueError):
    """A file that cannot be used; the message names the file, the line and the field."""

    def __init__(self, message: str, problems: Sequence[Problem] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems)


Loc = tuple[int | str, ...]
ErrorT = TypeVar("ErrorT", bound=ConfigFileError)
ModelT = TypeVar("ModelT", bound=BaseModel)


def parse_document(
    text: str, origin: str, *, what: str, error: type[ErrorT]
) -> tuple[yaml.Node, Any]:
    """The YAML text as its node tree (for line numbers) and its plain document.

    Refuses an empty file and a key given twice in one mapping (PyYAML would keep the last
    one silently, and a person meant one of them).
    """
    root, document = _compose(text, origin, error)
    if root is None or document is None:
        raise error(f"{origin}: the {what} is empty")
    duplicates = list(_duplicate_keys(root, ()))
    if duplicates:
        raise located_error(error, origin, duplicates)
    return root, document


def validate_document(
    model: type[ModelT],
    document: Any,
    *,
    origin: str,
    root: yaml.Node | None,
    error: type[ErrorT],
) -> ModelT:
    """`model` validated from `document`, every problem placed on its line in `root`."""
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        problems = [
            placed(root, tuple(each["loc"]), _message(each["msg"])) for each in exc.errors()
        ]
        raise located_error(error, origin, problems) from exc


def placed(root: yaml.Node | None, loc: Loc, message: str) -> Problem:
    return Problem(field=field_path(loc), message=message, line=line_of(root, loc))


def located_error(error: type[ErrorT], origin: str, problems: Iterable[Problem]) -> ErrorT:
    """One error listing every problem, a line each: `origin line N: field: message`."""
    listed = tuple(problems)

    def where(problem: Problem) -> str:
        return origin if problem.line is None else f"{origin} line {problem.line}"

    lines = [f"{where(problem)}: {problem.field}: {problem.message}" for problem in listed]
    return error("\n".join(lines), listed)


def field_path(loc: Loc) -> str:
    """`("engagement", 2, "when")` -> `engagement[2].when`."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def line_of(root: yaml.Node | None, loc: Loc) -> int | None:
    """The line of the deepest node on `loc` that exists in the file (1-based)."""
    if root is None:
        return None
    node, line = root, root.start_mark.line
    for part in loc:
        child = _child(node, part)
        if child is None:
            break
        line, node = child
    return int(line) + 1


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(value: str) -> str:
    """Names and versions become ids, keys and database text: no NUL or control character."""
    found = _CONTROL.search(value)
    if found:
        raise ValueError(f"must not contain control characters (found U+{ord(found[0]):04X})")
    return value


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a date that does not exist (`2026-13-01`) is a YAML
    error with its line rather than a bare ValueError."""

    def construct_yaml_timestamp(self, node: yaml.ScalarNode) -> Any:
        try:
            return super().construct_yaml_timestamp(node)
        except ValueError as exc:
            raise yaml.constructor.ConstructorError(
                None, None, f"'{node.value}' is not a date ({exc})", node.start_mark
            ) from exc


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _Loader.construct_yaml_timestamp)


def _compose(text: str, origin: str, error: type[ErrorT]) -> tuple[yaml.Node | None, Any]:
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        return root, None if root is None else loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise error(f"{origin}{where}: not valid YAML: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise error(f"{origin}: not valid YAML: {exc}") from exc
    finally:
        loader.dispose()


def _duplicate_keys(node: yaml.Node | None, loc: Loc) -> Iterator[Problem]:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = str(key.value)
            if name in seen:
                yield Problem(field_path((*loc, name)), f"'{name}' is given twice", _line(key))
            seen.add(name)
            yield from _duplicate_keys(value, (*loc, name))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _duplicate_keys(item, (*loc, index))


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _message(text: str) -> str:
    return text.removeprefix("Value error, ")


def _child(node: yaml.Node, part: int | str) -> tuple[int, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if str(key.value) == str(part):
                return key.start_mark.line, value
    elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        item = node.value[part]
        return item.start_mark.line, item
    return None
