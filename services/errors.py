"""One JSON error shape for every 4xx/5xx the HTTP API gives (`ErrorBody`), and its
declaration in the OpenAPI document (`error_responses`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException


class FieldError(BaseModel):
    field: str = Field(description="Where: `email`, `batch.3.userId`, `(body)`.")
    message: str


class ErrorDetail(BaseModel):
    code: str = Field(
        description="What went wrong, for programs: `invalid_request`, `unauthorized`, "
        "`forbidden`, `not_found`, `version_exists`, `payload_too_large`, …"
    )
    message: str = Field(description="What went wrong, for people.")
    fields: list[FieldError] = Field(
        default_factory=list, description="The fields at fault; absent when none is."
    )


class ErrorBody(BaseModel):
    """The one error shape of the HTTP API."""

    error: ErrorDetail


ERROR_DESCRIPTIONS = {
    400: "The body cannot be read",
    401: "The key is missing, unknown or revoked",
    403: "The key's role is too small for this",
    404: "Not found",
    409: "Conflicts with what is stored",
    413: "The body is too large",
    422: "A field, parameter or body is invalid; `fields` names each",
    503: "The broker did not acknowledge in time: retry (`Retry-After`)",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route that may answer these statuses, each with the error shape."""
    return {
        status: {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[status]}
        for status in statuses
    }


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        fields: Sequence[dict[str, str]] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = list(fields)
        self.headers = headers


def field_errors(errors: Sequence[Any], *, prefix: Sequence[str] = ()) -> list[dict[str, str]]:
    """pydantic errors as [{"field": "traits.email", "message": ...}], without body/query."""
    result = []
    for error in errors:
        location = [str(part) for part in error["loc"] if part not in ("body", "query", "path")]
        result.append(
            {"field": ".".join([*prefix, *location]) or "(body)", "message": error["msg"]}
        )
    return result


def invalid(exc: ValidationError | RequestValidationError) -> ApiError:
    fields = field_errors(exc.errors())
    names = ", ".join(sorted({field["field"] for field in fields}))
    return ApiError(422, "invalid_request", f"invalid fields: {names}", fields=fields)


def error_body(error: ApiError) -> dict[str, Any]:
    detail = ErrorDetail(
        code=error.code,
        message=error.message,
        fields=[FieldError.model_validate(field) for field in error.fields],
    )
    return ErrorBody(error=detail).model_dump(mode="json", exclude_defaults=True)


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return JSONResponse(error_body(exc), status_code=exc.status, headers=exc.headers)

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        error = invalid(exc)
        return JSONResponse(error_body(error), status_code=error.status)

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        error = ApiError(exc.status_code, "http_error", str(exc.detail))
        return JSONResponse(error_body(error), status_code=exc.status_code, headers=exc.headers)

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
