"""Operator paths: NEEDS_ATTENTION → retry, cancel before broadcast, approval, waiting for funds."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid

import pytest

from devstack import chain, processes
from devstack.bootstrap import ensure_user
from models import repo
from models.domain import HistoryKind, WithdrawalStatus
from tests.invariants import assert_invariants
from tests.stack import Harness, Stack, close_harness, make_harness, native_body, new_wallet


async def _admin_token(h: Harness, role: str = "OPERATOR") -> str:
    name, password = f"op-{uuid.uuid4().hex[:8]}", "operator-password-123"
    await ensure_user(h.db, name, password, role)
    r = await h.http.post("/auth/login", json={"username": name, "password": password})
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def _cli_signal(h: Harness, withdrawal_id: str, name: str, payload: str | None) -> None:
    cmd = [
        processes.temporal_bin(),
        "workflow",
        "signal",
        "--address",
        h.stack.temporal_address,
        "--workflow-id",
        f"withdrawal-{withdrawal_id}",
        "--name",
        name,
    ]
    if payload is not None:
        cmd += ["--input", payload]
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


async def test_needs_attention_then_retry_from_the_cli_with_no_input(harness: Harness) -> None:
    network = "ethereum"
    url, token = harness.stack.rpc_urls[network], harness.stack.tokens[network]["USDT"]
    to, _ = new_wallet()
    await asyncio.to_thread(chain.blacklist, url, token, to)
    r = await harness.request(
        {"user_id": "u", "network": network, "asset": "USDT", "to_address": to, "amount": "5"}
    )
    assert r.status_code == 201, r.text
    wid = r.json()["id"]
    parked = await harness.wait_status(wid, {"NEEDS_ATTENTION"})
    # The client reads a fixed text; the operator sees what the node answered.
    assert parked["error"] == {
        "code": "EXECUTION_REVERTED",
        "message": "the transfer would fail or failed on chain",
    }
    assert "blacklisted" in (await harness.operator_view(wid))["error"]["message"]
    assert parked["tx_hash"] is None

    # A malformed signal is dropped (logged) and the workflow keeps waiting.
    await asyncio.to_thread(_cli_signal, harness, wid, "retry", "123")
    await asyncio.sleep(1.0)
    assert (await harness.status(wid))["status"] == "NEEDS_ATTENTION"
    await asyncio.to_thread(chain.blacklist, url, token, to, False)
    await asyncio.to_thread(_cli_signal, harness, wid, "retry", None)
    final = await harness.wait_status(wid, {"CONFIRMED", "FAILED"})
    assert final["status"] == "CONFIRMED" and final["error"] is None
    assert chain.token_balance(url, token, to) == 5_000_000
    history = await harness.history(wid)
    assert any(e.kind is HistoryKind.STATUS and e.status is WithdrawalStatus.NEEDS_ATTENTION for e in history)
    assert any(e.kind is HistoryKind.RETRY for e in history), history
    await assert_invariants(harness, [wid])


async def test_a_transfer_that_would_revert_parks_without_a_nonce(harness: Harness) -> None:
    """A token transfer the token refuses (a blacklisted recipient) is found before a nonce is taken:
    it parks, and the wallet's later withdrawals are not held behind it; a cancel then sends nothing."""
    network = "bsc"
    url, token = harness.stack.rpc_urls[network], harness.stack.tokens[network]["USDT"]
    wallet = harness.config.networks[network].hot_wallets[0]
    to, _ = new_wallet()
    await asyncio.to_thread(chain.blacklist, url, token, to)
    r = await harness.request(
        {"user_id": "u", "network": network, "asset": "USDT", "to_address": to, "amount": "7"}
    )
    wid = r.json()["id"]
    parked = await harness.wait_status(wid, {"NEEDS_ATTENTION"})
    assert parked["error"]["code"] == "EXECUTION_REVERTED" and parked["tx_hash"] is None, parked
    other = await harness.request(native_body(network, new_wallet()[0], "0.01"))
    assert (await harness.wait_status(other.json()["id"], {"CONFIRMED"}))["status"] == "CONFIRMED"
    async with harness.db.read() as s:
        assert [a for a in await repo.nonce_allocations(s, network, wallet) if a.withdrawal_id == wid] == []
    token_jwt = await _admin_token(harness)
    c = await harness.http.post(
        f"/admin/transactions/{wid}/cancel",
        json={"reason": "customer asked"},
        headers={"Authorization": f"Bearer {token_jwt}"},
    )
    assert c.status_code == 200 and c.json()["withdrawal"]["status"] == "CANCELLED", c.text
    final = await harness.wait_status(wid, {"CANCELLED"})
    assert final["error"]["message"] == "customer asked" and final["tx_hash"] is None
    assert chain.token_balance(url, token, to) == 0
    await assert_invariants(harness, [wid, other.json()["id"]])


