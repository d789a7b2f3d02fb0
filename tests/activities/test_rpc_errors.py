from __future__ import annotations

import pytest

from activities.rpc_errors import RpcErrorKind, classify

K = RpcErrorKind


@pytest.mark.parametrize(
    ("message", "code", "http", "kind"),
    [
        ("already known", -32000, None, K.ALREADY_KNOWN),
        ("transaction already imported", -32003, None, K.ALREADY_KNOWN),
        ("nonce too low: next nonce 5, tx nonce 4", -32000, None, K.NONCE_TOO_LOW),
        ("replacement transaction underpriced", -32000, None, K.REPLACEMENT_UNDERPRICED),
        ("transaction underpriced: tip needed 1, tip permitted 0", -32000, None, K.UNDERPRICED),
        (
            "max fee per gas less than block base fee: address 0x.., maxFeePerGas: 1 baseFee: 7",
            -32000,
            None,
            K.FEE_BELOW_BASE_FEE,
        ),
        ("insufficient funds for gas * price + value: balance 0", -32000, None, K.INSUFFICIENT_FUNDS),
        ("Insufficient funds for gas * price + value", -32003, None, K.INSUFFICIENT_FUNDS),
        ("intrinsic gas too low: have 20000, want 21000", -32000, None, K.INTRINSIC_GAS_TOO_LOW),
        ("execution reverted: TestToken: blacklisted", 3, None, K.EXECUTION_REVERTED),
        ("", 3, None, K.EXECUTION_REVERTED),
        ("too many requests", None, None, K.RATE_LIMITED),
        ("", None, 429, K.RATE_LIMITED),
        ("daily request count exceeded, request rate limited", -32005, None, K.RATE_LIMITED),
        ("request timed out", None, None, K.TIMEOUT),
        ("", None, 502, K.SERVER_ERROR),
        ("something new and strange", -32000, None, K.UNKNOWN),
    ],
)
def test_classification_table(message: str, code: int | None, http: int | None, kind: RpcErrorKind) -> None:
    assert classify(message, code=code, http_status=http) is kind


def test_only_rate_limits_timeouts_and_server_errors_are_transient() -> None:
    assert {k for k in K if k.transient} == {K.RATE_LIMITED, K.TIMEOUT, K.SERVER_ERROR}
