"""DESIGN §5 invariants, checked against the database and the chain after a scenario."""

from __future__ import annotations

from devstack import processes
from models import repo
from models.domain import WithdrawalStatus
from tests.stack import Harness


async def assert_invariants(h: Harness, withdrawal_ids: list[str]) -> None:
    async with h.db.transaction() as s:
        rows = {wid: await repo.get_withdrawal(s, wid) for wid in withdrawal_ids}
        for network, cfg in h.config.networks.items():
            for wallet in cfg.hot_wallets:
                allocs = await repo.nonce_allocations(s, network, wallet)
                nonces = [a.nonce for a in allocs]
                if not nonces:
                    continue
                # 2. contiguous, none abandoned: every allocated nonce is used on chain.
                assert nonces == list(range(nonces[0], nonces[0] + len(nonces))), (network, nonces)
                chain_nonce = int(
                    processes.rpc(
                        h.stack.rpc_urls[network],
                        "eth_getTransactionCount",
                        [wallet, "latest"],
                    ),
                    16,
                )
                assert chain_nonce >= nonces[-1] + 1, (network, chain_nonce, nonces[-1])
        for wid, w in rows.items():
            assert w is not None, wid
            attempts = await repo.attempts_for(s, wid)
            mined = [a for a in attempts if a.outcome == "MINED"]
            # 1. at most one mined transaction per withdrawal, all live attempts at one nonce (attempts at
            # a nonce that a transaction sent outside the engine consumed are FAILED: never minable)
            live = {a.nonce for a in attempts if a.outcome != "FAILED"}
            assert len(live) <= 1, [(a.nonce, a.outcome) for a in attempts]
            if w.nonce is not None:
                assert live <= {w.nonce}
            assert len(mined) <= 1
            reservations = await repo.reservations_for(s, wid)
            states = {r.state for r in reservations}
            # 3. reservations consumed or released exactly once (never still held when final)
            if w.status == WithdrawalStatus.CONFIRMED:
                assert len(mined) == 1 and mined[0].tx_hash == w.tx_hash
                assert states == {"CONSUMED"}, states
            elif w.status in (WithdrawalStatus.REJECTED, WithdrawalStatus.CANCELLED, WithdrawalStatus.FAILED):
                assert states <= {"RELEASED"}, states
            # the mined transaction really is on chain at the recorded nonce
            for a in mined:
                tx = processes.rpc(h.stack.rpc_urls[w.network], "eth_getTransactionByHash", [a.tx_hash])
                assert tx and int(tx["nonce"], 16) == a.nonce and tx["blockNumber"]
