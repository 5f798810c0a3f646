"""The layers of the code, read from its imports (with `ast`, so nothing is imported to check).

- `schemas/` (the event contracts) imports no other leadflow package;
- `services/` is the shared runtime and the ingest gateway: it imports no service package,
  except its launch layer, `services/launch/`, the one place that knows every service;
- service packages never import each other;
- nothing outside `services/launch/` imports it.

Imports inside functions and under `TYPE_CHECKING` count too: they are dependencies all the same.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from services.launch.runtime import PART_NAMES, PARTS

ROOT = Path(__file__).resolve().parent.parent
PLATFORM = ("services", "schemas")
LAUNCH = "services.launch"
# Every other top-level package is a service; a new one is checked as soon as it exists.
SERVICES = tuple(
    sorted(
        path.parent.name
        for path in ROOT.glob("*/__init__.py")
        if path.parent.name not in (*PLATFORM, "tests")
    )
)


@dataclass(frozen=True)
class Import:
    module: str
    """The importing module, dotted."""
    where: str
    """`path:line` of the import statement."""
    target: str
    """What is imported, dotted; `from a import b` gives `a.b`, as `b` may be a module."""

    @property
    def package(self) -> str:
        return self.target.split(".")[0]

    def within(self, prefix: str) -> bool:
        return self.target == prefix or self.target.startswith(prefix + ".")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def imports_of(path: Path) -> Iterator[Import]:
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, where, alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `from . import x`, `from ..y import z`
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield Import(module, where, f"{base}.{alias.name}")


def all_imports() -> list[Import]:
    found = [
        each
        for package in (*PLATFORM, *SERVICES)
        for path in sorted((ROOT / package).rglob("*.py"))
        for each in imports_of(path)
    ]
    modules = {each.module for each in found}
    # The walk must see the code it guards, or every rule below would pass on nothing.
    assert {"services.launch.runtime", "services.app", "schemas.events"} <= modules
    assert {f"{service}.part" for service in SERVICES} <= modules
    return found


def refuse(offending: list[Import], rule: str) -> None:
    lines = [f"{found.where}: {found.module} imports {found.target}" for found in offending]
    assert not lines, f"{rule}:\n" + "\n".join(lines)


def test_the_services_are_found() -> None:
    assert {"scoring_service", "handoff_service", "sla_monitor"} <= set(SERVICES)


def test_schemas_import_no_other_leadflow_package() -> None:
    refuse(
        [
            found
            for found in all_imports()
            if is_within(found.module, "schemas") and found.package in ("services", *SERVICES)
        ],
        "schemas/ is the contract every package builds on; it imports no other leadflow code",
    )


def test_only_the_launch_layer_imports_service_packages() -> None:
    refuse(
        [
            found
            for found in all_imports()
            if is_within(found.module, "services")
            and not is_within(found.module, LAUNCH)
            and found.package in SERVICES
        ],
        "only services/launch/ may import a service package; "
        "the rest of services/ is the shared runtime and the gateway",
    )


def test_service_packages_never_import_each_other() -> None:
    refuse(
        [
            found
            for found in all_imports()
            if found.module.split(".")[0] in SERVICES
            and found.package in SERVICES
            and not is_within(found.module, found.package)
        ],
        "services learn about each other from events only; a service package imports no other",
    )


def test_only_the_launch_layer_imports_itself() -> None:
    refuse(
        [
            found
            for found in all_imports()
            if found.within(LAUNCH) and not is_within(found.module, LAUNCH)
        ],
        "nothing outside services/launch/ may import it (it imports every service)",
    )


def test_every_service_hands_over_its_part() -> None:
    """The launch table runs each service package's own `part.build_part`, and the gateway's."""
    builders = {build.__module__ for build in PARTS.values()}
    assert builders == {"services.gateway.part", *(f"{service}.part" for service in SERVICES)}
    assert all(build.__name__ == "build_part" for build in PARTS.values())
    assert PART_NAMES == ("gateway", "scoring", "handoff", "sla")
