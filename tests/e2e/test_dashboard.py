"""The operator dashboard at /admin in a real browser (headless Chromium driven by Selenium) against the
engine served over real HTTP by uvicorn: login, live counts, a really parked withdrawal retried from the
page, a network paused and resumed from the page, search and detail, network health, effective settings.

Chromium and its driver are Debian's `chromium` and `chromium-driver` (.ci/run installs them); Selenium is
pointed at them explicitly and Selenium Manager is kept offline. A screenshot of the page is written to
`$TEST_ARTIFACTS_DIR/dashboard.png` (default `.data/artifacts/`).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from devstack import chain
from devstack.bootstrap import ensure_user
from settings import ROOT
from tests.stack import Harness, Stack, new_sqlite_db, new_wallet, running_harness, served_over_http

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DECIMAL = re.compile(r"^\d+(\.\d+)?$")
T = TypeVar("T")


def artifacts_dir() -> Path:
    path = Path(os.environ.get("TEST_ARTIFACTS_DIR") or ROOT / ".data" / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _require_browser() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not (p.exists() and os.access(p, os.X_OK))]
    if not missing:
        return
    message = f"{' and '.join(missing)} not found: apt-get install -y chromium chromium-driver"
    if os.environ.get("CI"):
        pytest.fail(f"CI must provide the dashboard's browser: {message}", pytrace=False)
    pytest.skip(f"no browser for the dashboard test here ({message}); CI runs it")


@pytest.fixture
async def harness(stack: Stack) -> AsyncIterator[Harness]:
    """An engine on a database of its own: its pauses and counts are this file's alone."""
    async with running_harness(stack, await asyncio.to_thread(new_sqlite_db, stack.tmp)) as h:
        yield h


@pytest.fixture
async def served(harness: Harness) -> AsyncIterator[str]:
    """The harness's app over real HTTP (see `tests.stack.served_over_http`)."""
    async with served_over_http(harness) as url:
        yield url


