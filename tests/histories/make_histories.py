"""Regenerate the committed workflow histories replayed by tests/test_replay.py.

    make histories      # starts its own dev server and anvils, runs three withdrawals, writes JSON here

Run it after a change to WithdrawalWorkflow. Guard the change with `workflow.patched(...)` and first
rename the current files to `<name>_vN.json` (N the next free number): those keep proving that
workflows started before the change still replay; the regenerated files cover the new shape.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

from devstack import chain
from tests.stack import (
    Harness,
    close_harness,
    make_harness,
    native_body,
    new_sqlite_db,
    new_wallet,
    start_stack,
)

HERE = Path(__file__).resolve().parent


async def _save(h: Harness, withdrawal_id: str, name: str) -> None:
    history = await h.client.get_workflow_handle(f"withdrawal-{withdrawal_id}").fetch_history()
    data = json.loads(history.to_json())
    (HERE / f"{name}.json").write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {name}.json ({len(data['events'])} events)")  # noqa: T201


async def main() -> None:
    stack = start_stack(Path(tempfile.mkdtemp(prefix="histories-")))
    try:
        db_url = await asyncio.to_thread(new_sqlite_db, stack.tmp)
        h = await make_harness(stack, db_url)
        try:
            native = await h.request(native_body("ethereum", new_wallet()[0], "0.75"))
            await h.wait_status(native.json()["id"], {"CONFIRMED"})
            await _save(h, native.json()["id"], "native_ethereum_confirmed")

            token = await h.request(
                {
                    "user_id": "u",
                    "network": "polygon",
                    "asset": "USDT",
                    "to_address": new_wallet()[0],
                    "amount": "12.5",
                }
            )
            await h.wait_status(token.json()["id"], {"CONFIRMED"})
            await _save(h, token.json()["id"], "erc20_polygon_confirmed")

            url, usdt = stack.rpc_urls["bsc"], stack.tokens["bsc"]["USDT"]
            to = new_wallet()[0]
            await asyncio.to_thread(chain.blacklist, url, usdt, to)
            parked = await h.request(
                {"user_id": "u", "network": "bsc", "asset": "USDT", "to_address": to, "amount": "3"}
            )
            wid = parked.json()["id"]
            await h.wait_status(wid, {"NEEDS_ATTENTION"})
            await asyncio.to_thread(chain.blacklist, url, usdt, to, False)
            await h.client.get_workflow_handle(f"withdrawal-{wid}").signal("retry")
            await h.wait_status(wid, {"CONFIRMED"})
            await _save(h, wid, "needs_attention_retry_confirmed")
        finally:
            await close_harness(h)
    finally:
        stack.stop_all()


if __name__ == "__main__":
    asyncio.run(main())
