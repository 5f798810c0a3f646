"""One JSON error shape for every 4xx/5xx the HTTP API gives."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException


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
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.fields:
        body["fields"] = error.fields
    return {"error": body}


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