@pytest.fixture
async def browser(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[webdriver.Chrome]:
    _require_browser()
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never download a driver or browser
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
        "--no-first-run",
        "--disable-background-networking",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = await asyncio.to_thread(webdriver.Chrome, service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        await asyncio.to_thread(driver.quit)


async def _in_browser(fn: Callable[..., T], *args: Any) -> T:
    """Selenium blocks; the engine (API, worker) runs in this event loop and must keep running."""
    return await asyncio.to_thread(fn, *args)


def _wait(driver: WebDriver, what: Callable[[WebDriver], T], timeout: float = 30, message: str = "") -> T:
    def attempt(d: WebDriver) -> T | bool:
        try:
            return what(d)
        except StaleElementReferenceException:
            return False  # the section re-rendered under us: look again

    result: T = WebDriverWait(driver, timeout, poll_frequency=0.2).until(attempt, message)  # type: ignore[assignment]
    return result


def _dec(value: Decimal | None) -> str:
    return "—" if value is None else format(value.normalize(), "f")


def _css(driver: WebDriver, selector: str) -> list[WebElement]:
    return driver.find_elements(By.CSS_SELECTOR, selector)


def _text(driver: WebDriver, selector: str) -> str:
    found = _css(driver, selector)
    return found[0].text if found else ""


def _confirm_reason(driver: WebDriver, reason: str) -> None:
    _wait(driver, lambda d: d.find_element(By.ID, "reason-dialog").get_attribute("open") is not None)
    field = driver.find_element(By.ID, "reason-input")
    field.clear()
    field.send_keys(reason)
    driver.find_element(By.ID, "reason-ok").click()
    _wait(driver, lambda d: d.find_element(By.ID, "reason-dialog").get_attribute("open") is None)


def _click(driver: WebDriver, selector: str) -> None:
    button = _wait(driver, lambda d: next((b for b in _css(d, selector) if b.is_enabled()), False))
    assert isinstance(button, WebElement)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
    button.click()


async def _paused_networks(h: Harness, headers: dict[str, str]) -> set[str | None]:
    r = await h.http.get("/admin/queues", headers=headers)
    assert r.status_code == 200, r.text
    return {p.get("network") for p in r.json()["paused"] if not p.get("hot_wallet")}


async def test_dashboard_in_a_browser(browser: webdriver.Chrome, harness: Harness, served: str) -> None:
    h, d = harness, browser
    xss_user = f'<img id="pwned" src="x">&amp;-{uuid.uuid4().hex[:6]}'
    network, paused_network = "ethereum", "polygon"
    url, token = h.stack.rpc_urls[network], h.stack.tokens[network]["USDT"]

    # A withdrawal parked for real: its token recipient is blacklisted, so the transfer reverts in gas
    # estimation and the workflow waits in NEEDS_ATTENTION for an operator.
    to, _ = new_wallet()
    await asyncio.to_thread(chain.blacklist, url, token, to)
    r = await h.request(
        {"user_id": xss_user, "network": network, "asset": "USDT", "to_address": to, "amount": "12.5"}
    )
    assert r.status_code == 201, r.text
    wid = r.json()["id"]
    await h.wait_status(wid, {"NEEDS_ATTENTION"})

    username, password = f"dash-{uuid.uuid4().hex[:8]}", "operator-password-123"
    await ensure_user(h.db, username, password, "OPERATOR")
    api_headers = await h.operator_headers("VIEWER")

    # The page and its assets come over real HTTP with a same-origin-only policy.
    async with httpx.AsyncClient(base_url=served) as real:
        page = await real.get("/admin")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
        assert "http" not in csp and "unsafe" not in csp
        for asset, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
            a = await real.get(f"/admin/static/{asset}")
            assert a.status_code == 200 and a.headers["content-type"].startswith(kind), asset
            assert "://" not in a.text and not re.search(r"""["'(]//""", a.text), asset
        for bad in ("index.html", "..%2Fsettings.py", "nope.js"):
            refused = await real.get(f"/admin/static/{bad}")
            assert refused.status_code == 404 and refused.json()["error"]["code"] == "NOT_FOUND", bad
        assert "://" not in page.text

    paused = False
    try:
        await _in_browser(d.get, f"{served}/admin")

        def log_in() -> None:
            d.find_element(By.ID, "login-username").send_keys(username)
            d.find_element(By.ID, "login-password").send_keys(password)
            d.find_element(By.ID, "login-submit").click()
            _wait(d, lambda d: d.find_element(By.ID, "app").is_displayed(), message="not logged in")

        await _in_browser(log_in)
        stored = await _in_browser(
            d.execute_script,
            "return [sessionStorage.getItem('we.admin.session'), localStorage.length, document.cookie]",
        )
        session = json.loads(stored[0])
        assert session["role"] == "OPERATOR" and session["token"], session
        assert stored[1:] == [0, ""], "the token belongs in sessionStorage only"
        assert username in await _in_browser(_text, d, "#whoami")

        # Live counts: the parked withdrawal is counted on its network.
        cell = f'#counts-table td[data-network="{network}"][data-status="NEEDS_ATTENTION"]'
        await _in_browser(_wait, d, lambda d: _text(d, cell) == "1", 30, "parked withdrawal not counted")

        # NEEDS_ATTENTION list: the withdrawal with why and what to do.
        row = f'#attention-table tr[data-id="{wid}"]'
        await _in_browser(_wait, d, lambda d: _css(d, row), 30, "parked withdrawal not listed")
        assert await _in_browser(_text, d, f"{row} td.reason"), "no reason shown"
        assert await _in_browser(_text, d, f"{row} td.next"), "no next action shown"
        assert await _in_browser(_text, d, f"{row} td.num") == "12.5"

        # Search by user id (an HTML-looking value: shown as text, never parsed) and open the detail.
        def search_and_open() -> None:
            d.find_element(By.ID, "f-user").send_keys(xss_user)
            _wait(d, lambda d: _css(d, f'#f-network option[value="{network}"]'))
            Select(d.find_element(By.ID, "f-network")).select_by_value(network)
            d.find_element(By.ID, "search-submit").click()
            found = f'#results-table tr[data-id="{wid}"]'
            _wait(d, lambda d: _css(d, found), message="search did not find the withdrawal")
            assert [r.get_attribute("data-id") for r in _css(d, "#results-table tbody tr")] == [wid]
            assert "1 shown of 1" in _text(d, "#search-summary")
            cells = [c.text for c in _css(d, f"{found} td")]
            assert cells[7] == xss_user and cells[2] == "NEEDS_ATTENTION", cells
            assert not _css(d, "#pwned"), "data was parsed as HTML"
            _css(d, f"{found} button.link")[0].click()
            _wait(d, lambda d: _text(d, '#detail-fields dd[data-field="Status"]') == "NEEDS_ATTENTION")
            assert _text(d, '#detail-fields dd[data-field="User"]') == xss_user
            assert _text(d, '#detail-fields dd[data-field="Amount"]') == "12.5"
            _wait(d, lambda d: _css(d, "#history-table tbody tr"), message="no history")
            link = d.find_element(By.ID, "detail-temporal")
            href = link.get_attribute("href") or ""
            assert href.startswith("http") and f"withdrawal-{wid}" in href, href
            assert d.find_element(By.ID, "detail-retry").is_enabled()

        await _in_browser(search_and_open)

        # Retry from the page once the cause is fixed: the withdrawal goes on and is paid.
        await asyncio.to_thread(chain.blacklist, url, token, to, False)

        def retry() -> None:
            _click(d, f"{row} button.retry")
            _confirm_reason(d, "recipient removed from the blacklist")
            _wait(d, lambda d: "accepted" in _text(d, "#flash"), message="retry not accepted")

        await _in_browser(retry)
        final = await h.wait_status(wid, {"CONFIRMED", "FAILED", "NEEDS_ATTENTION"}, limit=120)
        assert final["status"] == "CONFIRMED", final
        assert chain.token_balance(url, token, to) == 12_500_000
        await _in_browser(_wait, d, lambda d: not _css(d, row), 30, "still listed as needing attention")

        def detail_follows() -> None:
            # The open detail follows the withdrawal to CONFIRMED and shows who retried it, and why.
            status = '#detail-fields dd[data-field="Status"]'
            _wait(d, lambda d: _text(d, status) == "CONFIRMED", message="detail did not follow the status")
            actions = [r.text for r in _css(d, '#history-table tr[data-kind="action"]')]
            assert any("retry" in a and username in a and "blacklist" in a for a in actions), actions
            assert _css(d, "#attempts-table tbody tr"), "no attempt shown"
            assert not d.find_element(By.ID, "detail-retry").is_enabled()

        await _in_browser(detail_follows)

        # Pause one network from the page, then resume it; the admin API agrees each time.
        prow = f'#pause-table tr[data-network="{paused_network}"]'

        def pause() -> None:
            nonlocal paused
            paused = True
            _click(d, f"{prow} button.pause")
            _confirm_reason(d, "node maintenance")
            _wait(d, lambda d: _text(d, f"{prow} td[data-state]") == "paused", message="not shown paused")
            assert _text(d, f"{prow} td:nth-child(3)") == "node maintenance"

        await _in_browser(pause)
        assert paused_network in await _paused_networks(h, api_headers)
        shown = f'#counts-table td[data-network="{paused_network}"][data-paused]'
        await _in_browser(_wait, d, lambda d: _text(d, shown) == "paused")

        def resume() -> None:
            _click(d, f"{prow} button.resume")
            _confirm_reason(d, "maintenance done")
            _wait(d, lambda d: _text(d, f"{prow} td[data-state]") == "running", message="not shown running")

        await _in_browser(resume)
        assert paused_network not in await _paused_networks(h, api_headers)

        # Network status: heads and the hot wallet's balance as the decimal string the API returns.
        wallet = h.config.networks[network].hot_wallets[0]
        health = (await h.http.get("/admin/health", headers=api_headers)).json()["components"]
        expected = next(w["balance"] for w in health["hot_wallets"][network] if w["address"] == wallet)
        assert DECIMAL.match(expected), expected  # nothing moves this wallet's coins any more

        def networks() -> None:
            wrow = f'#wallets-table tr[data-network="{network}"]'

            def balance(d: WebDriver) -> str:
                shown = [r for r in _css(d, wrow) if wallet in r.text]
                return shown[0].find_element(By.CSS_SELECTOR, "td[data-balance]").text if shown else ""

            _wait(d, lambda d: balance(d) == expected, message=f"hot wallet balance {expected} not shown")
            head = _text(d, f'#rpc-table tr[data-network="{network}"] td[data-head]')
            assert head.isdigit() and int(head) > 0, head

        await _in_browser(networks)

        # Effective settings, read-only, per network and asset.
        limits = h.config.networks[network].limits["ETH"]
        four_eyes = _dec(limits.four_eyes_threshold)

        def settings() -> None:
            base = f'.network-settings[data-network="{network}"]'
            _wait(d, lambda d: _css(d, f'{base} tr[data-asset="USDT"]'), message="settings not shown")
            assert _text(d, f'{base} tr[data-asset="ETH"] td[data-four-eyes]') == four_eyes
            assert _text(d, f'{base} tr[data-asset="ETH"] td:nth-child(3)') == _dec(limits.per_transaction)
            assert wallet in _text(d, base)

        await _in_browser(settings)
        # Every section got its answer from the admin API.
        shown_errors = await _in_browser(
            d.execute_script,
            "return [...document.querySelectorAll('.section-error')]"
            ".filter(e => !e.hidden).map(e => e.id + ': ' + e.textContent)",
        )
        assert shown_errors == [], shown_errors
        await _in_browser(d.execute_script, "window.scrollTo(0, 0)")
        height = await _in_browser(d.execute_script, "return document.documentElement.scrollHeight")
        await _in_browser(d.set_window_size, 1400, min(int(height) + 100, 8000))
        assert await _in_browser(d.save_screenshot, str(artifacts_dir() / "dashboard.png"))

        # No script error and no policy violation in the browser's console.
        errors = [e for e in await _in_browser(d.get_log, "browser") if e["level"] == "SEVERE"]
        assert not errors, errors

        def log_out() -> None:
            d.find_element(By.ID, "logout").click()
            _wait(d, lambda d: _text(d, "#login-error") == "Logged out.", message="not logged out")
            assert d.find_element(By.ID, "login-view").is_displayed()
            assert not d.find_element(By.ID, "app").is_displayed()
            assert d.execute_script("return sessionStorage.length") == 0
            assert not _css(d, "#results-table tbody tr"), "the previous session's data is still on the page"

        await _in_browser(log_out)

        # A VIEWER sees the same page with every action disabled (the API refuses them anyway).
        viewer = f"viewer-{uuid.uuid4().hex[:8]}"
        await ensure_user(h.db, viewer, password, "VIEWER")

        def as_viewer() -> None:
            d.find_element(By.ID, "login-username").send_keys(viewer)
            d.find_element(By.ID, "login-password").send_keys(password)
            d.find_element(By.ID, "login-submit").click()
            _wait(d, lambda d: len(_css(d, "#pause-table tbody button")) == len(h.config.networks))
            buttons = _css(d, "#pause-table button, #attention-table button.retry, button[data-op]")
            assert buttons and not [b.get_attribute("outerHTML") for b in buttons if b.is_enabled()]
            assert "(VIEWER)" in _text(d, "#whoami")

        await _in_browser(as_viewer)
    except BaseException:
        await _in_browser(d.save_screenshot, str(artifacts_dir() / "dashboard-failed.png"))
        raise
    finally:
        if paused and paused_network in await _paused_networks(h, api_headers):
            ops = await h.operator_headers("OPERATOR")
            await h.http.post(
                "/admin/queues/resume",
                json={"network": paused_network, "reason": "test cleanup"},
                headers=ops,
            )


async def test_settings_are_read_only_for_viewers_and_hold_no_secret(harness: Harness) -> None:
    h = harness
    assert (await h.http.get("/admin/settings")).status_code == 401
    r = await h.http.get("/admin/settings", headers=await h.operator_headers("VIEWER"))
    assert r.status_code == 200, r.text
    body = r.json()
    eth = body["networks"]["ethereum"]
    config = h.config.networks["ethereum"]
    assert eth["required_confirmations"] == config.required_confirmations
    assert eth["fees"]["fee_model"] == "eip1559" and body["networks"]["bsc"]["fees"]["fee_model"] == "legacy"
    assert eth["fees"]["max_fee_per_gas_cap_gwei"] == format(config.max_fee_per_gas_cap_gwei.normalize(), "f")
    assert eth["fees"]["priority_fee_gwei"] == "1.5"
    assert eth["hot_wallets"] == config.hot_wallets
    assert set(eth["assets"]) == {"ETH", "USDT", "USDC"}
    usdt = eth["assets"]["USDT"]
    assert usdt["decimals"] == 6 and usdt["per_transaction"] == "1000000"
    assert set(usdt) >= {
        "approval_threshold",
        "four_eyes_threshold",
        "min_hot_wallet_balance",
        "daily_per_user",
    }
    text = r.text
    for secret in (
        h.settings.jwt_secret.get_secret_value(),
        h.settings.keystore_password.get_secret_value(),
        h.settings.webhook_secret.get_secret_value(),
        *(k.removeprefix("0x") for k in h.keys.values()),
    ):
        assert secret not in text
    assert (await h.http.put("/admin/settings", headers=await h.operator_headers("ADMIN"))).status_code == 405
