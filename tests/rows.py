"""Rows built directly for tests that set up the database without going through the API."""

from __future__ import annotations

import secrets
import uuid

from models.domain import TxPurpose, WithdrawalStatus
from models.tables import TxAttempt, Withdrawal


def withdrawal_row(
    amount: int,
    *,
    to_address: str,
    user: str = "u",
    asset: str = "ETH",
    status: WithdrawalStatus = WithdrawalStatus.PENDING,
    required_confirmations: int = 3,
    hot_wallet: str | None = None,
    nonce: int | None = None,
) -> Withdrawal:
    """A withdrawal of client "c" on ethereum (18 decimals for ETH, 6 for a token)."""
    wid = str(uuid.uuid4())
    return Withdrawal(
        id=wid,
        client_id="c",
        idempotency_key=wid,
        fingerprint="f",
        user_id=user,
        network="ethereum",
        asset=asset,
        to_address=to_address,
        amount=amount,
        decimals=18 if asset == "ETH" else 6,
        status=status,
        required_confirmations=required_confirmations,
        hot_wallet=hot_wallet,
        nonce=nonce,
    )


def attempt_row(
    w: Withdrawal,
    purpose: TxPurpose,
    seq: int,
    gas: int,
    max_fee: int,
    *,
    nonce: int | None = None,
    hot_wallet: str | None = None,
) -> TxAttempt:
    """A signed EIP-1559 attempt of `w` at its nonce from its hot wallet (or the ones given)."""
    at = w.nonce if nonce is None else nonce
    wallet = hot_wallet or w.hot_wallet
    assert at is not None and wallet is not None
    return TxAttempt(
        withdrawal_id=w.id,
        purpose=purpose,
        seq=seq,
        network=w.network,
        hot_wallet=wallet,
        nonce=at,
        tx_hash="0x" + secrets.token_hex(32),
        raw_tx="0x00",
        tx_type=2,
        gas_limit=gas,
        max_fee_per_gas=max_fee,
        max_priority_fee_per_gas=1,
    )
