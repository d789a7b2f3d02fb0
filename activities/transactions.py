"""Building and signing transactions: gas limit, one fee quote, replacements that outbid every
earlier attempt at the nonce. `sign_transaction` records the attempt before anything is broadcast."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import structlog
from eth_abi import encode as abi_encode
from temporalio import activity

from activities import fees as feemath
from activities.alerts import Alerter
from activities.blocks import Read, watcher_for
from activities.failures import fail, rpc_down
from activities.pauses import held_by_pause
from activities.rpc import ChainIdMismatch, ChainRpc, Chains, RpcError, RpcUnavailable, balance_of_data
from activities.rpc_errors import RpcErrorKind
from activities.signer import KeystoreSigner, SignerUnavailable
from models import repo
from models.db import Database
from models.domain import ErrorCode, Nonce, SignedTx, SignInput, TxHash, TxPurpose, Wei
from models.tables import TxAttempt, Withdrawal
from settings import EngineConfig, NetworkConfig

log = structlog.get_logger()

TRANSFER_SELECTOR = bytes.fromhex("a9059cbb")  # transfer(address,uint256)


def erc20_transfer_data(to: str, amount: int) -> str:
    return "0x" + (TRANSFER_SELECTOR + abi_encode(["address", "uint256"], [to, amount])).hex()


def fee_cap(cfg: NetworkConfig) -> Wei:
    """The network's cap on the fee per gas, in wei."""
    return Wei(int(cfg.max_fee_per_gas_cap_gwei * 10**9))


async def quote_fees(cfg: NetworkConfig, rpc: ChainRpc, *, capped: bool = True) -> feemath.Fees:
    """The fees to sign with now: the node's gas price (legacy) or 2 x base fee + priority (EIP-1559),
    within the network's cap. Cancellations and nonce fills (`capped=False`) must not wait for fees to
    fall: they may pay up to `cancel_fee_cap_multiple` times the cap, never more (an absolute ceiling).
    Raises `feemath.FeeAboveCap` when the market is above the cap in force.

    Once per block per network: with a healthy block watcher the base fee is its head block's, and the
    node's priority fee (or gas price) is read once while that block is the head, for every
    transaction signed meanwhile (see docs/transactions.md, "What is read once per block")."""
    cap = fee_cap(cfg) if capped else fee_cap(cfg) * cfg.cancel_fee_cap_multiple
    if cfg.fee_model == "legacy":
        price = await _per_block(rpc, "eth_gasPrice")
        if isinstance(price, RpcError):
            raise price
        return feemath.legacy(int(price, 16), cfg.legacy_gas_price_multiplier, cap)
    blocks = rpc.watcher
    if blocks is not None and blocks.healthy:
        base = blocks.base_fee or 0
    else:
        head = await rpc.block("latest")
        base = int((head or {}).get("baseFeePerGas", "0x0"), 16)
    answer = await _per_block(rpc, "eth_maxPriorityFeePerGas")
    priority = int(cfg.priority_fee_gwei * 10**9) if isinstance(answer, RpcError) else int(answer, 16)
    return feemath.eip1559(base, priority, cap)


def _fee_read(method: str) -> Read:
    return (method, method, lambda _n: [])


async def _per_block(rpc: ChainRpc, method: str) -> Any:
    """The node's answer to a parameterless `method` (or its RpcError), read once per head block
    when the network's watcher is healthy, else now."""
    blocks = rpc.watcher
    if blocks is not None and blocks.healthy:
        try:
            _, (value,), _ = await blocks.at_head([_fee_read(method)])
            return value
        except RpcUnavailable:
            pass  # the batch did not get through: one direct try
    try:
        return await rpc.call(method)
    except RpcError as e:
        return e


def self_transfer(hot_wallet: str, cfg: NetworkConfig) -> dict[str, Any]:
    """A 0-value transfer to the wallet itself: what a cancellation or a nonce fill sends."""
    return {"from": hot_wallet, "to": hot_wallet, "value": 0, "data": "0x", "gas": cfg.native_gas_limit}


def new_attempt(
    *,
    withdrawal_id: str,
    purpose: TxPurpose,
    seq: int,
    network: str,
    hot_wallet: str,
    nonce: int,
    tx: dict[str, Any],
    fees: feemath.Fees,
    raw: str,
    tx_hash: str,
) -> TxAttempt:
    return TxAttempt(
        withdrawal_id=withdrawal_id,
        purpose=purpose,
        seq=seq,
        network=network,
        hot_wallet=hot_wallet,
        nonce=nonce,
        tx_hash=tx_hash,
        raw_tx=raw,
        tx_type=2 if fees.gas_price is None else 0,
        gas_limit=tx["gas"],
        max_fee_per_gas=fees.max_fee_per_gas,
        max_priority_fee_per_gas=fees.max_priority_fee_per_gas,
        gas_price=fees.gas_price,
    )


