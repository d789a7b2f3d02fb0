"""One error hierarchy and one renderer: every error is {"error": {"code", "message", "field"?}}."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.errors import ErrorCode

log = structlog.get_logger()


class AppError(Exception):
    """An error answered to the client: an HTTP status, a code of `ErrorCode`, a fixed message."""

    status_code = 400
    code = ErrorCode.BAD_REQUEST

    def __init__(
        self, message: str, *, field: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message, self.field, self.headers = message, field, headers


class Unauthorized(AppError):
    status_code, code = 401, ErrorCode.UNAUTHORIZED


class Forbidden(AppError):
    status_code, code = 403, ErrorCode.FORBIDDEN


class NotFound(AppError):
    status_code, code = 404, ErrorCode.NOT_FOUND


class MissingIdempotencyKey(AppError):
    status_code, code = 400, ErrorCode.MISSING_IDEMPOTENCY_KEY


class IdempotencyKeyReused(AppError):
    status_code, code = 409, ErrorCode.IDEMPOTENCY_KEY_REUSED


class Conflict(AppError):
    status_code, code = 409, ErrorCode.CONFLICT


class InvalidState(AppError):
    """An operator action the withdrawal's current status does not allow (the workflow's reason)."""

    status_code, code = 409, ErrorCode.INVALID_STATE


class ValidationFailed(AppError):
    status_code, code = 422, ErrorCode.VALIDATION_ERROR


class InvalidAddress(AppError):
    status_code, code = 422, ErrorCode.INVALID_ADDRESS


class InvalidAmount(AppError):
    status_code, code = 422, ErrorCode.INVALID_AMOUNT


class UnsupportedNetwork(AppError):
    status_code, code = 422, ErrorCode.UNSUPPORTED_NETWORK


class UnsupportedAsset(AppError):
    status_code, code = 422, ErrorCode.UNSUPPORTED_ASSET


class LimitExceeded(AppError):
    status_code, code = 422, ErrorCode.LIMIT_EXCEEDED


class RateLimited(AppError):
    status_code, code = 429, ErrorCode.RATE_LIMITED


class ServiceUnavailable(AppError):
    status_code, code = 503, ErrorCode.SERVICE_UNAVAILABLE


# A withdrawal REJECTED at admission is answered with the refusal its error code names.
REFUSALS: dict[str, type[AppError]] = {
    c.code: c for c in (LimitExceeded, InvalidAmount, InvalidAddress, UnsupportedNetwork, UnsupportedAsset)
}


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if field:
        err["field"] = field
    return {"error": err}


# Body fields whose validation failures have a code of their own.
_FIELD_CODES = {"amount": ErrorCode.INVALID_AMOUNT, "to_address": ErrorCode.INVALID_ADDRESS}
_HTTP_CODES = {
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
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
        code = ErrorCode.VALIDATION_ERROR
        if len(loc) == 2 and loc[0] == "body" and first.get("type") != "missing":
            code = _FIELD_CODES.get(loc[1], code)
        message = str(first.get("msg", "invalid request"))
        if first.get("type") == "json_invalid":
            message, field = "request body is not valid JSON", None
        return JSONResponse(error_body(code, message, field), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, ErrorCode.BAD_REQUEST)
        return JSONResponse(
            error_body(code, str(exc.detail)), exc.status_code, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("api.unhandled", error_type=type(exc).__name__, error=str(exc)[:300])
        return JSONResponse(
            error_body(
                ErrorCode.SERVICE_UNAVAILABLE, "the service could not complete the request; retry later"
            ),
            503,
            headers={"Retry-After": "5"},
        )
