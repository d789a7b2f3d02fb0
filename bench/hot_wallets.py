"""Prepare a stack whose network has several hot wallets (anvil's dev accounts 0..k-1).

    .venv/bin/python bench/hot_wallets.py --wallets 4 [--network ethereum] [--data-dir .data]
        [--config config/dev.toml] [--out .data/bench/hot-wallets-4.toml]
    WE_CONFIG_FILE=.data/bench/hot-wallets-4.toml make run

Writes a copy of the config whose `hot_wallets` for the network are anvil's accounts 0..k-1, and the
encrypted keystores of those accounts into the data dir's `keystore/` (the devstack writes account 0's
only; `write_keystore` is idempotent per address). Run it before the stack starts, or restart the
worker afterwards (the devstack restarts a killed worker): the worker reads the keystore at start.
anvil funds accounts 0..9 with 10,000 ETH, and the devstack tops up every configured hot wallet.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from eth_account import Account  # noqa: E402

from activities.signer import write_keystore  # noqa: E402

# anvil's default mnemonic: its dev accounts are public, well-known keys. Derived rather than copied,
# so that a mistyped key cannot put a wallet anvil never funded into the config.
ANVIL_MNEMONIC = "test test test test test test test test test test test junk"
MAX_WALLETS = 10  # anvil funds accounts 0..9


def anvil_dev_key(index: int) -> str:
    Account.enable_unaudited_hdwallet_features()
    acct = Account.from_mnemonic(ANVIL_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
    return "0x" + bytes(acct.key).hex()


DEV_KEYSTORE_PASSWORD = "dev-keystore-password"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--wallets", type=int, default=4, choices=range(1, MAX_WALLETS + 1))
    p.add_argument("--network", default="ethereum")
    p.add_argument("--data-dir", type=Path, default=ROOT / ".data")
    p.add_argument("--config", type=Path, default=ROOT / "config" / "dev.toml")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--password", default=DEV_KEYSTORE_PASSWORD)
    a = p.parse_args()
    keys = [anvil_dev_key(i) for i in range(a.wallets)]
    addresses = [Account.from_key(k).address for k in keys]
    text = a.config.read_text()
    section = re.search(rf"^\[networks\.{re.escape(a.network)}\]\s*$", text, re.M)
    if section is None:
        sys.exit(f"no [networks.{a.network}] in {a.config}")
    line = re.compile(r"^hot_wallets\s*=.*$", re.M)
    m = line.search(text, section.end())
    if m is None:
        sys.exit(f"no hot_wallets under [networks.{a.network}] in {a.config}")
    wallets = "hot_wallets = [" + ", ".join(f'"{x}"' for x in addresses) + "]"
    text = text[: m.start()] + wallets + text[m.end() :]
    out = a.out or a.data_dir / "bench" / f"hot-wallets-{a.wallets}.toml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    for k in keys:
        write_keystore(a.data_dir / "keystore", k, a.password)
    print(f"config: {out}")
    print(f"hot wallets of {a.network}: {', '.join(addresses)}")
    print(f"keystores in {a.data_dir / 'keystore'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
