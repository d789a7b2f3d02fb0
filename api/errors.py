"""One error hierarchy and one renderer: every error is {"error": {"code", "message", "field"?}}."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = structlog.get_logger()


class AppError(Exception):
    status_code = 400
    code = "BAD_REQUEST"

    def __init__(
        self, message: str, *, field: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message, self.field, self.headers = message, field, headers


def _make(name: str, status: int, code: str) -> type[AppError]:
    return type(name, (AppError,), {"status_code": status, "code": code})


Unauthorized = _make("Unauthorized", 401, "UNAUTHORIZED")
Forbidden = _make("Forbidden", 403, "FORBIDDEN")
NotFound = _make("NotFound", 404, "NOT_FOUND")
MissingIdempotencyKey = _make("MissingIdempotencyKey", 400, "MISSING_IDEMPOTENCY_KEY")
IdempotencyKeyReused = _make("IdempotencyKeyReused", 409, "IDEMPOTENCY_KEY_REUSED")
ValidationFailed = _make("ValidationFailed", 422, "VALIDATION_ERROR")
InvalidAddress = _make("InvalidAddress", 422, "INVALID_ADDRESS")
InvalidAmount = _make("InvalidAmount", 422, "INVALID_AMOUNT")
UnsupportedNetwork = _make("UnsupportedNetwork", 422, "UNSUPPORTED_NETWORK")
UnsupportedAsset = _make("UnsupportedAsset", 422, "UNSUPPORTED_ASSET")
LimitExceeded = _make("LimitExceeded", 422, "LIMIT_EXCEEDED")
Conflict = _make("Conflict", 409, "CONFLICT")
RateLimited = _make("RateLimited", 429, "RATE_LIMITED")
ServiceUnavailable = _make("ServiceUnavailable", 503, "SERVICE_UNAVAILABLE")

REFUSALS: dict[str, type[AppError]] = {c.code: c for c in (LimitExceeded, InvalidAmount, InvalidAddress)}


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if field:
        err["field"] = field
    return {"error": err}


# Body fields whose validation failures have a code of their own.
_FIELD_CODES = {"amount": "INVALID_AMOUNT", "to_address": "INVALID_ADDRESS"}
_HTTP_CODES = {
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(_: Request, exc: AppError) -> JSONResponse:
        return JSONResponse(
            error_body(exc.code, exc.message, exc.field), exc.status_code, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ())]
        field = ".".join(loc[1:]) if len(loc) > 1 else None
        code = "VALIDATION_ERROR"
        if len(loc) == 2 and loc[0] == "body" and first.get("type") != "missing":
            code = _FIELD_CODES.get(loc[1], code)
        message = str(first.get("msg", "invalid request"))
        if first.get("type") == "json_invalid":
            message, field = "request body is not valid JSON", None
        return JSONResponse(error_body(code, message, field), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "HTTP_ERROR")
        return JSONResponse(
            error_body(code, str(exc.detail)), exc.status_code, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("api.unhandled", error_type=type(exc).__name__, error=str(exc)[:300])
        return JSONResponse(
            error_body("SERVICE_UNAVAILABLE", "the service could not complete the request; retry later"),
            503,
            headers={"Retry-After": "5"},
        )
