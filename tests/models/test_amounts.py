from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.amounts import MAX_AMOUNT_UNITS, UINT256_MAX, AmountError, format_amount, parse_amount, to_units


@pytest.mark.parametrize(
    ("text", "decimals", "units"),
    [("1", 18, 10**18), ("1.5", 6, 1_500_000), ("0.000001", 6, 1), ("250.10", 6, 250_100_000), ("007", 0, 7)],
)
def test_parse_amount(text: str, decimals: int, units: int) -> None:
    assert parse_amount(text, decimals) == units


@pytest.mark.parametrize(
    "text",
    [
        *("0", "0.0", "-1", "+1", "1e6", "1.", ".5", "", " 1", "1,5", "NaN", "Infinity", "0x10", "1.0000001"),
        *("1\n", "1 ", "\u0661\u0660", "\uff11", "1.\u0665", "\u00b9", "\u0967"),  # Unicode digits, newline
    ],
)
def test_parse_amount_refuses(text: str) -> None:
    with pytest.raises(AmountError):
        parse_amount(text, 6)


def test_more_decimals_than_the_asset_has_is_refused_but_trailing_zeros_are_not() -> None:
    with pytest.raises(AmountError, match="decimal places"):
        parse_amount("1.0000001", 6)
    assert parse_amount("1.1000000000", 6) == 1_100_000


def test_above_what_can_be_recorded_is_refused() -> None:
    for too_big in (UINT256_MAX + 1, MAX_AMOUNT_UNITS + 1):
        with pytest.raises(AmountError, match="larger"):
            parse_amount(str(too_big), 0)
    assert parse_amount(str(MAX_AMOUNT_UNITS), 0) == MAX_AMOUNT_UNITS


def test_non_string_is_refused() -> None:
    with pytest.raises(AmountError):
        parse_amount(1.5, 6)  # type: ignore[arg-type]


@given(
    units=st.integers(min_value=1, max_value=MAX_AMOUNT_UNITS),
    decimals=st.integers(min_value=0, max_value=24),
)
def test_format_then_parse_round_trips(units: int, decimals: int) -> None:
    assert parse_amount(format_amount(units, decimals), decimals) == units


@given(st.decimals(min_value=0, max_value=10**12, places=6, allow_nan=False, allow_infinity=False))
def test_to_units_matches_decimal_arithmetic(value: Decimal) -> None:
    assert to_units(value, 6) == int(value * 10**6)


def test_format_is_shortest_exact() -> None:
    assert format_amount(1_500_000, 6) == "1.5"
    assert format_amount(250 * 10**6, 6) == "250"
    assert format_amount(1, 18) == "0.000000000000000001"
