"""The OpenAPI document is one a client generator can trust: schemathesis runs every phase and check
it has against the live engine (served by uvicorn, a real worker behind it) over the client routes,
the auth routes and the admin GET routes, and finds no 5xx, no answer outside its schema and no
status the document does not list. /api-docs works without internet: its page and assets come from
this origin, and a real browser renders the document with them.

The run is bounded (MAX_EXAMPLES per operation in the fuzzing phase, two workers) and its data is
deterministic (derandomized with a fixed seed); the coverage phase adds its boundary cases."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from schemathesis.engine import events, from_schema
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.stack import Harness, Stack, new_sqlite_db, running_harness, served_over_http

MAX_EXAMPLES = 8
SEED = 20260131
BUDGET_SECONDS = 90
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


@pytest.fixture
async def harness(stack: Stack) -> AsyncIterator[Harness]:
    """An engine on a database of its own (schemathesis creates withdrawals, users and endpoints);
    failed logins are not throttled, or the run would measure the throttle, not the schema."""
    db = await asyncio.to_thread(new_sqlite_db, stack.tmp)
    async with running_harness(stack, db, settings_overrides={"login_attempts_per_minute": 1_000_000}) as h:
        yield h


@pytest.fixture
async def served(harness: Harness) -> AsyncIterator[str]:
    """The harness's app over real HTTP (see `tests.stack.served_over_http`)."""
    async with served_over_http(harness) as url:
        yield url


# A schema-valid request the engine still refuses for a reason the document states but JSON Schema
# cannot express (checks against the configuration, the limits or a cursor's content): per operation,
# the `field` of the 422 and the codes it may carry. Any other 422 to a schema-valid request fails.
VALUE_CHECKED: dict[str, dict[str, set[str]]] = {
    "POST /withdrawal/request": {
        "to_address": {"INVALID_ADDRESS"},  # EIP-55 checksum, the zero address, engine addresses
        "amount": {"INVALID_AMOUNT", "LIMIT_EXCEEDED"},  # the asset's decimals, the limits
        "asset": {"UNSUPPORTED_ASSET"},  # an asset of another network
    },
    "POST /webhook/endpoints": {"": {"LIMIT_EXCEEDED"}},  # at most 20 endpoints per client
    "GET /admin/transactions": {
        "cursor": {"VALIDATION_ERROR"},
        "created_to": {"VALIDATION_ERROR"},  # not after created_from
        "asset": {"VALIDATION_ERROR"},  # not an asset of the network filtered on
    },
    "GET /admin/dlq/messages": {"cursor": {"VALIDATION_ERROR"}},
    "GET /admin/api-keys": {"cursor": {"VALIDATION_ERROR"}},
}


