"""The database layer against SQLite and a real MariaDB: migrations, uint256 amounts, nonce allocation
and reservations under concurrency from two "processes" (two independent engines)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from devstack import processes
from devstack.bootstrap import migrate
from models import repo
from models.amounts import MAX_AMOUNT_UNITS
from models.db import Database
from models.domain import WithdrawalStatus
from models.tables import HotWallet, Withdrawal
from settings import AssetLimits, NetworkConfig
from tests.databases import create_database, start_mariadb

WALLET = "0x00000000000000000000000000000000000000A1"


@pytest.fixture(scope="session")
def mariadb_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    proc, port = start_mariadb(tmp_path_factory.mktemp("mariadb"))
    try:
        yield port
    finally:
        processes.stop(proc)


@pytest.fixture(params=["sqlite", "mariadb"])
async def db_pair(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Database, Database]]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'repo.db'}"
    else:
        url = create_database(request.getfixturevalue("mariadb_port"), f"t_{uuid.uuid4().hex[:12]}")
    await asyncio.to_thread(migrate, url)
    a, b = Database(url), Database(url)
    try:
        yield a, b
    finally:
        await a.dispose()
        await b.dispose()


def _cfg(wallets: list[str] | None = None) -> NetworkConfig:
    return NetworkConfig(
        chain_id=31337,
        rpc_urls=["http://127.0.0.1:1"],
        native_asset="ETH",
        fee_model="eip1559",
        required_confirmations=3,
        hot_wallets=wallets or [WALLET],
        limits={
            "ETH": AssetLimits(
                per_transaction=Decimal(100), daily_per_user=Decimal(10**6), approval_threshold=Decimal(10)
            )
        },
        max_fee_per_gas_cap_gwei=Decimal(1),
    )


def _withdrawal(amount: int, user: str = "u") -> Withdrawal:
    wid = str(uuid.uuid4())
    return Withdrawal(
        id=wid,
        client_id="c",
        idempotency_key=wid,
        fingerprint="f",
        user_id=user,
        network="ethereum",
        asset="ETH",
        to_address=WALLET,
        amount=amount,
        decimals=18,
        status=WithdrawalStatus.PENDING,
        required_confirmations=3,
    )


async def test_uint256_amounts_round_trip_exactly(db_pair: tuple[Database, Database]) -> None:
    db, _ = db_pair
    w = _withdrawal(MAX_AMOUNT_UNITS)
    w.fee_wei = MAX_AMOUNT_UNITS - 1
    async with db.transaction() as s:
        s.add(w)
    async with db.read() as s:
        got = await repo.get_withdrawal(s, w.id)
    assert got is not None and got.amount == MAX_AMOUNT_UNITS and got.fee_wei == MAX_AMOUNT_UNITS - 1


async def test_nonces_are_contiguous_and_unique_under_concurrency(db_pair: tuple[Database, Database]) -> None:
    a, b = db_pair
    async with a.transaction() as s:
        await repo.ensure_hot_wallet(s, "ethereum", WALLET, 7)
    ws = [_withdrawal(1) for _ in range(40)]
    for w in ws:
        w.hot_wallet = WALLET
    async with a.transaction() as s:
        s.add_all(ws)

    async def alloc(db: Database, wid: str) -> int:
        async with db.transaction() as s:
            return (await repo.allocate_nonce(s, wid)).nonce

    # Two engines (as two worker processes would), each allocating for every withdrawal twice.
    results = await asyncio.gather(*(alloc(db, w.id) for w in ws for db in (a, b)))
    by_withdrawal: dict[str, set[int]] = {}
    for w, n in zip([w for w in ws for _ in (a, b)], results, strict=True):
        by_withdrawal.setdefault(w.id, set()).add(n)
    assert all(len(v) == 1 for v in by_withdrawal.values()), "a retry must get the same nonce"
    assert sorted(n for v in by_withdrawal.values() for n in v) == list(range(7, 47))
    async with a.read() as s:
        hw = (await s.exec(repo.select(HotWallet))).one()  # type: ignore[attr-defined]
    assert hw.next_nonce == 47


async def test_reservations_never_exceed_balance_and_settle_once(db_pair: tuple[Database, Database]) -> None:
    a, b = db_pair
    cfg = _cfg()
    async with a.transaction() as s:
        await repo.ensure_hot_wallet(s, "ethereum", WALLET, 0)
    fee = cfg.fee_allowance_wei("ETH")
    each = 10**18
    balance = {(WALLET, "ETH"): 5 * (each + fee) + 1}  # room for exactly five

    async def admit(db: Database) -> repo.AdmissionDecision:
        async with db.transaction() as s:
            return await repo.admit(s, _withdrawal(each), cfg, balance, now=repo.utcnow())

    decisions = await asyncio.gather(*(admit(db) for db in (a, b) for _ in range(8)))
    assert sum(d.status == WithdrawalStatus.PENDING for d in decisions) == 5
    assert sum(d.status == WithdrawalStatus.WAITING_FOR_FUNDS for d in decisions) == 11
    async with a.read() as s:
        held = await repo._held(s, "ethereum")
    assert held[(WALLET, "ETH")] == 5 * (each + fee) <= balance[(WALLET, "ETH")]

    w = _withdrawal(each)
    async with a.transaction() as s:
        await repo.admit(s, w, cfg, {(WALLET, "ETH"): 10 * (each + fee)}, now=repo.utcnow())
    counts = await asyncio.gather(
        *(_settle(db, w.id, state) for db in (a, b) for state in ("CONSUMED", "RELEASED"))
    )
    assert sorted(counts) == [0, 0, 0, 1], "exactly one settlement wins"


async def _settle(db: Database, wid: str, state: str) -> int:
    async with db.transaction() as s:
        return await repo.settle_reservations(s, wid, state)


async def test_daily_limit_counts_only_live_withdrawals(db_pair: tuple[Database, Database]) -> None:
    a, _ = db_pair
    cfg = _cfg()
    cfg.limits["ETH"].daily_per_user = Decimal(3)
    big = {(WALLET, "ETH"): 10**30}
    user = f"user-{uuid.uuid4().hex[:6]}"
    async with a.transaction() as s:
        await repo.ensure_hot_wallet(s, "ethereum", WALLET, 0)
    statuses = []
    for _ in range(4):
        async with a.transaction() as s:
            statuses.append(
                (await repo.admit(s, _withdrawal(10**18, user), cfg, big, now=repo.utcnow())).status
            )
    assert statuses == [WithdrawalStatus.PENDING] * 3 + [WithdrawalStatus.REJECTED]
