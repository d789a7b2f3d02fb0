"""Amounts: decimal strings at the edges, integers in base units inside."""

from __future__ import annotations

import re
from decimal import Decimal

UINT256_MAX = 2**256 - 1
# MySQL/MariaDB DECIMAL holds at most 65 digits: the largest amount the engine records (10^47 whole tokens
# at 18 decimals, far beyond any real supply).
MAX_AMOUNT_UNITS = 10**65 - 1
# ASCII digits only (`\d` would take any Unicode digit), matched against the whole string.
_AMOUNT_RE = re.compile(r"(?P<int>[0-9]+)(?:\.(?P<frac>[0-9]+))?")


class AmountError(ValueError):
    pass


def parse_amount(text: str, decimals: int) -> int:
    """Parse a positive decimal string into base units, refusing more decimals than the asset has.

    No floats, no exponents, no signs: what a client sends is exactly what is paid.
    """
    if not isinstance(text, str):
        raise AmountError("amount must be a decimal string")
    m = _AMOUNT_RE.fullmatch(text)
    if m is None or len(text) > 100:
        raise AmountError('amount must be a plain decimal string such as "12.5"')
    frac = (m.group("frac") or "").rstrip("0")
    if len(frac) > decimals:
        raise AmountError(f"amount has more than {decimals} decimal places")
    units: int = int(m.group("int")) * 10**decimals + (int(frac.ljust(decimals, "0")) if frac else 0)
    if units <= 0:
        raise AmountError("amount must be greater than zero")
    if units > min(UINT256_MAX, MAX_AMOUNT_UNITS):
        raise AmountError("amount is larger than the asset can represent")
    return units


def format_amount(units: int, decimals: int) -> str:
    """Base units to the shortest exact decimal string ("1.5", "250")."""
    sign = "-" if units < 0 else ""
    units = abs(units)
    whole, frac = divmod(units, 10**decimals) if decimals else (units, 0)
    if not frac:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{str(frac).rjust(decimals, '0').rstrip('0')}"


def to_units(value: Decimal, decimals: int) -> int:
    """A configured limit (Decimal in asset units) in base units, rounded down."""
    return int(value.scaleb(decimals).to_integral_value(rounding="ROUND_FLOOR"))
