"""Which transaction holds a hot wallet's nonce on the canonical chain: proof before re-signing.

A node's `null` for a receipt or a transaction means only "this node does not know" (load-balanced
nodes lag and prune). Before the engine moves a withdrawal to another nonce or calls its transaction
gone, it proves from blocks, not receipts: the first block whose state counts the wallet's nonce as
used (a binary search over `eth_getTransactionCount` at block heights), the transaction in that block
with the wallet as sender and that nonce, and the depth of that block. Anything short of that is
UNPROVEN, and the caller waits or parks; it never re-signs at another nonce on an unproven answer.
"""

from __future__ import annotations

from typing import Any

import structlog

from activities.rpc import ChainRpc, RpcError, RpcUnavailable
from models.domain import NonceHolder, NonceHolderOutcome, TxPurpose
from models.tables import TxAttempt

log = structlog.get_logger()


def _unproven(detail: str) -> NonceHolder:
    return NonceHolder(outcome=NonceHolderOutcome.UNPROVEN, detail=detail)


async def find_nonce_holder(
    rpc: ChainRpc,
    wallet: str,
    nonce: int,
    attempts: list[TxAttempt],
    *,
    required_depth: int,
) -> NonceHolder:
    """Prove which transaction holds (`wallet`, `nonce`): one of `attempts` (at any depth: the caller
    then waits for its confirmations), or another one at least `required_depth` blocks deep."""
    try:
        head = await rpc.block_number()
        if await rpc.nonce_at(wallet, head) <= nonce:
            return _unproven(f"the node's head {head} has not used nonce {nonce} of {wallet}")
        lo, hi = 0, head
        while lo < hi:  # the first block after which the wallet's nonce count passes `nonce`
            mid = (lo + hi) // 2
            if await rpc.nonce_at(wallet, mid) > nonce:
                hi = mid
            else:
                lo = mid + 1
        block = await rpc.block_with_transactions(lo)
    except RpcError as e:  # e.g. a node without the historical state: cannot tell
        return _unproven(f"cannot search the chain: {e.message[:200]}")
    except RpcUnavailable as e:
        return _unproven(f"no node answered: {str(e)[:200]}")
    if block is None:
        return _unproven(f"block {lo} is unknown to the node")
    tx = _sent_at(block, wallet, nonce)
    if tx is None:
        return _unproven(f"block {lo} holds no transaction of {wallet} at nonce {nonce}")
    depth = head - lo + 1
    tx_hash = str(tx["hash"]).lower()
    ours = next((a for a in attempts if a.tx_hash.lower() == tx_hash), None)
    if ours is None and depth < required_depth:  # an external holder must be deep enough to stay
        return _unproven(f"nonce {nonce} is held by {tx_hash} in block {lo}, only {depth} deep")
    holder = NonceHolder(
        outcome=NonceHolderOutcome.OURS if ours else NonceHolderOutcome.EXTERNAL,
        tx_hash=tx_hash,
        block_number=lo,
        block_hash=str(block["hash"]),
        purpose=TxPurpose(ours.purpose) if ours else None,
        detail=f"nonce {nonce} of {wallet} is held by {tx_hash} in block {lo} ({depth} deep)",
    )
    log.info("nonce.holder.proven", wallet=wallet, nonce=nonce, tx_hash=tx_hash, block=lo, ours=bool(ours))
    return holder


def _sent_at(block: dict[str, Any], wallet: str, nonce: int) -> dict[str, Any] | None:
    for tx in block.get("transactions", []):
        sender = str(tx.get("from", "")).lower() if isinstance(tx, dict) else ""
        if sender == wallet.lower() and int(str(tx.get("nonce", "0x0")), 16) == nonce:
            return tx
    return None