class TransactionActivities:
    def __init__(
        self,
        db: Database,
        chains: Chains,
        signer: KeystoreSigner,
        config: EngineConfig,
        *,
        alerts: Alerter | None = None,
    ) -> None:
        self.db, self.chains, self.signer, self.config = db, chains, signer, config
        self.alerts = alerts or Alerter(db)

    async def _unsigned(
        self, w: Withdrawal, purpose: TxPurpose, cfg: NetworkConfig, rpc: ChainRpc, *, funds: bool
    ) -> tuple[dict[str, Any], tuple[int, int | None] | None]:
        """The transaction without nonce and fees, and with `funds` the hot wallet's pending balances
        (native, token or None). What they need from the node goes in one batch: the recipient's
        code (native; read once per head block) or the transfer's gas estimate (token), the
        balances, and the head block's fee read for `quote_fees` right after; a native send to a
        contract then estimates its gas."""
        assert w.hot_wallet is not None
        if purpose is TxPurpose.CANCEL:
            return self_transfer(w.hot_wallet, cfg), None
        native = w.asset == cfg.native_asset
        if native:
            tx: dict[str, Any] = {"from": w.hot_wallet, "to": w.to_address, "value": w.amount, "data": "0x"}
        else:
            tx = {
                "from": w.hot_wallet,
                "to": cfg.tokens[w.asset].address,
                "value": 0,
                "data": erc20_transfer_data(w.to_address, w.amount),
            }
        call = {k: v for k, v in tx.items() if k in ("from", "to", "value", "data")}
        extra: list[tuple[str, list[Any]]] = []  # this transaction's own reads
        if not native:
            extra.append(("eth_estimateGas", [call]))
        if funds:
            extra.append(("eth_getBalance", [w.hot_wallet, "pending"]))
            if not native:
                token_call = {"to": cfg.tokens[w.asset].address, "data": balance_of_data(w.hot_wallet)}
                extra.append(("eth_call", [token_call, "pending"]))
        blocks = rpc.watcher
        if blocks is not None and blocks.healthy:
            # With the reads of the head block (the fee quote's, the recipient's code): one batch, or
            # none of them when another transaction signed at this head read them already.
            fee = _fee_read("eth_gasPrice" if cfg.fee_model == "legacy" else "eth_maxPriorityFeePerGas")
            to = w.to_address
            code = (("code", to.lower()), "eth_getCode", lambda n: [to, hex(n)])
            _, shared, answers = await blocks.at_head([fee, code] if native else [fee], extra)
            code_answer = shared[1] if native else None
        else:
            reads = ([("eth_getCode", [w.to_address, "latest"])] if native else []) + extra
            answers = await rpc.batch(reads)
            code_answer, answers = (answers[0], answers[1:]) if native else (None, answers)
        out = iter(answers)
        if native:
            if isinstance(code_answer, RpcError):  # e.g. a node behind the watcher's head
                code_answer = await rpc.get_code(w.to_address)
            if code_answer in ("0x", "0x0", ""):
                tx["gas"] = cfg.native_gas_limit
            else:
                tx["gas"] = self._gas_limit(cfg, await self._estimate(rpc, call), native=True)
        else:
            tx["gas"] = self._gas_limit(cfg, self._estimated(next(out)), native=False)
        if not funds:
            return tx, None
        coins = next(out)
        tokens = None if native else next(out)
        for answer in (coins, tokens):
            if isinstance(answer, RpcError):
                raise answer
        return tx, (int(coins, 16), None if tokens is None else int(tokens, 16))

    async def _estimate(self, rpc: ChainRpc, call: dict[str, Any]) -> int:
        try:
            return await rpc.estimate_gas(call)
        except RpcError as e:
            return self._estimated(e)

    def _estimated(self, answer: Any) -> int:
        if isinstance(answer, RpcError):
            if answer.kind is RpcErrorKind.EXECUTION_REVERTED:
                raise fail(
                    ErrorCode.EXECUTION_REVERTED, f"the transfer would revert: {answer.message}"
                ) from answer
            raise answer
        return int(answer, 16)

    def _gas_limit(self, cfg: NetworkConfig, estimate: int, *, native: bool) -> int:
        limit = int(Decimal(estimate) * cfg.gas_limit_margin)
        cap = cfg.native_contract_gas_limit_cap if native else cfg.token_gas_limit_cap
        if estimate > cap:
            raise fail(ErrorCode.GAS_ABOVE_CAP, f"the transfer needs {estimate} gas, above the cap of {cap}")
        return min(limit, cap)

    def _check_balance(
        self, w: Withdrawal, cfg: NetworkConfig, balances: tuple[int, int | None], max_fee: int
    ) -> None:
        """Right before signing: the hot wallet's balance, after its pending transactions (read just
        before, in `_unsigned`), covers the amount and the most this transaction can pay in fees
        (else WAITING_FOR_FUNDS, nothing signed)."""
        native = w.asset == cfg.native_asset
        coins, tokens = balances
        short = coins < max_fee + (w.amount if native else 0) or (tokens is not None and tokens < w.amount)
        if short:
            raise fail(
                ErrorCode.INSUFFICIENT_HOT_WALLET_FUNDS,
                f"hot wallet {w.hot_wallet} cannot cover the amount and a fee of up to {max_fee} wei",
            )

    @activity.defn
    async def sign_transaction(self, inp: SignInput) -> SignedTx:
        """Build, sign and record a transaction at the withdrawal's nonce. The attempt is committed
        before anything is broadcast; a repeat returns the recorded attempt unchanged."""
        async with self.db.read() as s:
            w = await repo.get_withdrawal(s, inp.withdrawal_id)
            attempts = await repo.attempts_for(s, inp.withdrawal_id)
        if w is None:
            raise LookupError(inp.withdrawal_id)
        same = [a for a in attempts if a.purpose == inp.purpose and a.seq == inp.seq]
        if same:
            done = same[0]
            return SignedTx(
                tx_hash=TxHash(done.tx_hash), nonce=Nonce(done.nonce), purpose=TxPurpose(done.purpose)
            )
        if w.nonce is None or w.hot_wallet is None:
            raise fail(ErrorCode.NONCE_CONFLICT, "no nonce allocated")
        async with self.db.read() as s:  # the kill switch: nothing new is signed while paused
            held = await held_by_pause(s, w.network, w.hot_wallet)
        if held is not None:
            raise held
        cfg = self.config.networks[w.network]
        rpc = self.chains[w.network]
        if not self.signer.has(w.hot_wallet):
            raise fail(ErrorCode.SIGNER_UNAVAILABLE, f"no signing key for hot wallet {w.hot_wallet}")
        at_nonce = [a for a in attempts if a.nonce == w.nonce]
        funds = inp.purpose is TxPurpose.WITHDRAWAL and not at_nonce  # a replacement's original is pending
        watcher_for(rpc, cfg).wake()  # fees and code once per block for everything signed meanwhile
        try:
            tx, balances = await self._unsigned(w, inp.purpose, cfg, rpc, funds=funds)
            try:
                fees = await quote_fees(cfg, rpc, capped=inp.purpose is not TxPurpose.CANCEL)
            except feemath.FeeAboveCap as e:
                await self.alerts.fee_cap_holding(w, str(e))  # once per hold; resolved when it moves on
                # Nothing sent yet at this nonce: waiting for fees to fall is safe, so retry.
                raise fail(ErrorCode.FEE_ABOVE_CAP, str(e), retryable=not at_nonce) from e
        except ChainIdMismatch as e:
            raise fail(ErrorCode.CHAIN_ID_MISMATCH, str(e)) from e
        except RpcUnavailable as e:
            raise rpc_down(e) from e
        if at_nonce:  # a replacement at the same nonce must outbid every earlier attempt
            top = max(at_nonce, key=lambda a: a.max_fee_per_gas or a.gas_price or 0)
            fees = feemath.replacement(
                fees, feemath.Fees(top.max_fee_per_gas, top.max_priority_fee_per_gas, top.gas_price)
            )
            cap = fee_cap(cfg) * (cfg.cancel_fee_cap_multiple if inp.purpose is TxPurpose.CANCEL else 1)
            if fees.per_gas_ceiling > cap:
                raise fail(
                    ErrorCode.FEE_ABOVE_CAP,
                    f"a replacement needs {fees.per_gas_ceiling} wei/gas, above the cap of {cap}",
                )
        if inp.purpose is TxPurpose.CANCEL and fees.per_gas_ceiling > fee_cap(cfg):  # the fees it signs
            log.error(
                "withdrawal.cancel.fee_above_cap", alert=True, withdrawal_id=w.id, fee=fees.per_gas_ceiling
            )
        if balances is not None:
            self._check_balance(w, cfg, balances, tx["gas"] * fees.per_gas_ceiling)
        tx.pop("from")
        tx.update(nonce=w.nonce, chainId=cfg.chain_id)
        tx.update(fees.tx_fields())
        try:
            raw, tx_hash = self.signer.sign(w.hot_wallet, tx)
        except SignerUnavailable as e:
            raise fail(ErrorCode.SIGNER_UNAVAILABLE, str(e)) from e
        attempt = new_attempt(
            withdrawal_id=w.id,
            purpose=inp.purpose,
            seq=inp.seq,
            network=w.network,
            hot_wallet=w.hot_wallet,
            nonce=w.nonce,
            tx=tx,
            fees=fees,
            raw=raw,
            tx_hash=tx_hash,
        )
        async with self.db.transaction() as s:
            alloc = await repo.active_allocation(s, w.id)
            if alloc is None or alloc.nonce != w.nonce or alloc.hot_wallet != w.hot_wallet:
                # e.g. the reconciler filled it: this withdrawal must never send at that nonce
                raise fail(
                    ErrorCode.NONCE_CONFLICT, f"nonce {w.nonce} is no longer allocated to this withdrawal"
                )
            await repo.record_attempt(s, attempt)
        watcher_for(rpc, cfg).signed(tx_hash)
        log.info("withdrawal.signed", withdrawal_id=w.id, tx_hash=tx_hash, nonce=w.nonce, purpose=inp.purpose)
        return SignedTx(tx_hash=TxHash(tx_hash), nonce=Nonce(w.nonce), purpose=inp.purpose)
