"""What one status move costs the worker: `repo.transition` in a write transaction of its own, as
`record_transition` runs it, on a scratch database (SQLite by default, `--url` for MariaDB).

Each withdrawal walks the happy path PENDING → PROCESSING → BROADCAST → CONFIRMING → CONFIRMED (the
last move consumes its reservation), its client with `--endpoints` webhook endpoints (so each move
also queues that many deliveries). Prints one `name: value` line per figure: CPU and wall
milliseconds per move (the process's own CPU: for SQLite that is all of the work).

    .venv/bin/python bench/status_move.py --n 500
    .venv/bin/python bench/status_move.py --url mysql+aiomysql://root@127.0.0.1:3306/bench
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devstack.bootstrap import migrate
from models import repo
from models.db import Database
from models.domain import ReservationState, WithdrawalStatus
from models.tables import FundReservation, WalletHold, WebhookEndpoint, Withdrawal

S = WithdrawalStatus
_WALLET = "0x" + "11" * 20
_AMOUNT = 10**15
_PATH = (S.PROCESSING, S.BROADCAST, S.CONFIRMING, S.CONFIRMED)


def _row(client: str) -> Withdrawal:
    wid = str(uuid.uuid4())
    return Withdrawal(
        id=wid,
        client_id=client,
        idempotency_key=wid,
        fingerprint="f",
        user_id="u",
        network="ethereum",
        asset="ETH",
        to_address="0x" + secrets.token_hex(20),
        amount=_AMOUNT,
        decimals=18,
        status=S.PENDING,
        required_confirmations=3,
        hot_wallet=_WALLET,
    )


async def run(url: str, n: int, endpoints: int) -> None:
    db = Database(url)
    client = str(uuid.uuid4())
    async with db.transaction() as s:
        for _ in range(endpoints):
            url, secret = "http://127.0.0.1:9/", "whsec_" + secrets.token_urlsafe(32)
            s.add(WebhookEndpoint(id=str(uuid.uuid4()), client_id=client, url=url, secret=secret))
        # The wallet's running totals, as admission would have left them for n reservations.
        s.add(WalletHold(network="ethereum", hot_wallet=_WALLET, asset="ETH", held=n * _AMOUNT, holders=n))
    ids = []
    for _ in range(n):
        w = _row(client)
        async with db.transaction() as s:
            await repo.insert_withdrawal(s, w)
            s.add(
                FundReservation(
                    withdrawal_id=w.id,
                    network=w.network,
                    hot_wallet=w.hot_wallet or "",
                    asset=w.asset,
                    amount=w.amount,
                    state=ReservationState.HELD,
                )
            )
        ids.append(w.id)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for wid in ids:
        for seq, to in enumerate(_PATH, start=1):
            async with db.transaction() as s:
                assert await repo.transition(s, wid, to, seq=seq)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    moves = n * len(_PATH)
    print(f"moves: {moves}")
    print(f"webhook_endpoints: {endpoints}")
    print(f"cpu_ms_per_move: {cpu * 1000 / moves:.3f}")
    print(f"wall_ms_per_move: {wall * 1000 / moves:.3f}")
    await db.dispose()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=500, help="withdrawals (4 moves each)")
    p.add_argument("--endpoints", type=int, default=1, help="webhook endpoints of the client")
    p.add_argument("--url", help="a database URL (migrated here); default a scratch SQLite file")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = a.url or f"sqlite+aiosqlite:///{tmp}/bench.db"
        migrate(url)
        asyncio.run(run(url, a.n, a.endpoints))


if __name__ == "__main__":
    main()
