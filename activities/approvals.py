"""Proof of who approved: a short-lived token the API signs for one withdrawal, action, operator and
role, checked by an activity before the workflow counts the decision.

The API (which has verified the operator's JWT and role against the database) calls `issue`; the
workflow's approve/reject handlers run `ApprovalActivities.verify`. A token cannot be reused for
another withdrawal or action, and an `approve` sent from the Web UI or the CLI has none: it is
recorded and refused.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import jwt
from temporalio import activity
from temporalio.exceptions import ApplicationError

from models.domain import ApproverIdentity, ErrorCode, VerifyApprovalInput

AUDIENCE = "withdrawal-decision"
ISSUER = "withdrawal-engine-api"
DECIDING_ROLES = frozenset({"APPROVER", "ADMIN"})


def issue(secret: str, *, withdrawal_id: str, action: str, operator: str, role: str, ttl_seconds: int) -> str:
    now = datetime.now(UTC)
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": operator,
        "role": role,
        "wid": withdrawal_id,
        "act": action,
        "iat": now,
        "exp": now + timedelta(seconds=ttl_seconds),
        "jti": str(uuid.uuid4()),
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def verify(secret: str, token: str, *, withdrawal_id: str, action: str) -> ApproverIdentity:
    """The operator and role the token proves, or ApplicationError APPROVAL_UNPROVEN."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": ["exp", "iat", "sub", "jti", "wid", "act", "role"]},
        )
    except jwt.PyJWTError as e:
        raise _unproven(f"the decision's token is not valid ({type(e).__name__})") from e
    if claims["wid"] != withdrawal_id or claims["act"] != action:
        raise _unproven("the decision's token was issued for another withdrawal or action")
    if claims["role"] not in DECIDING_ROLES:
        raise _unproven(f"role {claims['role']} may not {action}")
    return ApproverIdentity(
        operator=str(claims["sub"]), role=str(claims["role"]), token_id=str(claims["jti"])
    )


def _unproven(message: str) -> ApplicationError:
    return ApplicationError(message, type=ErrorCode.APPROVAL_UNPROVEN, non_retryable=True)


class ApprovalActivities:
    def __init__(self, secret: str) -> None:
        self._secret = secret

    @activity.defn(name="verify_approval")
    async def verify(self, inp: VerifyApprovalInput) -> ApproverIdentity:
        return verify(self._secret, inp.token, withdrawal_id=inp.withdrawal_id, action=inp.action)
