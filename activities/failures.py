"""How activities fail: a named `ApplicationError` per `ErrorCode`, retryable only when the cause is
transient (the workflow's retry policy then retries it); definite failures are non-retryable."""

from __future__ import annotations

from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from models.errors import ErrorCode


def fail(code: ErrorCode, message: str, *, retryable: bool = False) -> ApplicationError:
    """A retryable failure is an expected, transient one (a node down, fees above the cap, a proof
    not yet deep enough): BENIGN, so the SDK keeps it out of error logs (the engine logs its own event)."""
    category = ApplicationErrorCategory.BENIGN if retryable else ApplicationErrorCategory.UNSPECIFIED
    return ApplicationError(message, type=code.value, non_retryable=not retryable, category=category)


def rpc_down(e: Exception) -> ApplicationError:
    """No node answered: retryable (a resend is the same signed bytes, so retrying is safe)."""
    return fail(ErrorCode.RPC_UNAVAILABLE, str(e)[:500], retryable=True)
