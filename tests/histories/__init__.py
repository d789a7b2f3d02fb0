"""Committed workflow histories (one per scenario, the current shape), replayed by tests/test_replay.py."""

SCENARIOS = (
    "native_ethereum_confirmed",
    "erc20_polygon_confirmed",
    "needs_attention_retry_confirmed",
    "cancel_after_broadcast",
    "reorg_confirmed",
    "approval_approved_confirmed",
    "approval_rejected",
)
