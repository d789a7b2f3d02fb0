"""The database layer against SQLite and a real MariaDB: migrations, uint256 amounts, nonce allocation
and reservations under concurrency from two "processes" (two independent engines)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text, update
from sqlmodel import select

from activities.funds import Balances, FundsActivities
from activities.rpc import Chains
from devstack import processes
from devstack.bootstrap import migrate
from models import repo
from models.amounts import MAX_AMOUNT_UNITS
from models.db import Database
from models.domain import (
    NoncePurpose,
    ReservationState,
    TxOutcome,
    TxPurpose,
    WithdrawalRequest,
    WithdrawalStatus,
)
from models.lifecycle import StaleTransition
from models.tables import FundReservation, HotWallet, NonceAllocation, TxAttempt, WalletHold, Withdrawal
from settings import ROOT, AssetLimits, EngineConfig, NetworkConfig
from tests.databases import create_database, start_mariadb
from tests.rows import attempt_row, withdrawal_row

S = WithdrawalStatus

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
    return withdrawal_row(amount, to_address=WALLET, user=user)


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


def _request(amount: int, user: str = "u", client: str = "c") -> WithdrawalRequest:
    wid = str(uuid.uuid4())
    return WithdrawalRequest(
        withdrawal_id=wid,
        client_id=client,
        idempotency_key=wid,
        fingerprint="f",
        user_id=user,
        network="ethereum",
        asset="ETH",
        to_address=WALLET,
        amount=str(amount),
    )


def _funds(db: Database, cfg: NetworkConfig) -> FundsActivities:
    config = EngineConfig.model_validate({"networks": {"ethereum": cfg.model_dump()}})
    return FundsActivities(db, Chains({}), config)


async def test_reservations_never_exceed_balance_and_settle_once(db_pair: tuple[Database, Database]) -> None:
    a, b = db_pair
    cfg = _cfg()
    async with a.transaction() as s:
        await repo.ensure_hot_wallet(s, "ethereum", WALLET, 0)
    fee = cfg.fee_allowance_wei("ETH")
    each = 10**18
    balance = {(WALLET, "ETH"): 5 * (each + fee) + 1}  # room for exactly five

    async def admit(db: Database) -> str:
        return (await _funds(db, cfg).record_admission(_request(each), cfg, Balances(balance))).status

    decisions = await asyncio.gather(*(admit(db) for db in (a, b) for _ in range(8)))
    assert sum(d == WithdrawalStatus.PENDING for d in decisions) == 5
    assert sum(d == WithdrawalStatus.WAITING_FOR_FUNDS for d in decisions) == 11
    async with a.read() as s:
        held = await repo.held_amounts(s, "ethereum")
    assert held[(WALLET, "ETH")] == 5 * (each + fee) <= balance[(WALLET, "ETH")]

    # Two engines race to end one withdrawal in every terminal way: exactly one move wins, the
    # reservation is settled once, the losers fail loudly (or are a harmless repeat of the winner).
    w = await _funds(a, cfg).record_admission(
        _request(each), cfg, Balances({(WALLET, "ETH"): 10 * (each + fee)})
    )
    async with a.transaction() as s:
        for status in (S.PROCESSING, S.BROADCAST, S.CONFIRMING):
            await repo.transition(s, w.id, status)
    outcomes = await asyncio.gather(
        *(_end(db, w.id, to) for db in (a, b) for to in (S.CONFIRMED, S.FAILED, S.CANCELLED)),
        return_exceptions=True,
    )
    winners = [o for o in outcomes if o is True]
    assert len(winners) == 1, outcomes
    assert all(o is False or isinstance(o, StaleTransition) for o in outcomes if o is not True), outcomes
    async with a.read() as s:
        final = await repo.get_withdrawal(s, w.id)
        states = [r.state for r in await repo.reservations_for(s, w.id)]
        events = [e.status for e in await repo.status_events(s, w.id)]
    assert final is not None and final.status in (S.CONFIRMED, S.FAILED, S.CANCELLED)
    expected = ReservationState.CONSUMED if final.status == S.CONFIRMED else ReservationState.RELEASED
    assert states == [expected]
    assert events == [S.PENDING, S.PROCESSING, S.BROADCAST, S.CONFIRMING, final.status]


async def _end(db: Database, wid: str, to: WithdrawalStatus) -> bool:
    async with db.transaction() as s:
        return await repo.transition(s, wid, to)


async def test_a_stale_transition_fails_loudly_and_changes_nothing(
    db_pair: tuple[Database, Database],
) -> None:
    db, _ = db_pair
    cfg = _cfg()
    async with db.transaction() as s:
        await repo.ensure_hot_wallet(s, "ethereum", WALLET, 0)
    w = await _funds(db, cfg).record_admission(_request(10**18), cfg, Balances({(WALLET, "ETH"): 10**30}))
    path = (S.PROCESSING, S.BROADCAST, S.CONFIRMING, S.CONFIRMED)
    async with db.transaction() as s:
        for status in path:
            assert await repo.transition(s, w.id, status) is True
    async with db.read() as s:
        before = await repo.get_withdrawal(s, w.id)
        events_before = len(await repo.status_events(s, w.id))
    assert before is not None
    for stale in (S.BROADCAST, S.PENDING, S.NEEDS_ATTENTION, S.CANCELLED, S.FAILED):
        with pytest.raises(StaleTransition) as err:
            async with db.transaction() as s:
                await repo.transition(s, w.id, stale)
        assert err.value.current == S.CONFIRMED and err.value.to == stale
    async with db.transaction() as s:  # a retried writer of the same move is a no-op
        assert await repo.transition(s, w.id, S.CONFIRMED) is False
    with pytest.raises(StaleTransition):
        async with db.transaction() as s:
            await repo.transition(s, str(uuid.uuid4()), S.PROCESSING)
    async with db.read() as s:
        after = await repo.get_withdrawal(s, w.id)
        reservations = await repo.reservations_for(s, w.id)
        assert len(await repo.status_events(s, w.id)) == events_before
    assert after is not None and after.status == S.CONFIRMED and after.updated_at == before.updated_at
    assert [r.state for r in reservations] == [ReservationState.CONSUMED]


async def test_daily_limit_counts_only_live_withdrawals(db_pair: tuple[Database, Database]) -> None:
    a, _ = db_pair
    cfg = _cfg()
    cfg.limits["ETH"].daily_per_user = Decimal(3)
    big = Balances({(WALLET, "ETH"): 10**30})
    user = f"user-{uuid.uuid4().hex[:6]}"
    async with a.transaction() as s:
        await repo.ensure_hot_wallet(s, "ethereum", WALLET, 0)
    funds = _funds(a, cfg)
    statuses = [(await funds.record_admission(_request(10**18, user), cfg, big)).status for _ in range(4)]
    assert statuses == [WithdrawalStatus.PENDING] * 3 + [WithdrawalStatus.REJECTED]
    # The same user id at another client is another person with a limit of its own.
    other = await funds.record_admission(_request(10**18, user, client="c2"), cfg, big)
    assert other.status == WithdrawalStatus.PENDING
    # A cancelled one no longer counts: the next fits again.
    async with a.read() as s:
        first = (await repo.list_withdrawals(s, status=S.PENDING, limit=500))[-1]
    async with a.transaction() as s:
        await repo.transition(s, first.id, S.CANCELLED)
    assert (await funds.record_admission(_request(10**18, user), cfg, big)).status == WithdrawalStatus.PENDING


async def test_keys_compare_byte_for_byte_and_timestamps_keep_microseconds(
    db_pair: tuple[Database, Database],
) -> None:
    db, _ = db_pair
    upper, lower = _withdrawal(1), _withdrawal(1)
    upper.idempotency_key, lower.idempotency_key = "ABC-1", "abc-1"  # same client: two different keys
    upper.created_at = upper.created_at.replace(microsecond=123456)
    async with db.transaction() as s:
        s.add_all([upper, lower])
    async with db.read() as s:
        got = await repo.get_withdrawal(s, upper.id)
        found = (
            await s.exec(select(Withdrawal).where(Withdrawal.idempotency_key == "abc-1"))  # type: ignore[call-overload]
        ).all()
    assert got is not None and got.created_at.microsecond == 123456
    assert [w.id for w in found] == [lower.id]


async def test_funds_that_left_after_the_balance_block_still_count_as_held(
    db_pair: tuple[Database, Database],
) -> None:
    """A balance read at block B still holds what a withdrawal mined after B paid: admission must not
    offer those funds again (the race of reading balances outside the reservation lock)."""
    db, _ = db_pair
    cfg = _cfg()
    async with db.transaction() as s:
        await repo.ensure_hot_wallet(s, "ethereum", WALLET, 0)
    w = await _funds(db, cfg).record_admission(_request(10**18), cfg, Balances({(WALLET, "ETH"): 10**30}, 90))
    reserved = repo.held_amounts
    async with db.transaction() as s:
        for status in (S.PROCESSING, S.BROADCAST):
            await repo.transition(s, w.id, status)
        await repo.record_inclusion(
            s, w.id, tx_hash="0x" + "ab" * 32, block_number=100, confirmations=3, fee_wei=1
        )
        for status in (S.CONFIRMING, S.CONFIRMED):
            await repo.transition(s, w.id, status)
    async with db.read() as s:
        amount = (await repo.reservations_for(s, w.id))[0].amount
        assert (await reserved(s, "ethereum", as_of_block=99)).get((WALLET, "ETH")) == amount
        assert (await reserved(s, "ethereum", as_of_block=100)).get((WALLET, "ETH")) is None
        assert (await reserved(s, "ethereum")).get((WALLET, "ETH")) is None


async def test_admission_seeks_instead_of_scanning_the_networks_history(
    db_pair: tuple[Database, Database],
) -> None:
    """Admission reads the running totals (a row per wallet and asset) and the reservations settled
    after the balance block: that read must go through the index that starts there, not every
    reservation the network ever had. The plan is asked of each database itself, over a history of
    400 settled reservations."""
    db, _ = db_pair
    async with db.transaction() as s:
        for n in range(405):
            s.add(
                FundReservation(
                    withdrawal_id=f"w-{n}",
                    network="ethereum",
                    hot_wallet="0xabc",
                    asset="ETH",
                    amount=1,
                    state="HELD" if n >= 400 else "CONSUMED",
                    settled_block=None if n >= 400 else n,
                )
            )
    q = repo.settled_after_query("ethereum", 398)
    url = db.url.replace("+aiosqlite", "").replace("+aiomysql", "+pymysql")
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if engine.dialect.name != "sqlite":
                conn.execute(text("ANALYZE TABLE fund_reservations"))
            sql = str(q.compile(engine, compile_kwargs={"literal_binds": True}))
            if engine.dialect.name == "sqlite":
                plan = " ".join(str(r[-1]) for r in conn.execute(text(f"EXPLAIN QUERY PLAN {sql}")))
                assert "SCAN" not in plan and "USING INDEX ix_reservation_network_settled" in plan, plan
            else:
                rows = [dict(r) for r in conn.execute(text(f"EXPLAIN {sql}")).mappings()]
                reads = [r for r in rows if r["table"] == "fund_reservations"]
                assert reads and all(r["type"] != "ALL" for r in reads), rows  # no full scan
                assert {r["key"] for r in reads} == {"ix_reservation_network_settled"}, rows
    finally:
        engine.dispose()


async def _recounted(db: Database) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
    """What the HELD reservations add up to, and what the running totals say, per (wallet, asset)."""
    async with db.read() as s:
        rows = (
            await s.exec(select(FundReservation).where(FundReservation.state == "HELD"))  # type: ignore[call-overload]
        ).all()
        holds = (await s.exec(select(WalletHold))).all()  # type: ignore[call-overload]
    truth: dict[tuple[str, str], int] = {}
    for r in rows:
        truth[(r.hot_wallet, r.asset)] = truth.get((r.hot_wallet, r.asset), 0) + int(r.amount)
    totals = {(h.hot_wallet, h.asset): int(h.held) for h in holds if h.held or h.holders}
    return truth, totals


async def test_running_totals_match_the_reservations_under_concurrent_admissions_and_settlements(
    db_pair: tuple[Database, Database],
) -> None:
    """Two engines admit onto two wallets while both settle withdrawals in every way (consumed at a
    block, released, a repeat of a settlement): the totals admission reads must equal, at the end, the
    sum of the HELD rows, with the count of withdrawals per wallet."""
    a, b = db_pair
    other = "0x" + "22" * 20
    cfg = _cfg([WALLET, other])
    async with a.transaction() as s:
        for wallet in (WALLET, other):
            await repo.ensure_hot_wallet(s, "ethereum", wallet, 0)
    big = Balances({(WALLET, "ETH"): 10**30, (other, "ETH"): 10**30})
    first = await asyncio.gather(
        *(
            _funds(db, cfg).record_admission(_request(10**15 + n), cfg, big)
            for n in range(12)
            for db in (a, b)
        )
    )
    assert all(w.status == WithdrawalStatus.PENDING for w in first)
    assert {w.hot_wallet for w in first} == {WALLET, other}  # the least busy wallet takes the next

    async def settle(db: Database, wid: str, n: int) -> None:
        async with db.transaction() as s:
            if n % 3 == 0:
                await repo.transition(s, wid, S.CANCELLED)
                return
            for status in (S.PROCESSING, S.BROADCAST):
                await repo.transition(s, wid, status)
            await repo.record_inclusion(
                s, wid, tx_hash="0x" + f"{n:064x}", block_number=50 + n, confirmations=3, fee_wei=1
            )
            for status in (S.CONFIRMING, S.CONFIRMED):
                await repo.transition(s, wid, status)

    more = [
        _funds(db, cfg).record_admission(_request(10**16 + n), cfg, big) for n in range(8) for db in (a, b)
    ]
    ends = [settle(db, w.id, n) for n, (w, db) in enumerate(zip(first[:16], [a, b] * 8, strict=True))]
    await asyncio.gather(*more, *ends)
    # A settlement repeated by the other engine changes nothing.
    for w in first[0:16:3]:  # the cancelled ones
        async with b.transaction() as s:
            assert await repo.transition(s, w.id, S.CANCELLED) is False
    truth, totals = await _recounted(a)
    assert truth and totals == truth
    async with a.read() as s:
        counts = await repo.in_flight_counts(s, "ethereum")
        held = await repo.held_amounts(s, "ethereum")
        live = (await s.exec(select(FundReservation).where(FundReservation.state == "HELD"))).all()  # type: ignore[call-overload]
        consumed_after_55 = await repo.held_amounts(s, "ethereum", as_of_block=55)
    assert held == truth
    assert counts == {w: sum(r.hot_wallet == w for r in live) for w in {r.hot_wallet for r in live}}
    assert sum(counts.values()) == 8 + 16
    # Settled at blocks 56.. still count against a balance read at block 55.
    assert sum(consumed_after_55.values()) > sum(held.values())


async def test_totals_out_of_step_with_the_rows_are_recounted_not_driven_negative(
    db_pair: tuple[Database, Database],
) -> None:
    """A total edited by hand below what its rows hold: the next settlement must not leave it
    negative (nor smaller than the rows it still has) but recount it from the reservations."""
    db, _ = db_pair
    cfg = _cfg()
    async with db.transaction() as s:
        await repo.ensure_hot_wallet(s, "ethereum", WALLET, 0)
    big = Balances({(WALLET, "ETH"): 10**30})
    w1, w2 = [await _funds(db, cfg).record_admission(_request(10**18), cfg, big) for _ in range(2)]
    async with db.transaction() as s:
        await s.exec(update(WalletHold).values(held=1, holders=0))  # type: ignore[call-overload]
    async with db.transaction() as s:
        await repo.transition(s, w1.id, S.CANCELLED)
    truth, totals = await _recounted(db)
    assert totals == truth and truth[(WALLET, "ETH")] > 10**18
    async with db.read() as s:
        assert await repo.in_flight_counts(s, "ethereum") == {WALLET: 1}
    del w2


async def test_the_migration_fills_the_totals_from_the_reservations_held(tmp_path: Path) -> None:
    """A database upgraded with reservations in flight starts with totals equal to them."""
    from alembic import command
    from alembic.config import Config

    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.attributes["url"] = url
    await asyncio.to_thread(command.upgrade, cfg, "0009")
    big = MAX_AMOUNT_UNITS  # exact: SQLite keeps amounts as text
    engine = create_engine(url.replace("+aiosqlite", ""))
    try:
        with engine.begin() as conn:
            for n, (wallet, asset, amount, state) in enumerate(
                [
                    (WALLET, "ETH", big, "HELD"),
                    (WALLET, "ETH", 5, "HELD"),
                    (WALLET, "USDT", 7, "HELD"),
                    (WALLET, "ETH", 11, "CONSUMED"),
                ]
            ):
                conn.execute(
                    text(
                        "INSERT INTO fund_reservations (withdrawal_id, network, hot_wallet, asset, amount, "
                        "state, created_at) VALUES (:w, 'ethereum', :h, :a, :m, :s, '2026-12-01 00:00:00')"
                    ),
                    {"w": f"w-{n}", "h": wallet, "a": asset, "m": str(amount), "s": state},
                )
    finally:
        engine.dispose()
    await asyncio.to_thread(command.upgrade, cfg, "head")
    db = Database(url)
    try:
        async with db.read() as s:
            assert await repo.held_amounts(s, "ethereum") == {(WALLET, "ETH"): big + 5, (WALLET, "USDT"): 7}
            assert await repo.in_flight_counts(s, "ethereum") == {WALLET: 2}
    finally:
        await db.dispose()


async def test_a_settlement_between_admissions_read_and_its_reservation_is_not_written_over(
    request: pytest.FixtureRequest,
) -> None:
    """MariaDB (READ COMMITTED, row locks): admission reads the totals, another engine settles a
    withdrawal on the same wallet and commits, then admission reserves. The reservation must add to
    the total as it is now, not to what admission read (a lost settlement would hold funds forever).
    SQLite cannot interleave this way: its write transactions are serialized whole."""
    url = create_database(request.getfixturevalue("mariadb_port"), f"t_{uuid.uuid4().hex[:12]}")
    await asyncio.to_thread(migrate, url)
    a, b = Database(url), Database(url)
    try:
        cfg = _cfg()
        async with a.transaction() as s:
            await repo.ensure_hot_wallet(s, "ethereum", WALLET, 0)
        big = Balances({(WALLET, "ETH"): 10**30})
        first = await _funds(a, cfg).record_admission(_request(10**18), cfg, big)
        w = _withdrawal(2 * 10**18)
        async with a.transaction() as s:
            await repo.insert_withdrawal(s, w)
            await repo.lock_wallets(s, "ethereum")
            seen = await repo.held_amounts(s, "ethereum")  # as admission reads it
            assert seen[(WALLET, "ETH")] > 10**18
            async with b.transaction() as other:
                await repo.transition(other, first.id, S.CANCELLED)  # committed meanwhile
            await repo.reserve(s, w.id, "ethereum", WALLET, {"ETH": 2 * 10**18})  # type: ignore[dict-item]
        truth, totals = await _recounted(a)
        assert totals == truth == {(WALLET, "ETH"): 2 * 10**18}
    finally:
        await a.dispose()
        await b.dispose()


async def test_totals_too_high_are_found_and_corrected(db_pair: tuple[Database, Database]) -> None:
    """A total above what its rows hold is never driven negative, so settlement cannot notice it:
    the reconciler's recount does, corrects it and says what it was."""
    db, _ = db_pair
    cfg = _cfg()
    async with db.transaction() as s:
        await repo.ensure_hot_wallet(s, "ethereum", WALLET, 0)
    w = await _funds(db, cfg).record_admission(_request(10**18), cfg, Balances({(WALLET, "ETH"): 10**30}))
    truth, _ = await _recounted(db)
    async with db.transaction() as s:
        assert await repo.recount_holds(s, "ethereum", WALLET) == []  # in step: nothing to correct
        await s.exec(update(WalletHold).values(held=WalletHold.held, holders=5))  # type: ignore[call-overload]
        s.add(WalletHold(network="ethereum", hot_wallet=WALLET, asset="USDT", held=7, holders=1))
    async with db.transaction() as s:
        corrected = await repo.recount_holds(s, "ethereum", WALLET)
    assert [(a, was) for a, was, _ in corrected] == [("ETH", truth[(WALLET, "ETH")]), ("USDT", 7)]
    async with db.read() as s:
        assert await repo.in_flight_counts(s, "ethereum") == {WALLET: 1}
        assert await repo.held_amounts(s, "ethereum") == truth
    del w


