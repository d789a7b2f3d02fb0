from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from activities import fees

GWEI = 10**9


def test_eip1559_doubles_base_fee_plus_priority() -> None:
    f = fees.eip1559(base_fee=10 * GWEI, priority_fee=2 * GWEI, cap=500 * GWEI)
    assert f.max_fee_per_gas == 22 * GWEI and f.max_priority_fee_per_gas == 2 * GWEI and f.gas_price is None


def test_eip1559_is_capped_and_refuses_when_the_cap_cannot_cover_the_base_fee() -> None:
    f = fees.eip1559(base_fee=100 * GWEI, priority_fee=2 * GWEI, cap=150 * GWEI)
    assert f.max_fee_per_gas == 150 * GWEI
    with pytest.raises(fees.FeeAboveCap):
        fees.eip1559(base_fee=200 * GWEI, priority_fee=2 * GWEI, cap=150 * GWEI)


def test_legacy_multiplies_and_caps() -> None:
    assert fees.legacy(10 * GWEI, Decimal("1.2"), 500 * GWEI).gas_price == 12 * GWEI
    assert fees.legacy(450 * GWEI, Decimal("1.2"), 500 * GWEI).gas_price == 500 * GWEI
    with pytest.raises(fees.FeeAboveCap):
        fees.legacy(501 * GWEI, Decimal("1.2"), 500 * GWEI)


@given(st.integers(min_value=0, max_value=10**30))
def test_bump_is_at_least_12_5_percent_and_strictly_more(value: int) -> None:
    b = fees.bumped(value)
    assert b > value and b * 8 >= value * 9


def test_replacement_raises_both_fields_above_the_previous_attempt() -> None:
    prev = fees.Fees(max_fee_per_gas=100, max_priority_fee_per_gas=10)
    fresh = fees.Fees(max_fee_per_gas=90, max_priority_fee_per_gas=5)
    r = fees.replacement(fresh, prev)
    assert r.max_fee_per_gas is not None and r.max_priority_fee_per_gas is not None
    assert r.max_fee_per_gas >= 112.5 and r.max_priority_fee_per_gas >= 11.25
    assert fees.replacement(fees.Fees(gas_price=1), fees.Fees(gas_price=100)).gas_price == 113
