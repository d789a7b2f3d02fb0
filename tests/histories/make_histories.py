"""Regenerate the committed workflow histories replayed by tests/test_replay.py.

    make histories      # starts its own dev server and anvils, runs each scenario, writes JSON here

Until the first release (docs/versioning.md) there is one workflow shape: after a change to
WithdrawalWorkflow, regenerate every history and commit them with the change. No `workflow.patched`.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

from activities import approvals
from devstack import chain, processes
from models.domain import OperatorInput
from tests.histories import SCENARIOS
from tests.stack import (
    Harness,
    close_harness,
    make_harness,
    native_body,
    new_sqlite_db,
    new_wallet,
    start_stack,
)
from workflows.withdrawal import WithdrawalWorkflow

HERE = Path(__file__).resolve().parent


async def _save(h: Harness, withdrawal_id: str, name: str) -> None:
    history = await h.client.get_workflow_handle(f"withdrawal-{withdrawal_id}").fetch_history()
    data = json.loads(history.to_json())
    (HERE / f"{name}.json").write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {name}.json ({len(data['events'])} events)")  # noqa: T201


async def _wait_attempt(h: Harness, withdrawal_id: str, purpose: str) -> None:
    from models import repo

    for _ in range(300):
        async with h.db.read() as s:
            if any(a.purpose == purpose for a in await repo.attempts_for(s, withdrawal_id)):
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {purpose} attempt for {withdrawal_id}")


async def _simple(h: Harness) -> None:
    native = await h.request(native_body("ethereum", new_wallet()[0], "0.75"))
    await h.wait_status(native.json()["id"], {"CONFIRMED"})
    await _save(h, native.json()["id"], "native_ethereum_confirmed")

    body = {"user_id": "u", "network": "polygon", "asset": "USDT", "to_address": new_wallet()[0]}
    token = await h.request(body | {"amount": "12.5"})
    await h.wait_status(token.json()["id"], {"CONFIRMED"})
    await _save(h, token.json()["id"], "erc20_polygon_confirmed")


async def _needs_attention(h: Harness) -> None:
    url, usdt = h.stack.rpc_urls["bsc"], h.stack.tokens["bsc"]["USDT"]
    to = new_wallet()[0]
    await asyncio.to_thread(chain.blacklist, url, usdt, to)
    body = {"user_id": "u", "network": "bsc", "asset": "USDT", "to_address": to, "amount": "3"}
    parked = await h.request(body)
    wid = parked.json()["id"]
    await h.wait_status(wid, {"NEEDS_ATTENTION"})
    await asyncio.to_thread(chain.blacklist, url, usdt, to, False)
    await h.client.get_workflow_handle(f"withdrawal-{wid}").signal("retry")
    await h.wait_status(wid, {"CONFIRMED"})
    await _save(h, wid, "needs_attention_retry_confirmed")


async def _cancel_after_broadcast(h: Harness) -> None:
    with h.stack.mining_paused("ethereum"):
        wid = (await h.request(native_body("ethereum", new_wallet()[0], "0.3"))).json()["id"]
        await h.wait_status(wid, {"BROADCAST"})
        handle = h.client.get_workflow_handle_for(WithdrawalWorkflow.run, f"withdrawal-{wid}")
        await handle.execute_update(WithdrawalWorkflow.cancel_update, OperatorInput(reason="fraud check"))
        await _wait_attempt(h, wid, "CANCEL")
    await h.wait_status(wid, {"CANCELLED"})
    await _save(h, wid, "cancel_after_broadcast")


async def _approvals(h: Harness) -> None:
    """Four eyes (600 is above the harness's four-eyes threshold of 500): an anonymous approve signal is
    refused, then two distinct proven approvers; one proven reject ends the other."""
    approved = (await h.request(native_body("polygon", new_wallet()[0], "600"))).json()["id"]
    rejected = (await h.request(native_body("polygon", new_wallet()[0], "120"))).json()["id"]
    for wid in (approved, rejected):
        await h.wait_status(wid, {"AWAITING_APPROVAL"})
    secret = h.settings.jwt_secret.get_secret_value()

    def proof(wid: str, action: str, who: str) -> OperatorInput:
        token = approvals.issue(
            secret, withdrawal_id=wid, action=action, operator=who, role="APPROVER", ttl_seconds=60
        )
        return OperatorInput(operator=who, token=token)

    ok = h.client.get_workflow_handle_for(WithdrawalWorkflow.run, f"withdrawal-{approved}")
    await ok.signal(WithdrawalWorkflow.approve, OperatorInput(operator="someone in the Web UI"))
    _ = await ok.execute_update(WithdrawalWorkflow.approve_update, proof(approved, "approve", "alice"))
    _ = await ok.execute_update(WithdrawalWorkflow.approve_update, proof(approved, "approve", "carol"))
    no = h.client.get_workflow_handle_for(WithdrawalWorkflow.run, f"withdrawal-{rejected}")
    await no.signal(WithdrawalWorkflow.reject, proof(rejected, "reject", "bob"))
    await h.wait_status(approved, {"CONFIRMED"})
    await h.wait_status(rejected, {"REJECTED"})
    await _save(h, approved, "approval_approved_confirmed")
    await _save(h, rejected, "approval_rejected")


async def _reorg(h: Harness) -> None:
    url = h.stack.rpc_urls["ethereum"]
    snapshot = processes.rpc(url, "evm_snapshot", [])
    wid = (await h.request(native_body("ethereum", new_wallet()[0], "0.6"))).json()["id"]
    await h.wait_status(wid, {"CONFIRMING"})
    processes.rpc(url, "evm_revert", [snapshot])  # the block with the transaction is gone
    await h.wait_status(wid, {"CONFIRMED"}, limit=120)
    await _save(h, wid, "reorg_confirmed")


async def _with(stack: Any, db_url: str, scenario: Any, **kw: Any) -> None:
    h = await make_harness(stack, db_url, **kw)
    try:
        await scenario(h)
    finally:
        await close_harness(h)


async def main() -> None:
    stack = start_stack(Path(tempfile.mkdtemp(prefix="histories-")))
    try:
        db_url = await asyncio.to_thread(new_sqlite_db, stack.tmp)
        for scenario in (_simple, _needs_attention, _cancel_after_broadcast, _approvals):
            await _with(stack, db_url, scenario)
        await _with(stack, db_url, _reorg, network_overrides={"required_confirmations": 8})
    finally:
        stack.stop_all()
    stale = {p.stem for p in HERE.glob("*.json")} - set(SCENARIOS)
    for name in sorted(stale):
        (HERE / f"{name}.json").unlink()
        print(f"removed {name}.json (no such scenario)")  # noqa: T201


if __name__ == "__main__":
    asyncio.run(main())