async def test_nonces_ahead_lists_each_allocation_with_its_attempts(
    db_pair: tuple[Database, Database],
) -> None:
    """What the funds check before signing bounds its balance with: per nonce in a range, the
    allocation's purpose and every attempt at it with its withdrawal's asset and amount (uint256 exact)."""
    db, _ = db_pair
    big = _withdrawal(MAX_AMOUNT_UNITS)
    small, unsigned, other_wallet = _withdrawal(5), _withdrawal(6), _withdrawal(7)

    def attempt(w: Withdrawal, nonce: int, seq: int, fee: int) -> TxAttempt:
        return attempt_row(w, TxPurpose.WITHDRAWAL, seq, 21_000, fee, nonce=nonce, hot_wallet=WALLET)

    async with db.transaction() as s:
        s.add_all([big, small, unsigned, other_wallet])
        for nonce, w, wallet, purpose in (
            (3, big, WALLET, NoncePurpose.WITHDRAWAL),
            (4, small, WALLET, NoncePurpose.EXTERNAL),
            (5, unsigned, WALLET, NoncePurpose.WITHDRAWAL),
            (6, other_wallet, WALLET, NoncePurpose.WITHDRAWAL),
            (4, other_wallet, "0x00000000000000000000000000000000000000B2", NoncePurpose.WITHDRAWAL),
        ):
            s.add(
                NonceAllocation(
                    network="ethereum", hot_wallet=wallet, nonce=nonce, withdrawal_id=w.id, purpose=purpose
                )
            )
        s.add_all([attempt(big, 3, 0, 10), attempt(big, 3, 1, MAX_AMOUNT_UNITS), attempt(small, 4, 0, 9)])
    async with db.read() as s:
        rows = sorted(await repo.nonces_ahead(s, "ethereum", WALLET, 3, 6), key=lambda r: (r[0], r[4] or 0))
    assert rows == [
        (3, "WITHDRAWAL", "WITHDRAWAL", 21_000, 10, None, "ETH", MAX_AMOUNT_UNITS),
        (3, "WITHDRAWAL", "WITHDRAWAL", 21_000, MAX_AMOUNT_UNITS, None, "ETH", MAX_AMOUNT_UNITS),
        (4, "EXTERNAL", "WITHDRAWAL", 21_000, 9, None, "ETH", 5),
        (5, "WITHDRAWAL", None, None, None, None, "ETH", 6),
    ]


