"""Fee math (pure). EIP-1559: max fee = 2 x base fee + priority fee, which survives six full blocks of
12.5% base-fee growth; legacy: node gas price x multiplier. Both are capped per network."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

# geth refuses a replacement unless both fee fields rise by at least 10%; we use 12.5% (see `bumped`).


@dataclass(frozen=True)
class Fees:
    max_fee_per_gas: int | None = None
    max_priority_fee_per_gas: int | None = None
    gas_price: int | None = None

    def tx_fields(self) -> dict[str, int]:
        """The fee fields of a transaction dict: legacy gasPrice, or type-2 EIP-1559 fields."""
        if self.gas_price is not None:
            return {"gasPrice": self.gas_price}
        return {
            "maxFeePerGas": int(self.max_fee_per_gas or 0),
            "maxPriorityFeePerGas": int(self.max_priority_fee_per_gas or 0),
            "type": 2,
        }

    @property
    def per_gas_ceiling(self) -> int:
        return self.gas_price if self.gas_price is not None else int(self.max_fee_per_gas or 0)


class FeeAboveCap(Exception):
    pass


def eip1559(base_fee: int, priority_fee: int, cap: int) -> Fees:
    priority = min(priority_fee, cap)
    max_fee = min(2 * base_fee + priority, cap)
    if max_fee < base_fee + priority:
        raise FeeAboveCap(f"base fee {base_fee} + priority {priority} exceeds the cap {cap} wei/gas")
    return Fees(max_fee_per_gas=max_fee, max_priority_fee_per_gas=priority)


def legacy(node_gas_price: int, multiplier: Decimal, cap: int) -> Fees:
    price = int((Decimal(node_gas_price) * multiplier).to_integral_value(rounding=ROUND_CEILING))
    if node_gas_price > cap:
        raise FeeAboveCap(f"gas price {node_gas_price} exceeds the cap {cap} wei/gas")
    return Fees(gas_price=min(price, cap))


def bumped(value: int) -> int:
    """At least 12.5% more, and always strictly more."""
    return max(value + 1, -(-value * 9 // 8))  # ceil(value x 1.125) in integers


def replacement(fresh: Fees, previous: Fees) -> Fees:
    """Fees for a replacement at the same nonce: the higher of the fresh quote and a bump of both fields."""
    if previous.gas_price is not None:
        return Fees(gas_price=max(fresh.gas_price or 0, bumped(previous.gas_price)))
    return Fees(
        max_fee_per_gas=max(fresh.max_fee_per_gas or 0, bumped(previous.max_fee_per_gas or 0)),
        max_priority_fee_per_gas=max(
            fresh.max_priority_fee_per_gas or 0, bumped(previous.max_priority_fee_per_gas or 0)
        ),
    )
