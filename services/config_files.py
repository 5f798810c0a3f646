"""Loading the YAML files people edit (rulebook, roster, SLA policy) with errors that say where."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

ModelT = TypeVar("ModelT", bound=BaseModel)


def describe(exc: ValidationError) -> str:
    """'field.path: problem; …' for every error, the way a person reads a config file."""
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or '(root)'}: {error['msg']}"
        for error in exc.errors()
    )


def read_yaml(path: Path, *, what: str, error: type[ValueError]) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from exc


def validate(model: type[ModelT], document: Any, *, origin: str, error: type[ValueError]) -> ModelT:
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise error(f"{origin}: {describe(exc)}") from exc


def load_model(path: Path, model: type[ModelT], *, what: str, error: type[ValueError]) -> ModelT:
    document = read_yaml(path, what=what, error=error)
    return validate(model, document, origin=str(path), error=error)