async def test_cancel_in_needs_attention_fills_the_nonce_with_a_self_transfer(harness: Harness) -> None:
    """Parked holding a nonce (here: the signing key went missing after the nonce was taken): a
    cancel fills that nonce with a 0-value self-transfer, so the wallet's later nonces are mined."""
    network = "bsc"
    url = harness.stack.rpc_urls[network]
    wallet = harness.config.networks[network].hot_wallets[0]
    to, _ = new_wallet()
    with harness.signing_key_missing(network):
        wid = (await harness.request(native_body(network, to, "0.02"))).json()["id"]
        parked = await harness.wait_status(wid, {"NEEDS_ATTENTION"})
        assert parked["error"]["code"] == "SIGNER_UNAVAILABLE", parked
    # Another withdrawal takes the next nonce; it is mined once the parked one's nonce is filled.
    other = await harness.request(native_body(network, new_wallet()[0], "0.01"))
    token_jwt = await _admin_token(harness)
    c = await harness.http.post(
        f"/admin/transactions/{wid}/cancel",
        json={"reason": "customer asked"},
        headers={"Authorization": f"Bearer {token_jwt}"},
    )
    assert c.status_code == 200, c.text
    final = await harness.wait_status(wid, {"CANCELLED", "CONFIRMED"})
    assert final["status"] == "CANCELLED" and final["error"]["message"] == "customer asked"
    tx = processes.rpc(url, "eth_getTransactionByHash", [final["tx_hash"]])
    assert tx["to"].lower() == wallet.lower() and int(tx["value"], 16) == 0
    assert (await harness.wait_status(other.json()["id"], {"CONFIRMED"}))["status"] == "CONFIRMED"
    assert int(processes.rpc(url, "eth_getBalance", [to, "latest"]), 16) == 0
    await assert_invariants(harness, [wid, other.json()["id"]])


async def test_approval_approve_and_reject(harness: Harness) -> None:
    network = "polygon"
    jwt_token = await _admin_token(harness)
    auth = {"Authorization": f"Bearer {jwt_token}"}
    a_to, b_to = new_wallet()[0], new_wallet()[0]
    a = (await harness.request(native_body(network, a_to, "150"))).json()
    b = (await harness.request(native_body(network, b_to, "120"))).json()
    for w in (a, b):
        assert (await harness.wait_status(w["id"], {"AWAITING_APPROVAL"}))["status"] == "AWAITING_APPROVAL"
    # Approve and reject need APPROVER (or ADMIN): a VIEWER or an OPERATOR is refused.
    for role in ("VIEWER", "OPERATOR"):
        low = await _admin_token(harness, role=role)
        denied = await harness.http.post(
            f"/admin/transactions/{a['id']}/approve", headers={"Authorization": f"Bearer {low}"}
        )
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "FORBIDDEN", role
    approver = {"Authorization": f"Bearer {await _admin_token(harness, role='APPROVER')}"}
    # Actions the status does not allow are refused with the workflow's reason, and change nothing.
    wrong = await harness.http.post(f"/admin/transactions/{a['id']}/retry", headers=auth)
    assert wrong.status_code == 409 and wrong.json()["error"]["code"] == "INVALID_STATE", wrong.text
    assert "NEEDS_ATTENTION" in wrong.json()["error"]["message"]
    approved = await harness.http.post(f"/admin/transactions/{a['id']}/approve", headers=approver)
    assert approved.status_code == 200, approved.text
    assert approved.json()["accepted"] is True and approved.json()["withdrawal"]["id"] == a["id"]
    again = await harness.http.post(f"/admin/transactions/{a['id']}/approve", headers=approver)
    assert again.status_code == 409 and again.json()["error"]["code"] == "INVALID_STATE", again.text
    assert (
        await harness.http.post(f"/admin/transactions/{b['id']}/reject", json={}, headers=approver)
    ).status_code == 200
    assert (await harness.wait_status(a["id"], {"CONFIRMED"}))["status"] == "CONFIRMED"
    rejected = await harness.wait_status(b["id"], {"REJECTED"})
    assert rejected["error"]["code"] == "APPROVAL_REJECTED" and rejected["tx_hash"] is None
    # Once the workflow has ended, an action is refused the same way.
    late = await harness.http.post(f"/admin/transactions/{b['id']}/approve", headers=approver)
    assert late.status_code == 409 and late.json()["error"]["code"] == "INVALID_STATE", late.text
    url = harness.stack.rpc_urls[network]
    assert int(processes.rpc(url, "eth_getBalance", [b_to, "latest"]), 16) == 0
    detail = (await harness.http.get(f"/admin/transactions/{b['id']}", headers=auth)).json()
    assert {r["state"] for r in detail["reservations"]} == {"RELEASED"}
    await assert_invariants(harness, [a["id"], b["id"]])


@pytest.fixture
async def poor_harness(stack: Stack, db_url: str):  # type: ignore[no-untyped-def]
    h = await make_harness(stack, db_url, fund_wallets=False)
    try:
        yield h
    finally:
        await close_harness(h)


