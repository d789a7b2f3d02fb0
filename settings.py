"""One typed place for configuration.

`Settings` comes from the environment (prefix ``WE_``) and ``.env``; it says where things are
(database, Temporal, the network config file, the keystore) and holds the secrets.
`EngineConfig` comes from the network config file (TOML or JSON): networks, tokens, hot wallets,
confirmations, fee caps and limits. Workflows never read either: what they need arrives in
their input or from an activity.
"""

from __future__ import annotations

import json
import tomllib
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Literal

from eth_utils import is_address, to_checksum_address
from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parent

# Well-known development secrets. They are fine on a laptop and refused anywhere else.
DEV_KEYSTORE_PASSWORD = "dev-keystore-password"  # noqa: S105
DEV_JWT_SECRET = "dev-jwt-secret-change-me-0123456789abcdef"  # noqa: S105
DEV_WEBHOOK_SECRET = "dev-webhook-secret"  # noqa: S105


MIN_SECRET_BYTES = 32
# Chain ids of public mainnets (Ethereum, BSC, Polygon and other large EVM chains): refused outside prod.
MAINNET_CHAIN_IDS = frozenset(
    {1, 10, 25, 56, 100, 137, 250, 324, 1101, 5000, 8453, 42161, 42220, 43114, 59144, 534352}
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WE_", env_file=".env", extra="ignore")

    env: Literal["dev", "test", "prod"] = "dev"
    data_dir: Path = ROOT / ".data"
    database_url: str = ""
    config_file: Path = ROOT / "config" / "dev.toml"
    keystore_dir: Path | None = None
    keystore_password: SecretStr = SecretStr(DEV_KEYSTORE_PASSWORD)
    jwt_secret: SecretStr = SecretStr(DEV_JWT_SECRET)
    jwt_ttl_seconds: int = 3600
    webhook_secret: SecretStr = SecretStr(DEV_WEBHOOK_SECRET)
    redis_url: str | None = None

    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    temporal_ui_url: str = "http://127.0.0.1:8233"  # the Web UI: admin detail links to a workflow's page
    task_queue: str = "withdrawals"
    # Nonce reconciliation per hot wallet (a Temporal Schedule); 0 disables it.
    reconcile_interval_seconds: int = 30
    # Worker slots (docs/benchmarks.md, "Worker slots"): workflows kept in memory between tasks (an
    # evicted one is replayed from its history on its next task), and tasks run at once.
    worker_max_cached_workflows: int = Field(default=2000, ge=0)
    worker_max_concurrent_workflow_tasks: int = Field(default=100, ge=2)
    worker_max_concurrent_activities: int = Field(default=100, ge=1)
    worker_max_concurrent_local_activities: int = Field(default=200, ge=1)
    # `await_transaction`, on its own task queue (models.domain.waits_queue): one per withdrawal
    # waiting for its transaction, mostly asleep until the next block.
    worker_max_concurrent_waits: int = Field(default=2000, ge=1)

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    rate_limit_per_minute: int = 600
    # An API key found by its secret is read again after this long: a key revoked in another API
    # process is refused within it (in the same process at once). 0: read on every request.
    api_key_cache_seconds: float = Field(default=2.0, ge=0, le=60)
    # Per client IP before authentication, and per (API key, user_id) for withdrawal creation; unset:
    # 5x and 1/10 of rate_limit_per_minute (api/ratelimit.py).
    rate_limit_per_ip_per_minute: int | None = Field(default=None, ge=1)
    rate_limit_per_user_per_minute: int | None = Field(default=None, ge=1)
    log_level: str = "INFO"
    otel_exporter: str | None = None  # "console": OpenTelemetry spans of workflows/activities to stdout
    # Clients: `X-Forwarded-For` is believed only from these peers (IPs or CIDRs); CORS is off unless set.
    trusted_proxies: list[str] = []
    cors_origins: list[str] = []
    # Operators: login attempts per IP and per username per minute; approval tokens' lifetime.
    login_attempts_per_minute: int = 10
    approval_token_ttl_seconds: int = 300
    # Kill switch: how often a paused withdrawal looks again (a resume takes effect within this).
    pause_poll_seconds: float = 5.0
    # Alerts: Slack incoming webhook and PagerDuty Events v2 (either may be unset: that sink is off).
    slack_webhook_url: SecretStr | None = None
    pagerduty_events_url: str = "https://events.pagerduty.com/v2/enqueue"
    pagerduty_routing_key: SecretStr | None = None
    alert_pending_after_seconds: int = 1800  # a withdrawal not final after this long is alerted
    monitor_interval_seconds: int = 30  # health checks that raise and resolve alerts; 0 disables
    # Webhooks: a 2xx within the timeout is success; retries back off exponentially from the initial
    # interval up to the maximum, for the window (3 days); the sweeper re-kicks deliveries still
    # pending after `webhook_sweep_after_seconds` (every `webhook_sweep_interval_seconds`; 0 disables).
    webhook_timeout_seconds: float = 10.0
    webhook_retry_initial_seconds: float = 5.0
    webhook_retry_max_interval_seconds: float = 3600.0
    webhook_retry_window_seconds: int = 3 * 86_400
    webhook_sweep_interval_seconds: int = 30
    webhook_sweep_after_seconds: int = 60

    @model_validator(mode="after")
    def _enforce_non_default_secrets(self) -> Settings:
        if self.env == "prod":
            for name, dev_value in (
                ("keystore_password", DEV_KEYSTORE_PASSWORD),
                ("jwt_secret", DEV_JWT_SECRET),
                ("webhook_secret", DEV_WEBHOOK_SECRET),
            ):
                value = getattr(self, name).get_secret_value()
                if value == dev_value:
                    raise ValueError(f"WE_{name.upper()} is the development default; set a real secret")
                if len(value.encode()) < MIN_SECRET_BYTES or len(set(value)) < 10:
                    raise ValueError(
                        f"WE_{name.upper()} must be at least {MIN_SECRET_BYTES} random bytes "
                        "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
                    )
            if not self.database_url:
                raise ValueError("WE_DATABASE_URL must be set outside dev")
        return self

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'engine.db'}"

    @property
    def keystore_path(self) -> Path:
        return self.keystore_dir or self.data_dir / "keystore"

    @cached_property
    def engine_config(self) -> EngineConfig:
        config = EngineConfig.load(self.config_file)
        if self.env != "prod":  # dev keys and secrets must never touch a real chain
            real = {n: c.chain_id for n, c in config.networks.items() if c.chain_id in MAINNET_CHAIN_IDS}
            if real:
                raise ValueError(f"WE_ENV={self.env} refuses mainnet chain ids: {real}")
        return config