@schemathesis.check
def refusals_are_documented(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: Any
) -> None:
    """`positive_data_acceptance` takes 422 here; this check allows only the refusals above."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 422:
        return
    error = response.json().get("error", {})
    allowed = VALUE_CHECKED.get(f"{case.method.upper()} {case.operation.path}", {})
    if error.get("code") not in allowed.get(error.get("field") or "", set()):
        raise AssertionError(f"schema-valid request refused: {error}")


def _tested(ctx: Any) -> bool:
    """Client routes, auth routes and the admin GET routes (admin actions change the engine and are
    tested in tests/api/test_admin*.py)."""
    path, method = ctx.operation.path, ctx.operation.method.upper()
    if path.startswith(("/withdrawal/", "/webhook/", "/auth/")) or path == "/health":
        return True
    return path.startswith("/admin/") and method == "GET"


def _run(document: dict[str, Any], base_url: str, api_key: str, token: str) -> tuple[list[str], int]:
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "base-url": base_url,
            "request-timeout": 30,
            "workers": 2,
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
            "checks": {
                "enabled": True,
                "positive_data_acceptance": {
                    "expected-statuses": ["2xx", "401", "403", "404", "409", "422", "429"]
                },
            },
            "auth": {"openapi": {"ApiKey": {"api_key": api_key}, "Bearer": {"bearer": token}}},
        }
    )
    schema = schemathesis.openapi.from_dict(document, config=config).include(_tested)
    problems: list[str] = []
    cases = 0
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            cases += len(event.recorder.cases)
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.failure_info is not None:
                        f, sample = check.failure_info.failure, check.failure_info.code_sample
                        problems.append(f"{f.operation} [{check.name}] {f.title}: {f.message}\n{sample}")
        elif isinstance(event, events.NonFatalError):
            problems.append(f"{event.label}: {event.info.format()}")
        elif isinstance(event, events.FatalError):
            problems.append(f"fatal: {event.exception!r}")
    return problems, cases


async def test_schemathesis_finds_no_violation(harness: Harness, served: str) -> None:
    token = (await harness.operator_headers("ADMIN"))["Authorization"].removeprefix("Bearer ")
    document = (await harness.http.get("/openapi.json")).json()
    started = time.monotonic()
    problems, cases = await asyncio.to_thread(_run, document, served, harness.api_key, token)
    elapsed = time.monotonic() - started
    unique = list(dict.fromkeys(problems))
    assert not unique, f"{len(unique)} problems in {cases} cases:\n\n" + "\n\n".join(unique[:40])
    assert cases > 100, cases
    assert elapsed < BUDGET_SECONDS, elapsed


async def test_document_declares_auth_errors_and_examples(harness: Harness) -> None:
    doc = (await harness.http.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    schemes = doc["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "an API client's key",
    }
    assert schemes["Bearer"]["type"] == "http" and schemes["Bearer"]["scheme"] == "bearer"
    schemas = doc["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    envelope = schemas["ErrorEnvelope"]
    assert envelope["required"] == ["error"]
    assert set(schemas["ErrorDetail"]["required"]) == {"code", "message"}
    public = {("get", "/health"), ("post", "/auth/login")}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            where = f"{method.upper()} {path}"
            security = op.get("security")
            if (method, path) in public:
                assert security is None, where
            else:
                expected = "ApiKey" if path.startswith(("/withdrawal/", "/webhook/")) else "Bearer"
                assert security == [{expected: []}], where
                assert {"401", "403"} <= set(op["responses"]), where
            assert "503" in op["responses"], where
            for status, response in op["responses"].items():
                content = response.get("content", {}).get("application/json", {})
                if status.startswith(("4", "5")):
                    ref = content["schema"]["$ref"]
                    assert ref.endswith(("/ErrorEnvelope", "/HealthUnavailable")), (where, status)
                    if status in ("429", "503"):
                        assert response["headers"]["Retry-After"]["required"] is True, (where, status)
                elif status != "204":
                    assert content.get("schema"), (where, status)  # a declared response model
            body = op.get("requestBody")
            if body is not None:
                assert body["content"]["application/json"]["examples"], where
    # What the configuration knows is in the document: a generated client offers the networks.
    body = schemas["WithdrawalBody"]["properties"]
    assert body["network"]["enum"] == sorted(harness.config.networks)
    assert {"ETH", "BNB", "POL", "USDT", "USDC"} <= set(body["asset"]["enum"])
    request = doc["paths"]["/withdrawal/request"]["post"]
    key = next(p for p in request["parameters"] if p["name"] == "Idempotency-Key")
    assert key["required"] is True and key["in"] == "header"
    assert set(request["responses"]) >= {"200", "201", "400", "401", "403", "409", "413", "422", "429", "503"}
    withdrawal = schemas["Withdrawal"]
    assert set(withdrawal["required"]) == {
        "id",
        "status",
        "network",
        "asset",
        "amount",
        "to_address",
        "user_id",
        "client_reference",
        "tx_hash",
        "confirmations",
        "required_confirmations",
        "fee",
        "error",
        "created_at",
        "updated_at",
    }
    page = schemas["TransactionPage"]
    assert set(page["required"]) == {"items", "next_cursor", "total"}


_ASSET = re.compile(r"""(?:src|href)="([^"]+)\"""")


async def test_api_docs_serve_only_same_origin_assets(harness: Harness) -> None:
    r = await harness.http.get("/api-docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assets = _ASSET.findall(page)
    assert len(assets) >= 3, page  # the script, the stylesheet, the icon
    for url in assets:
        assert url.startswith("/") and not url.startswith("//"), url
        loaded = await harness.http.get(url)
        assert loaded.status_code == 200, url
        assert loaded.content, url
    assert "url: '/openapi.json'" in page
    assert (await harness.http.get("/openapi.json")).status_code == 200
    # Nothing but this origin may run: the one inline script is allowed by its hash.
    policy = r.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    inline = re.findall(r"<script>(.*?)</script>", page, flags=re.S)
    assert len(inline) == 1
    digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
    assert f"script-src 'self' 'sha256-{digest}'" in policy
    assert "http://" not in policy and "https://" not in policy
    # FastAPI's default (a CDN) is gone; the assets' directory serves no other path than its own.
    assert (await harness.http.get("/docs")).status_code == 404
    assert (await harness.http.get("/api-docs/static/../../settings.py")).status_code == 404


async def test_api_docs_render_in_a_browser_without_internet(
    served: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Headless Chromium with every host but this one unresolvable: the page renders the document
    (Swagger UI 5 reads OpenAPI 3.1) and the browser reports no blocked resource."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not (p.exists() and os.access(p, os.X_OK))]
    if missing:
        message = f"{' and '.join(missing)} not found: apt-get install -y chromium chromium-driver"
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide a browser: {message}", pytrace=False)
        pytest.skip(f"no browser here ({message}); CI runs it")
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never download anything
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})

    def render() -> tuple[str, str, list[dict[str, Any]]]:
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        try:
            driver.get(f"{served}/api-docs")
            WebDriverWait(driver, 30, poll_frequency=0.2).until(
                lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
            )
            title = driver.find_element(By.CSS_SELECTOR, ".information-container .title").text
            paths = " ".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
            return title, paths, driver.get_log("browser")
        finally:
            driver.quit()

    title, paths, log = await asyncio.to_thread(render)
    assert title.startswith("Withdrawal engine"), title
    assert "/withdrawal/request" in paths and "/admin/transactions" in paths
    severe = [e for e in log if e.get("level") == "SEVERE"]
    assert not severe, severe  # no script, style or fetch refused by the page's policy


@pytest.mark.parametrize("path", ["/admin/alerts", "/admin/audit", "/webhook/deliveries"])
async def test_a_cursor_of_non_ascii_digits_is_refused_not_a_server_error(
    harness: Harness, path: str
) -> None:
    """'²'.isdigit() is true but int('²') fails: a cursor must be ASCII digits (the document's pattern),
    and at most 18 of them (20 nines do not fit the database's integers)."""
    headers = (
        {"X-API-Key": harness.api_key}
        if path.startswith("/webhook/")
        else await harness.operator_headers("ADMIN")
    )
    for cursor in ("1²", "9" * 20):  # the second is too large for the database's integers
        r = await harness.http.get(path, params={"cursor": cursor}, headers=headers)
        assert r.status_code == 422, r.text
        assert r.json()["error"] == {
            "code": "VALIDATION_ERROR",
            "message": r.json()["error"]["message"],
            "field": "cursor",
        }
