from __future__ import annotations

import pytest

from models.addresses import AddressError, normalize_address

CHECKSUMMED = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"


def test_checksummed_lower_and_upper_case_are_accepted() -> None:
    assert normalize_address(CHECKSUMMED) == CHECKSUMMED
    assert normalize_address(CHECKSUMMED.lower()) == CHECKSUMMED
    assert normalize_address("0x" + CHECKSUMMED[2:].upper()) == CHECKSUMMED


@pytest.mark.parametrize(
    "bad",
    [
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD",  # wrong checksum
        "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beae",  # 39 hex chars
        "5aaeb6053f3e94c9b9a09f33669435e7ef1beaed",  # no 0x
        "0xZZaeb6053f3e94c9b9a09f33669435e7ef1beaed",
        "0x0000000000000000000000000000000000000000",
        "",
        "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq",
    ],
)
def test_invalid_addresses_are_refused(bad: str) -> None:
    with pytest.raises(AddressError):
        normalize_address(bad)


@pytest.mark.parametrize(
    "bad",
    [
        CHECKSUMMED + "\n",
        CHECKSUMMED.lower() + "\n",
        " " + CHECKSUMMED,
        "0x" + "0" * 39 + "1",
        "0x" + "0" * 38 + "0a",
    ],
)
def test_whole_string_and_precompiles(bad: str) -> None:
    with pytest.raises(AddressError):
        normalize_address(bad)
    assert normalize_address("0x" + "0" * 38 + "0b") == "0x" + "0" * 38 + "0b"
