"""Validation of a withdrawal request: the API runs it before anything is written, and the admission
activity runs it again for every workflow, so one started around the API (CLI, Web UI) with a bad
address or amount is REJECTED before anything is signed."""

from __future__ import annotations

import re
from dataclasses import dataclass

from models.addresses import AddressError, normalize_address
from models.amounts import MAX_AMOUNT_UNITS, AmountError, parse_amount, to_units
from models.errors import ErrorCode
from settings import EngineConfig

_BASE_UNITS = re.compile(r"[1-9][0-9]{0,77}")


@dataclass(frozen=True)
class RequestRefused(Exception):
    code: ErrorCode
    message: str
    field: str | None = None


def denied_recipients(config: EngineConfig, network: str) -> frozenset[str]:
    """Recipients that can never be right: the engine's own hot wallets and the token contracts it
    knows (lower case). The zero address and the precompiles are refused by `normalize_address`."""
    cfg = config.networks[network]
    own = {w.lower() for n in config.networks.values() for w in n.hot_wallets}
    tokens = {t.address.lower() for t in cfg.tokens.values()}
    return frozenset(own | tokens | {a.lower() for a in cfg.denied_recipients})


def validate_recipient(config: EngineConfig, network: str, to_address: str) -> str:
    try:
        address = normalize_address(to_address)
    except AddressError as e:
        raise RequestRefused(ErrorCode.INVALID_ADDRESS, str(e), "to_address") from e
    if address.lower() in denied_recipients(config, network):
        raise RequestRefused(
            ErrorCode.INVALID_ADDRESS,
            "this address cannot receive withdrawals (an engine or token address)",
            "to_address",
        )
    return address


def check_network_asset(config: EngineConfig, network: str, asset: str) -> int:
    """The asset's decimals on the network."""
    net = config.network(network)
    if net is None:
        raise RequestRefused(ErrorCode.UNSUPPORTED_NETWORK, "unsupported network", "network")
    decimals = net.asset_decimals(asset)
    if decimals is None:
        raise RequestRefused(ErrorCode.UNSUPPORTED_ASSET, f"asset is not supported on {network}", "asset")
    return decimals


def check_limit(config: EngineConfig, network: str, asset: str, units: int, decimals: int) -> None:
    limits = config.networks[network].limits.get(asset)
    if limits is not None and units > to_units(limits.per_transaction, decimals):
        raise RequestRefused(
            ErrorCode.LIMIT_EXCEEDED,
            f"amount is above the per-transaction limit of {limits.per_transaction} {asset}",
            "amount",
        )


def validate_request(
    config: EngineConfig, network: str, asset: str, to_address: str, amount: str
) -> tuple[str, int]:
    """A request as a client sends it (`amount` a decimal string in the asset's units): returns the
    checksummed recipient and the amount in base units, or raises `RequestRefused`."""
    decimals = check_network_asset(config, network, asset)
    address = validate_recipient(config, network, to_address)
    try:
        units = parse_amount(amount, decimals)
    except AmountError as e:
        raise RequestRefused(ErrorCode.INVALID_AMOUNT, str(e), "amount") from e
    check_limit(config, network, asset, units, decimals)
    return address, units


def revalidate(config: EngineConfig, network: str, asset: str, to_address: str, amount_units: str) -> int:
    """A workflow's input (`amount_units` in base units), checked again by the admission step."""
    decimals = check_network_asset(config, network, asset)
    validate_recipient(config, network, to_address)
    if not isinstance(amount_units, str) or not _BASE_UNITS.fullmatch(amount_units):
        raise RequestRefused(
            ErrorCode.INVALID_AMOUNT, "amount must be a positive integer of base units", "amount"
        )
    units = int(amount_units)
    if units > MAX_AMOUNT_UNITS:
        raise RequestRefused(
            ErrorCode.INVALID_AMOUNT, "amount is larger than the asset can represent", "amount"
        )
    check_limit(config, network, asset, units, decimals)
    return units