async def test_waiting_for_funds_then_funded_confirms_and_cancel_while_waiting(poor_harness: Harness) -> None:
    h = poor_harness
    network = "ethereum"
    url = h.stack.rpc_urls[network]
    wallet = h.config.networks[network].hot_wallets[0]
    r1 = await h.request(native_body(network, new_wallet()[0], "2"))
    r2 = await h.request(native_body(network, new_wallet()[0], "3"))
    assert r1.status_code == 201 and r1.json()["status"] == "WAITING_FOR_FUNDS", r1.text
    assert r2.json()["status"] == "WAITING_FOR_FUNDS"
    sa_query = f'WithdrawalStatus = "WAITING_FOR_FUNDS" AND ClientId = "{h.client_id}"'
    found = [wf.id async for wf in h.client.list_workflows(sa_query)]
    assert set(found) >= {f"withdrawal-{r1.json()['id']}"} or not found  # visibility is eventually consistent
    token = await _admin_token(h)
    answer = await h.http.post(
        f"/admin/transactions/{r2.json()['id']}/cancel", headers={"Authorization": f"Bearer {token}"}
    )
    # The answer shows the move the action caused, not the row as it stood when it was accepted.
    assert answer.status_code == 200 and answer.json()["withdrawal"]["status"] == "CANCELLED", answer.text
    cancelled = await h.wait_status(r2.json()["id"], {"CANCELLED"})
    assert cancelled["tx_hash"] is None
    await asyncio.to_thread(chain.set_balance, url, wallet, 10 * 10**18)
    done = await h.wait_status(r1.json()["id"], {"CONFIRMED"}, limit=60)
    assert done["status"] == "CONFIRMED"
    await assert_invariants(h, [r1.json()["id"], r2.json()["id"]])


async def test_no_private_key_in_history_database_or_api(harness: Harness) -> None:
    r = await harness.request(native_body("ethereum", new_wallet()[0], "0.02"))
    wid = r.json()["id"]
    await harness.wait_status(wid, {"CONFIRMED"})
    key_hex = next(iter(harness.keys.values()))[2:].lower()
    history = (await harness.client.get_workflow_handle(f"withdrawal-{wid}").fetch_history()).to_json()
    assert key_hex not in history.lower()
    token = await _admin_token(harness)
    detail = (
        await harness.http.get(f"/admin/transactions/{wid}", headers={"Authorization": f"Bearer {token}"})
    ).text
    assert key_hex not in detail.lower()
    async with harness.db.transaction() as s:
        dump = json.dumps([a.model_dump() for a in await repo.attempts_for(s, wid)], default=str)
    assert key_hex not in dump.lower()
    assert repr(harness.engine.signer._keys).count(key_hex) == 0


async def test_balance_is_checked_right_before_signing(harness: Harness) -> None:
    """Funds reserved at admission can leave the hot wallet before signing (an operator sweep, a
    transfer outside the engine): the withdrawal then waits in WAITING_FOR_FUNDS with nothing signed."""
    network = "polygon"
    url = harness.stack.rpc_urls[network]
    wallet = harness.config.networks[network].hot_wallets[0]
    to = new_wallet()[0]
    wid = (await harness.request(native_body(network, to, "150"))).json()["id"]  # above the threshold
    await harness.wait_status(wid, {"AWAITING_APPROVAL"})
    await asyncio.to_thread(chain.set_balance, url, wallet, 10**18)  # swept to 1 POL
    # On a chain a balance changes in a block: signing reads it at the engine's head block, so the
    # approval comes once a block after the sweep is that head (anvil_setBalance needs no block).
    swept_in = int(processes.rpc(url, "eth_blockNumber", []), 16)
    watcher = harness.engine.chains[network].watcher
    for _ in range(200):
        if watcher is not None and watcher.healthy and watcher.head > swept_in:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"the engine's head did not pass block {swept_in}")
    approve = await harness.http.post(
        f"/admin/transactions/{wid}/approve", headers=await harness.operator_headers("APPROVER")
    )
    assert approve.status_code == 200, approve.text
    waiting = await harness.wait_status(wid, {"WAITING_FOR_FUNDS", "BROADCAST", "CONFIRMED"})
    assert waiting["status"] == "WAITING_FOR_FUNDS" and waiting["tx_hash"] is None, waiting
    assert waiting["error"]["code"] == "INSUFFICIENT_HOT_WALLET_FUNDS"
    async with harness.db.read() as s:
        assert await repo.attempts_for(s, wid) == []
    await asyncio.to_thread(chain.set_balance, url, wallet, 1000 * 10**18)
    final = await harness.wait_status(wid, {"CONFIRMED", "FAILED", "NEEDS_ATTENTION"}, limit=60)
    assert final["status"] == "CONFIRMED" and final["error"] is None
    assert int(processes.rpc(url, "eth_getBalance", [to, "latest"]), 16) == 150 * 10**18
    await assert_invariants(harness, [wid])
