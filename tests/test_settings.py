from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from settings import ROOT, EngineConfig, Settings


def test_dev_secrets_refuse_to_load_outside_dev() -> None:
    with pytest.raises(ValidationError, match="development default"):
        Settings(env="prod", database_url="mysql+aiomysql://u:p@h/db")
    strong: dict[str, Any] = {
        name: SecretStr(secrets.token_urlsafe(32))
        for name in ("keystore_password", "jwt_secret", "webhook_secret")
    }
    ok = Settings(env="prod", database_url="mysql+aiomysql://u:p@h/db", **strong)
    assert ok.env == "prod"
    for weak in ("k" * 40, "short-but-random-ish-9f8e", secrets.token_hex(8)):
        with pytest.raises(ValidationError, match="at least 32 random bytes"):
            Settings(
                env="prod",
                database_url="mysql+aiomysql://u:p@h/db",
                **(strong | {"jwt_secret": SecretStr(weak)}),
            )


def test_dev_refuses_a_mainnet_chain_id(tmp_path: Path) -> None:
    text = (ROOT / "config" / "dev.toml").read_text().replace("chain_id = 31338", "chain_id = 56")
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(ValueError, match="mainnet"):
        _ = Settings(env="dev", config_file=tmp_path / "c.toml").engine_config


def test_a_config_whose_asset_has_no_limits_refuses_to_load(tmp_path: Path) -> None:
    text = (ROOT / "config" / "dev.toml").read_text()
    lines = text.splitlines(keepends=True)
    usdc = next(line for line in lines if line.startswith("USDC = { per_transaction"))
    text = text.replace(usdc, "", 1)
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(ValidationError, match="assets without limits"):
        EngineConfig.load(tmp_path / "c.toml")


def test_secrets_do_not_appear_in_repr() -> None:
    s = Settings(keystore_password=SecretStr("hunter2-very-secret"))
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.model_dump())


def test_dev_config_has_three_networks_with_six_decimal_tokens_and_three_confirmations() -> None:
    cfg = EngineConfig.load(ROOT / "config" / "dev.toml")
    assert set(cfg.networks) == {"ethereum", "bsc", "polygon"}
    chain_ids = {n.chain_id for n in cfg.networks.values()}
    assert len(chain_ids) == 3 and not chain_ids & {1, 56, 137}
    for net in cfg.networks.values():
        assert net.required_confirmations >= 3
        assert {t: tok.decimals for t, tok in net.tokens.items()} == {"USDT": 6, "USDC": 6}
    assert cfg.networks["bsc"].fee_model == "legacy"
