"""Building and signing transactions: gas limit, one fee quote, replacements that outbid every
earlier attempt at the nonce. `sign_transaction` records the attempt before anything is broadcast."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import structlog
from eth_abi import encode as abi_encode
from temporalio import activity

from activities import fees as feemath
from activities.alerts import Alerter
from activities.blocks import Read, balance_read, code_read, nonce_read, token_balance_read, watcher_for
from activities.failures import fail, rpc_down
from activities.pauses import held_by_pause
from activities.rpc import ChainIdMismatch, ChainRpc, Chains, RpcError, RpcUnavailable, balance_of_data
from activities.rpc_errors import RpcErrorKind
from activities.signer import KeystoreSigner, SignerUnavailable
from models import repo
from models.db import Database
from models.domain import ErrorCode, Nonce, NoncePurpose, SignedTx, SignInput, TxHash, TxPurpose, Wei
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


MAX_NONCES_AHEAD = 512  # more unmined nonces than this before one: its funds are read at the node


@dataclass(frozen=True)
class Funds:
    """A hot wallet's balances to sign against: native wei and, for a token transfer, its units;
    `count` = the wallet's transaction count at the block they were read at, None when they are the
    node's pending balances."""

    coins: int
    tokens: int | None
    count: int | None = None


def _funds_reads(wallet: str, token: str | None) -> list[Read]:
    """The signing check's reads at the head block: the balances and the transaction count under keys
    of their own (not admission's), so they are always read together, in one batch from one node:
    a balance and a count from two forks at that height would leave a nonce uncharged."""
    reads = [balance_read(wallet), nonce_read(wallet)]
    if token is not None:
        reads.append(token_balance_read(token, wallet))
    return [(("funds", key), method, params) for key, method, params in reads]


def _pending_reads(wallet: str, token: str | None) -> list[tuple[str, list[Any]]]:
    reads: list[tuple[str, list[Any]]] = [("eth_getBalance", [wallet, "pending"])]
    if token is not None:
        reads.append(("eth_call", [{"to": token, "data": balance_of_data(wallet)}, "pending"]))
    return reads


def _funds(coins: Any, tokens: Any) -> Funds:
    for answer in (coins, tokens):
        if isinstance(answer, RpcError):
            raise answer
    return Funds(coins=int(coins, 16), tokens=None if tokens is None else int(tokens, 16))


def transfer(w: Withdrawal, cfg: NetworkConfig) -> dict[str, Any]:
    """The withdrawal's transfer from its hot wallet, without gas, nonce and fees: the coins to the
    recipient, or the token contract's transfer(recipient, amount)."""
    if w.asset == cfg.native_asset:
        return {"from": w.hot_wallet, "to": w.to_address, "value": w.amount, "data": "0x"}
    return {
        "from": w.hot_wallet,
        "to": cfg.tokens[w.asset].address,
        "value": 0,
        "data": erc20_transfer_data(w.to_address, w.amount),
    }


async def estimate(rpc: ChainRpc, call: dict[str, Any]) -> int:
    try:
        return await rpc.estimate_gas(call)
    except RpcError as e:
        return estimated(e)


def estimated(answer: Any) -> int:
    """A gas estimate's answer: the gas, or EXECUTION_REVERTED (non-retryable) when the transfer would
    revert; another node error is raised as it is (retried)."""
    if isinstance(answer, RpcError):
        if answer.kind is RpcErrorKind.EXECUTION_REVERTED:
            raise fail(
                ErrorCode.EXECUTION_REVERTED, f"the transfer would revert: {answer.message}"
            ) from answer
        raise answer
    return int(answer, 16)


def gas_limit(cfg: NetworkConfig, estimate: int, *, native: bool) -> int:
    """The estimate with the network's margin, within its cap (GAS_ABOVE_CAP, non-retryable, above)."""
    limit = int(Decimal(estimate) * cfg.gas_limit_margin)
    cap = cfg.native_contract_gas_limit_cap if native else cfg.token_gas_limit_cap
    if estimate > cap:
        raise fail(ErrorCode.GAS_ABOVE_CAP, f"the transfer needs {estimate} gas, above the cap of {cap}")
    return min(limit, cap)