class TokenConfig(BaseModel):
    address: str
    decimals: int = Field(ge=0, le=36)

    @field_validator("address")
    @classmethod
    def _checksum(cls, v: str) -> str:
        if not is_address(v):
            raise ValueError(f"not an address: {v}")
        return to_checksum_address(v)


class AssetLimits(BaseModel):
    """Limits in the asset's own units (decimal strings in the file)."""

    per_transaction: Decimal
    daily_per_user: Decimal
    approval_threshold: Decimal
    # Above this an approval needs two distinct approvers (four eyes); None: one approver suffices.
    four_eyes_threshold: Decimal | None = None


class NetworkConfig(BaseModel):
    chain_id: int
    rpc_urls: list[str] = Field(min_length=1)
    native_asset: str
    native_decimals: int = 18
    fee_model: Literal["eip1559", "legacy"]
    required_confirmations: int = Field(ge=1)
    block_time_seconds: float = 12.0
    hot_wallets: list[str] = Field(min_length=1)
    tokens: dict[str, TokenConfig] = {}
    limits: dict[str, AssetLimits] = {}
    # Per asset, in its units: a hot wallet below this is reported low (health) and alerted.
    min_hot_wallet_balance: dict[str, Decimal] = {}
    max_fee_per_gas_cap_gwei: Decimal = Decimal(500)
    priority_fee_gwei: Decimal = Decimal("1.5")
    legacy_gas_price_multiplier: Decimal = Decimal("1.2")
    native_gas_limit: int = 21_000
    # A native transfer to a contract runs its code: its gas limit is capped here (more is refused).
    native_contract_gas_limit_cap: int = 50_000
    token_gas_limit_cap: int = 200_000
    # Cancellations and nonce fills are not held by the fee cap, but never pay more than this multiple.
    cancel_fee_cap_multiple: int = Field(default=4, ge=1)
    gas_limit_margin: Decimal = Decimal("1.25")
    rpc_timeout_seconds: float = 10.0
    # "confirmations": CONFIRMED after `required_confirmations` blocks; "finalized": once the block is at
    # or below the node's `finalized` block (and at least `required_confirmations` deep).
    finality: Literal["confirmations", "finalized"] = "confirmations"
    # Recipients refused besides the zero address, the precompiles, hot wallets and known tokens.
    denied_recipients: list[str] = []
    # Not mined after this many blocks: replace at the same nonce with both fees raised >= 12.5%.
    stuck_after_blocks: int = Field(default=12, ge=1)

    @field_validator("hot_wallets")
    @classmethod
    def _checksum_wallets(cls, v: list[str]) -> list[str]:
        for a in v:
            if not is_address(a):
                raise ValueError(f"not an address: {a}")
        return [to_checksum_address(a) for a in v]

    @model_validator(mode="after")
    def _every_asset_has_limits(self) -> NetworkConfig:
        missing = [a for a in self.assets if a not in self.limits]
        if missing:
            raise ValueError(
                f"assets without limits (per_transaction, daily_per_user, approval_threshold): {missing}"
            )
        return self

    @field_validator("chain_id")
    @classmethod
    def _chain_id(cls, v: int) -> int:
        if v <= 0:
            raise ValueError("chain_id must be positive")
        return v

    def asset_decimals(self, asset: str) -> int | None:
        if asset == self.native_asset:
            return self.native_decimals
        token = self.tokens.get(asset)
        return token.decimals if token else None

    @property
    def assets(self) -> list[str]:
        return [self.native_asset, *self.tokens]

    def fee_allowance_wei(self, asset: str) -> int:
        """Worst-case fee reserved from the native balance: the largest gas limit a transfer of the
        asset may be signed with times the max fee cap (signing never exceeds either)."""
        cancel = self.native_gas_limit * self.cancel_fee_cap_multiple  # a cancel may pay up to the ceiling
        transfer = (
            max(self.native_gas_limit, self.native_contract_gas_limit_cap)
            if asset == self.native_asset
            else self.token_gas_limit_cap
        )
        return max(transfer, cancel) * int(self.max_fee_per_gas_cap_gwei * 10**9)


class EngineConfig(BaseModel):
    networks: dict[str, NetworkConfig]
    approval_timeout_seconds: int = 86_400
    funds_retry_seconds: int = 15

    @classmethod
    def load(cls, path: Path) -> EngineConfig:
        text = Path(path).read_text()
        data = json.loads(text) if str(path).endswith(".json") else tomllib.loads(text)
        return cls.model_validate(data)

    def network(self, name: str) -> NetworkConfig | None:
        return self.networks.get(name)
