"""API keys (SHA-256 hashed, compared in constant time), passwords (bcrypt) and JWTs."""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import bcrypt
import jwt

API_KEY_PREFIX = "we_"


def generate_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api_key_matches(key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_api_key(key), stored_hash)


def hash_password(password: str) -> str:
    return bcrypt.hashpw(password.encode()[:72], bcrypt.gensalt()).decode()


def verify_password(password: str, stored: str) -> bool:
    try:
        return bcrypt.checkpw(password.encode()[:72], stored.encode())
    except ValueError:
        return False


@functools.cache
def dummy_password_hash() -> str:
    """A hash of a random password at the same cost as real ones: a login for an unknown (or
    disabled) user verifies against it, so it answers in the same time as a wrong password."""
    return hash_password(secrets.token_urlsafe(24))


# Operator sessions. The approval tokens of `activities.approvals` share the secret but not the
# audience, so neither kind of token is accepted in place of the other.
JWT_ISSUER = "withdrawal-engine-api"
JWT_AUDIENCE = "withdrawal-engine-admin"
_JWT_LEEWAY_SECONDS = 5  # clock skew between API processes


def issue_jwt(subject: str, role: str, secret: str, ttl_seconds: int) -> str:
    now = datetime.now(UTC)
    claims = {
        "iss": JWT_ISSUER,
        "aud": JWT_AUDIENCE,
        "sub": subject,
        "role": role,
        "iat": now,
        "exp": now + timedelta(seconds=ttl_seconds),
        "jti": str(uuid.uuid4()),
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def decode_jwt(token: str, secret: str) -> dict[str, Any]:
    """The claims of a valid operator token; jwt.PyJWTError otherwise. The `role` claim is what the
    user had at login: callers re-read the user's current role and active flag."""
    return jwt.decode(
        token,
        secret,
        algorithms=["HS256"],
        audience=JWT_AUDIENCE,
        issuer=JWT_ISSUER,
        leeway=_JWT_LEEWAY_SECONDS,
        options={"require": ["iss", "aud", "sub", "iat", "exp", "jti"]},
    )