async def preflight(w: Withdrawal, cfg: NetworkConfig, rpc: ChainRpc) -> None:
    """Before a token transfer takes a nonce: one the token would refuse (the recipient blacklisted,
    the token paused) fails here, non-retryable (EXECUTION_REVERTED, or GAS_ABOVE_CAP), so the
    withdrawal parks without a nonce that the wallet's later withdrawals would wait behind. Signing
    estimates again (the chain may change in between). Native sends are not estimated here: the
    recipient's code is read once, at signing (a send to a contract that reverts parks there, with
    its nonce)."""
    if w.asset != cfg.native_asset:
        gas_limit(cfg, await estimate(rpc, transfer(w, cfg)), native=False)


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
    ) -> tuple[dict[str, Any], Funds | None]:
        """The transaction without nonce and fees, and with `funds` the hot wallet's balances to check
        it against (`_check_funds`). What they need from the node goes in one batch: the recipient's
        code (native) or the transfer's gas estimate (token), the balances, and the head block's fee
        read for `quote_fees` right after; a native send to a contract then estimates its gas.

        With a healthy block watcher the balances and the wallet's transaction count are read at its
        head block, once per block for every transaction signed meanwhile (and shared with admission):
        `Funds.count`. Else the node's pending balances, for this transaction alone."""
        assert w.hot_wallet is not None
        if purpose is TxPurpose.CANCEL:
            return self_transfer(w.hot_wallet, cfg), None
        native = w.asset == cfg.native_asset
        token = None if native else cfg.tokens[w.asset].address
        tx = transfer(w, cfg)
        call = dict(tx)
        extra: list[tuple[str, list[Any]]] = []  # this transaction's own reads
        if token is not None:
            extra.append(("eth_estimateGas", [call]))
        blocks = rpc.watcher
        if blocks is not None and blocks.healthy:
            # With the reads of the head block (the fee quote's, the recipient's code, the wallet's
            # balances and count): one batch, or none when another transaction read them at this head.
            fee = _fee_read("eth_gasPrice" if cfg.fee_model == "legacy" else "eth_maxPriorityFeePerGas")
            shared: list[Read] = [fee]
            if native:
                shared.append(code_read(w.to_address))
            if funds:
                shared += _funds_reads(w.hot_wallet, token)
            _, answers, own = await blocks.at_head(shared, extra)
            code_answer = answers[1] if native else None
            balances = answers[2:] if native else answers[1:]
            out = iter(own)
        else:
            balances = []
            if funds:
                extra += _pending_reads(w.hot_wallet, token)
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
                tx["gas"] = gas_limit(cfg, await estimate(rpc, call), native=True)
        else:
            tx["gas"] = gas_limit(cfg, estimated(next(out)), native=False)
        if not funds:
            return tx, None
        if balances:  # read at the head block
            if any(isinstance(b, RpcError) for b in balances):  # e.g. a node behind the watcher's head
                return tx, await self._pending_funds(w, rpc, token)
            coins, count = int(balances[0], 16), int(balances[1], 16)
            tokens = int(balances[2], 16) if token is not None else None
            return tx, Funds(coins=coins, tokens=tokens, count=count)
        coins_answer = next(out)
        tokens_answer = next(out) if token is not None else None
        return tx, _funds(coins_answer, tokens_answer)

    async def _pending_funds(self, w: Withdrawal, rpc: ChainRpc, token: str | None) -> Funds:
        """The hot wallet's pending balances (after the transactions the node has pending), now."""
        assert w.hot_wallet is not None
        answers = await rpc.batch(_pending_reads(w.hot_wallet, token))
        return _funds(answers[0], answers[1] if token is not None else None)

    async def _check_funds(
        self, w: Withdrawal, cfg: NetworkConfig, rpc: ChainRpc, funds: Funds, max_fee: int
    ) -> None:
        """Right before signing: the hot wallet can pay the amount and the most this transaction can
        pay in fees, after everything it sends before (else WAITING_FOR_FUNDS, nothing signed).

        Balances read at a block (with `Funds.count`): there the wallet has sent every nonce below its
        count, and only a transaction from it can take its coins or tokens, so what it has for this
        nonce is at least those balances less the most that the engine's transactions at the nonces in
        between can take (each nonce's costliest attempt: value plus gas limit times fee ceiling, all
        recorded before they were broadcast; a nonce with nothing signed yet: its amount and the most
        its fee may be). That bound decides. Only when a nonce in between is not the engine's to
        bound (sent outside it, a fill, not allocated, too many) do the node's pending balances
        decide, read now, as they do without a healthy block watcher."""
        assert w.nonce is not None and w.hot_wallet is not None
        token = None if w.asset == cfg.native_asset else w.asset
        need_coins = max_fee + (w.amount if token is None else 0)
        spent = None
        if funds.count is not None:
            spent = await self._spent_ahead(w, cfg, funds.count, token)
            if spent is None:
                token_address = None if token is None else cfg.tokens[token].address
                funds = await self._pending_funds(w, rpc, token_address)
        coins, tokens = spent or (0, 0)
        if funds.coins - coins < need_coins or (
            funds.tokens is not None and funds.tokens - tokens < w.amount
        ):
            raise fail(
                ErrorCode.INSUFFICIENT_HOT_WALLET_FUNDS,
                f"hot wallet {w.hot_wallet} cannot cover the amount and a fee of up to {max_fee} wei",
            )

    async def _spent_ahead(
        self, w: Withdrawal, cfg: NetworkConfig, count: int, token: str | None
    ) -> tuple[int, int] | None:
        """The most (native wei, units of `token`) the engine's transactions at the wallet's nonces in
        [count, w.nonce) can take; None when that cannot be bounded from the records: a nonce there
        the engine did not allocate, or one sent outside it or filled, or too many of them."""
        assert w.nonce is not None and w.hot_wallet is not None
        if not 0 <= w.nonce - count <= MAX_NONCES_AHEAD:
            return None
        if count == w.nonce:
            return 0, 0
        async with self.db.read() as s:
            rows = await repo.nonces_ahead(s, w.network, w.hot_wallet, count, w.nonce)
        coins: dict[int, int] = {}
        tokens: dict[int, int] = {}
        for nonce, allocation, purpose, gas, max_fee, gas_price, asset, amount in rows:
            if allocation != NoncePurpose.WITHDRAWAL:
                return None
            coins.setdefault(nonce, 0)
            tokens.setdefault(nonce, 0)
            if purpose is None:  # allocated, nothing signed at it yet: the most it may take
                native = asset == cfg.native_asset
                coins[nonce] = cfg.fee_allowance_wei(asset or cfg.native_asset) + (
                    (amount or 0) if native else 0
                )
                if token is not None and asset == token:
                    tokens[nonce] = amount or 0
                continue
            pays = purpose == TxPurpose.WITHDRAWAL
            value = (amount or 0) if pays and asset == cfg.native_asset else 0
            fee = int(gas or 0) * (max_fee if max_fee is not None else gas_price or 0)
            coins[nonce] = max(coins[nonce], fee + value)
            if pays and token is not None and asset == token:
                tokens[nonce] = max(tokens[nonce], amount or 0)
        if len(coins) != w.nonce - count:
            return None  # a nonce in between is not one the engine allocated
        return sum(coins.values()), sum(tokens.values())

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
            try:
                await self._check_funds(w, cfg, rpc, balances, tx["gas"] * fees.per_gas_ceiling)
            except ChainIdMismatch as e:
                raise fail(ErrorCode.CHAIN_ID_MISMATCH, str(e)) from e
            except RpcUnavailable as e:
                raise rpc_down(e) from e
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
