"""Dev-chain setup: deploy the test tokens (committed artifact from contracts/), fund hot wallets."""

from __future__ import annotations

import json
import time
from typing import Any

from eth_account import Account
from eth_utils import to_checksum_address
from web3 import Web3
from web3.utils import get_create_address

from settings import ROOT

# anvil's default mnemonic: account 0 is the dev hot wallet, account 9 deploys and owns the tokens.
ANVIL_KEYS = {
    0: "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    9: "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
}
DEPLOYER_KEY = ANVIL_KEYS[9]
DEPLOYER = Account.from_key(DEPLOYER_KEY).address
TOKENS = (("USDT", "Tether USD (test)", 6), ("USDC", "USD Coin (test)", 6))


def artifact() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / "contracts" / "build" / "TestToken.json").read_text())
    return data


def web3_for(url: str) -> Web3:
    return Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 30}))


def token_contract(w3: Web3, address: str) -> Any:
    return w3.eth.contract(address=to_checksum_address(address), abi=artifact()["abi"])


def send(w3: Web3, key: str, tx: dict[str, Any], *, wait: bool = True) -> str:
    acct = Account.from_key(key)
    tx.setdefault("from", acct.address)
    tx.setdefault("nonce", w3.eth.get_transaction_count(acct.address, "pending"))
    tx.setdefault("chainId", w3.eth.chain_id)
    if "maxFeePerGas" not in tx:
        tx.setdefault("gasPrice", w3.eth.gas_price * 2)
    if "gas" not in tx:
        tx["gas"] = int(w3.eth.estimate_gas(tx) * 1.3)  # type: ignore[arg-type]
    signed = Account.sign_transaction(tx, key)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    if wait:
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60, poll_latency=0.2)
        if receipt["status"] != 1:
            raise RuntimeError(f"transaction {tx_hash.hex()} reverted")
    return "0x" + tx_hash.hex().removeprefix("0x")


def deploy_tokens(url: str) -> dict[str, str]:
    """Deploy USDT and USDC from the deployer at nonces 0 and 1, or find them there. Returns addresses."""
    w3 = web3_for(url)
    art = artifact()
    out: dict[str, str] = {}
    for i, (symbol, name, decimals) in enumerate(TOKENS):
        address = get_create_address(DEPLOYER, i)  # type: ignore[arg-type]
        if w3.eth.get_code(address) in (b"", b"\x00"):
            if w3.eth.get_transaction_count(DEPLOYER, "pending") != i:
                raise RuntimeError(f"deployer nonce moved: cannot deploy {symbol} at {address}")
            factory = w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
            tx = factory.constructor(name, symbol, decimals).build_transaction(
                {"from": DEPLOYER, "nonce": i, "gasPrice": w3.eth.gas_price * 2}
            )
            send(w3, DEPLOYER_KEY, dict(tx))
        out[symbol] = address
    return out


def mint(url: str, token: str, to: str, amount: int, *, wait: bool = True) -> str:
    w3 = web3_for(url)
    c = token_contract(w3, token)
    tx = c.functions.mint(to_checksum_address(to), amount).build_transaction(
        {"from": DEPLOYER, "gas": 120_000}
    )
    tx.pop("nonce", None)
    return send(w3, DEPLOYER_KEY, dict(tx), wait=wait)


def set_balance(url: str, address: str, wei: int) -> None:
    web3_for(url).provider.make_request("anvil_setBalance", [address, hex(wei)])  # type: ignore[arg-type]


def token_balance(url: str, token: str, address: str) -> int:
    return int(token_contract(web3_for(url), token).functions.balanceOf(to_checksum_address(address)).call())


def blacklist(url: str, token: str, address: str, listed: bool = True) -> None:
    c = token_contract(web3_for(url), token)
    fn = c.functions.addBlackList if listed else c.functions.removeBlackList
    tx = fn(to_checksum_address(address)).build_transaction({"from": DEPLOYER, "gas": 100_000})
    tx.pop("nonce", None)
    send(web3_for(url), DEPLOYER_KEY, dict(tx))


def fund_hot_wallet(
    url: str, wallet: str, tokens: dict[str, str], *, native_wei: int, token_units: int
) -> None:
    """Top up native coin (anvil_setBalance) and mint tokens until the wallet holds `token_units`."""
    w3 = web3_for(url)
    if w3.eth.get_balance(to_checksum_address(wallet)) < native_wei:
        set_balance(url, wallet, native_wei)
    for address in tokens.values():
        have = token_balance(url, address, wallet)
        if have < token_units:
            mint(url, address, wallet, token_units - have)


def wait_for_rpc(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            web3_for(url).eth.block_number  # noqa: B018
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
