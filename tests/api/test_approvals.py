"""Approvals with proof, end to end (DESIGN §6 operator actions): the admin API signs a decision token
for the verified approver, the workflow checks it; an anonymous approve from the Web UI or the CLI is
recorded and refused; above the four-eyes threshold two distinct approvers are needed."""

from __future__ import annotations

import asyncio

from models.domain import HistoryKind, OperatorInput
from tests.stack import Harness, native_body, new_wallet
from workflows.withdrawal import WithdrawalWorkflow

NETWORK = "polygon"  # harness limits: approval above 100 native, four eyes above 500


async def _awaiting(h: Harness, amount: str) -> str:
    r = await h.request(native_body(NETWORK, new_wallet()[0], amount))
    assert r.status_code == 201, r.text
    wid: str = r.json()["id"]
    await h.wait_status(wid, {"AWAITING_APPROVAL"})
    return wid


async def test_four_eyes_needs_two_distinct_approvers(harness: Harness) -> None:
    wid = await _awaiting(harness, "600")
    alice, bob = await harness.operator_headers("APPROVER"), await harness.operator_headers("APPROVER")
    first = await harness.http.post(f"/admin/transactions/{wid}/approve", json={}, headers=alice)
    assert first.status_code == 200, first.text
    await asyncio.sleep(1)
    assert (await harness.status(wid))["status"] == "AWAITING_APPROVAL"  # one approval is not enough

    again = await harness.http.post(f"/admin/transactions/{wid}/approve", json={}, headers=alice)
    assert again.status_code == 409, again.text
    assert again.json()["error"]["code"] == "INVALID_STATE"
    assert "different approver" in again.json()["error"]["message"]

    second = await harness.http.post(f"/admin/transactions/{wid}/approve", json={}, headers=bob)
    assert second.status_code == 200, second.text
    await harness.wait_status(wid, {"CONFIRMED"})
    approvals = [e for e in await harness.history(wid) if e.kind is HistoryKind.APPROVE]
    assert len(approvals) == 2 and approvals[0].actor != approvals[1].actor
    assert approvals[0].actor and approvals[0].actor.startswith("approver-")


async def test_below_four_eyes_one_approver_suffices_and_an_operator_may_not_approve(
    harness: Harness,
) -> None:
    wid = await _awaiting(harness, "150")
    denied = await harness.http.post(
        f"/admin/transactions/{wid}/approve", json={}, headers=await harness.operator_headers("OPERATOR")
    )
    assert denied.status_code == 403, denied.text
    ok = await harness.http.post(
        f"/admin/transactions/{wid}/approve", json={}, headers=await harness.operator_headers("APPROVER")
    )
    assert ok.status_code == 200, ok.text
    await harness.wait_status(wid, {"CONFIRMED"})


async def test_an_anonymous_approve_from_the_web_ui_or_cli_is_recorded_and_refused(harness: Harness) -> None:
    wid = await _awaiting(harness, "150")
    handle = harness.client.get_workflow_handle_for(WithdrawalWorkflow.run, f"withdrawal-{wid}")
    await handle.signal(WithdrawalWorkflow.approve, OperatorInput(operator="mallory"))  # no token
    await handle.signal(WithdrawalWorkflow.approve, OperatorInput(operator="mallory", token="forged"))
    await asyncio.sleep(1.5)
    assert (await harness.status(wid))["status"] == "AWAITING_APPROVAL"
    refused = [e for e in await harness.history(wid) if e.kind is HistoryKind.REFUSED]
    assert len(refused) == 2 and all(e.action is HistoryKind.APPROVE for e in refused)
    assert not [e for e in await harness.history(wid) if e.kind is HistoryKind.APPROVE]
    # the answered form refuses too
    from temporalio.client import WorkflowUpdateFailedError

    try:
        _ = await handle.execute_update(WithdrawalWorkflow.approve_update, OperatorInput(operator="mallory"))
    except WorkflowUpdateFailedError as e:
        assert getattr(e.cause, "type", None) == "APPROVAL_UNPROVEN"
    else:
        raise AssertionError("an approve update without proof was accepted")
    # a proven reject still decides
    r = await harness.http.post(
        f"/admin/transactions/{wid}/reject",
        json={"reason": "unknown recipient"},
        headers=await harness.operator_headers("APPROVER"),
    )
    assert r.status_code == 200, r.text
    done = await harness.wait_status(wid, {"REJECTED"})
    assert done["error"]["code"] == "APPROVAL_REJECTED"
