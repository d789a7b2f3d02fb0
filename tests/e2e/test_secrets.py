"""No secret leaks: a whole lifecycle with marker secrets (an RPC URL whose path holds a provider key,
the keystore password, the JWT secret, the hot wallet's private key), then every log line, the
workflow history, every database row and every API answer is searched for them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from sqlalchemy import text

from activities.signer import write_keystore
from settings import ROOT
from tests.stack import NETWORKS, Stack, close_harness, make_harness, native_body, new_wallet

RPC_MARKER = "rpcpathsecret" + uuid.uuid4().hex[:12]
KEYSTORE_MARKER = "keystorepw-" + uuid.uuid4().hex
JWT_MARKER = "jwtsecret-" + uuid.uuid4().hex


def _spawn_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "worker.py")], env=env, stdout=log, stderr=log, cwd=ROOT
        )


async def test_marker_secrets_appear_nowhere(stack: Stack, db_url: str, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:9/v3/{RPC_MARKER}?apikey={RPC_MARKER}"  # refused: logged, then skipped
    h = await make_harness(
        stack, db_url, start_worker=False, rpc_urls={n: [dead, stack.rpc_urls[n]] for n in NETWORKS}
    )
    h.settings.jwt_secret = type(h.settings.jwt_secret)(JWT_MARKER)
    keystore = tmp_path / "keystore"
    private_keys = [k.removeprefix("0x").lower() for k in h.keys.values()]
    for key in h.keys.values():
        write_keystore(keystore, key, KEYSTORE_MARKER, iterations=2048)
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in keystore.glob("*.json"))
    log_path = tmp_path / "worker.log"
    env = {
        **os.environ,
        "WE_ENV": "test",
        "WE_DATABASE_URL": h.settings.db_url,
        "WE_TEMPORAL_ADDRESS": h.stack.temporal_address,
        "WE_TASK_QUEUE": h.settings.task_queue,
        "WE_CONFIG_FILE": str(h.config_file()),
        "WE_KEYSTORE_DIR": str(keystore),
        "WE_KEYSTORE_PASSWORD": KEYSTORE_MARKER,
        "WE_JWT_SECRET": JWT_MARKER,
        "WE_DATA_DIR": str(tmp_path),
    }
    proc = _spawn_worker(env, log_path)
    outputs: list[str] = []
    try:
        r = await h.request(native_body("bsc", new_wallet()[0], "0.02"))
        outputs.append(r.text)
        wid = r.json()["id"]
        final = await h.wait_status(wid, {"CONFIRMED", "NEEDS_ATTENTION", "FAILED"}, limit=120)
        assert final["status"] == "CONFIRMED", final
        outputs.append(json.dumps(final))
        headers = await h.operator_headers("ADMIN")
        for path in (f"/admin/transactions/{wid}", "/admin/transactions", "/admin/stats/status", "/health"):
            outputs.append((await h.http.get(path, headers=headers)).text)
        outputs.append((await h.http.get("/withdrawal/queue/status", headers={"X-API-Key": h.api_key})).text)
        outputs.append((await h.client.get_workflow_handle(f"withdrawal-{wid}").fetch_history()).to_json())
        async with h.db.read() as s:
            for table in (
                "withdrawals",
                "tx_attempts",
                "nonce_allocations",
                "fund_reservations",
                "withdrawal_events",
            ):
                rows = (await s.exec(text(f"SELECT * FROM {table}"))).all()  # type: ignore[call-overload]  # noqa: S608
                outputs.append(json.dumps([list(map(str, row)) for row in rows]))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        await close_harness(h)
    logs = log_path.read_text(errors="replace")
    assert (
        "rpc.endpoint.unreachable" in logs and "127.0.0.1:9/***" in logs
    )  # the dead endpoint was logged, redacted
    everything = "\n".join([logs, *outputs]).lower()
    for marker in (RPC_MARKER, KEYSTORE_MARKER, JWT_MARKER, *private_keys):
        assert marker.lower() not in everything, marker[:12]
