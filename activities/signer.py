"""Keystore signer: decrypts the hot wallets' encrypted keystores once, signs inside the process.

Only the raw signed transaction and its hash leave `sign`; the key object refuses to print itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_typing import HexStr
from eth_utils import to_checksum_address


class _Key:
    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        self._key = key

    def __repr__(self) -> str:
        return "<redacted key>"

    __str__ = __repr__


class SignerUnavailable(Exception):
    pass


class KeystoreSigner:
    def __init__(self, keys: dict[str, _Key]) -> None:
        self._keys = keys

    @classmethod
    def from_dir(cls, directory: Path, password: str) -> KeystoreSigner:
        keys: dict[str, _Key] = {}
        for path in sorted(Path(directory).glob("*.json")) if Path(directory).exists() else []:
            data = json.loads(path.read_text())
            address = to_checksum_address("0x" + data["address"].removeprefix("0x"))
            keys[address] = _Key(bytes(Account.decrypt(data, password)))
        return cls(keys)

    @property
    def addresses(self) -> list[str]:
        return list(self._keys)

    def has(self, address: str) -> bool:
        return address in self._keys

    def sign(self, address: str, tx: dict[str, Any]) -> tuple[str, str]:
        """Sign `tx` with `address`'s key; returns (raw transaction hex, transaction hash hex)."""
        key = self._keys.get(address)
        if key is None:
            raise SignerUnavailable(f"no key for hot wallet {address} in the keystore")
        signed = Account.sign_transaction(tx, key._key)
        return "0x" + signed.raw_transaction.hex().removeprefix("0x"), "0x" + signed.hash.hex().removeprefix(
            "0x"
        )


def write_keystore(directory: Path, private_key: str, password: str, *, iterations: int | None = None) -> str:
    """Encrypt a key into `directory` (idempotent per address). Returns the address."""
    directory.mkdir(parents=True, exist_ok=True)
    address = Account.from_key(private_key).address
    path = directory / f"{address.lower()}.json"
    if not path.exists():
        if iterations is None:
            data = Account.encrypt(HexStr(private_key), password, kdf="scrypt")
        else:
            data = Account.encrypt(HexStr(private_key), password, kdf="pbkdf2", iterations=iterations)
        path.write_text(json.dumps(data))
        path.chmod(0o600)
    return address
