"""Security headers on every answer, the API's own and those of the middlewares in front of it (the
rate limiter's 429, the body guard's 413).

An API answer is JSON for programs: nothing in it may run, be framed or be cached by a browser or a
proxy, so it carries a Content-Security-Policy that allows nothing. Pages (the dashboard at /admin,
the OpenAPI page at /api-docs) set their own policy and caching, which are kept; the other headers
are added where the answer has none. HSTS only in prod, where the API is behind TLS.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

API_CONTENT_SECURITY_POLICY = (
    "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
STRICT_TRANSPORT_SECURITY = "max-age=63072000; includeSubDomains"

DEFAULTS: tuple[tuple[str, str], ...] = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Content-Security-Policy", API_CONTENT_SECURITY_POLICY),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
)


class SecurityHeaders:
    """Adds `DEFAULTS` (each unless the answer set it) and, with `hsts`, Strict-Transport-Security."""

    def __init__(self, app: ASGIApp, *, hsts: bool = False) -> None:
        self.app = app
        self.hsts = hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in DEFAULTS:
                    if name not in headers:
                        headers[name] = value
                if self.hsts:
                    headers["Strict-Transport-Security"] = STRICT_TRANSPORT_SECURITY
                if "server" in headers:  # a version banner tells an attacker what to try
                    del headers["server"]
            await send(message)

        await self.app(scope, receive, send_with_headers)
