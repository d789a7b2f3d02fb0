"""EVM address validation."""

from __future__ import annotations

import re

from eth_utils import is_checksum_address, to_checksum_address

_HEX_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")  # matched against the whole string (fullmatch)
# The precompiled contracts every EVM chain has at 0x..01 - 0x..0a: a transfer there is lost.
PRECOMPILES = frozenset(f"0x{n:040x}" for n in range(1, 11))


class AddressError(ValueError):
    pass


def normalize_address(text: str) -> str:
    """Return the EIP-55 form. Mixed case must already be a valid checksum; all-lower/upper is accepted."""
    if not isinstance(text, str) or not _HEX_ADDRESS.fullmatch(text):
        raise AddressError("address must be 0x followed by 40 hex characters")
    body = text[2:]
    if body != body.lower() and body != body.upper() and not is_checksum_address(text):
        raise AddressError("address has an invalid EIP-55 checksum")
    if int(body, 16) == 0:
        raise AddressError("the zero address cannot receive withdrawals")
    if text.lower() in PRECOMPILES:
        raise AddressError("a precompiled contract cannot receive withdrawals")
    return str(to_checksum_address(text))