async def test_objects_loaded_in_a_session_see_the_hot_paths_writes(
    db_pair: tuple[Database, Database],
) -> None:
    """The hot-path writes are core statements (no ORM UPDATE): objects of those rows already loaded
    in the same session must still read what was written, as after the ORM's own UPDATE."""
    a, _ = db_pair
    cfg = _cfg()
    async with a.transaction() as s:
        await repo.ensure_hot_wallet(s, "ethereum", WALLET, 0)
    w = await _funds(a, cfg).record_admission(_request(10**15), cfg, Balances({(WALLET, "ETH"): 10**18}))
    async with a.transaction() as s:
        hw = await repo.lock_hot_wallet(s, "ethereum", WALLET)
        loaded = await repo.get_withdrawal(s, w.id)
        assert loaded is not None and loaded.status == S.PENDING
        held = await repo.reservations_for(s, w.id)
        first_nonce = hw.next_nonce
        alloc = await repo.allocate_nonce(s, w.id)
        assert (loaded.nonce, hw.next_nonce) == (alloc.nonce, first_nonce + 1)
        await repo.transition(s, w.id, S.PROCESSING, seq=1)
        attempt = attempt_row(loaded, TxPurpose.WITHDRAWAL, 1, 21_000, 10**9)
        await repo.record_attempt(s, attempt)
        assert loaded.tx_hash == attempt.tx_hash
        await repo.mark_attempt(s, attempt.tx_hash, TxOutcome.BROADCAST)
        assert attempt.outcome == TxOutcome.BROADCAST
        await repo.transition(s, w.id, S.BROADCAST, seq=2)
        await repo.record_inclusion(
            s, w.id, tx_hash=attempt.tx_hash, block_number=7, confirmations=1, fee_wei=5
        )
        assert (attempt.outcome, loaded.block_number, loaded.fee_wei) == (TxOutcome.MINED, 7, 5)
        await repo.transition(s, w.id, S.CONFIRMING, seq=3)
        await repo.transition(s, w.id, S.CONFIRMED, seq=4)
        assert (loaded.status, loaded.status_seq) == (S.CONFIRMED, 4)
        assert [r.state for r in held] == [ReservationState.CONSUMED]
        assert held[0].settled_block == 7
        assert alloc.active is False
        totals = (await s.exec(select(WalletHold).where(WalletHold.hot_wallet == WALLET))).all()
        assert [(t.held, t.holders) for t in totals] == [(0, 0)]
    async with a.read() as s:  # and the rows say the same
        row = await repo.get_withdrawal(s, w.id)
        assert row is not None and (row.status, row.nonce, row.tx_hash) == (
            S.CONFIRMED,
            alloc.nonce,
            attempt.tx_hash,
        )
        assert [r.state for r in await repo.reservations_for(s, w.id)] == [ReservationState.CONSUMED]
        assert await repo.active_allocation(s, w.id) is None
    with pytest.raises(ValueError, match="None or a list"):
        async with a.transaction() as s:
            await repo._set(s, Withdrawal, {"tx_hash": None}, confirmations=1)
