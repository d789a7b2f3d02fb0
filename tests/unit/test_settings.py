from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from settings import ROOT, EngineConfig, Settings


def test_dev_secrets_refuse_to_load_outside_dev() -> None:
    with pytest.raises(ValidationError, match="development default"):
        Settings(env="prod", database_url="mysql+aiomysql://u:p@h/db")
    ok = Settings(
        env="prod",
        database_url="mysql+aiomysql://u:p@h/db",
        keystore_password=SecretStr("k" * 20),
        jwt_secret=SecretStr("j" * 40),
        webhook_secret=SecretStr("w" * 20),
    )
    assert ok.env == "prod"


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
