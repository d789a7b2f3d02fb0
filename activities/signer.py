"""Keystore signer: decrypts the hot wallets' encrypted keystores once, signs inside the process.

Only the raw signed transaction and its hash leave `sign`; the key object refuses to print itself.
"""

from __future__ import annotations

import json
import os
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
            secret = bytes(Account.decrypt(data, password))
            # The address is the decrypted key's, never the file's unauthenticated `address` field.
            address = to_checksum_address(Account.from_key(secret).address)
            if (
                data.get("address")
                and to_checksum_address("0x" + str(data["address"]).removeprefix("0x")) != address
            ):
                raise SignerUnavailable(f"keystore {path.name} names another address than its key")
            keys[address] = _Key(secret)
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
        # Created 0600 from the start: the file is never readable by others, not even for a moment.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(data))
    return address
