"""Every bad input of DESIGN §6 gets its code, never a 5xx; auth and idempotency semantics."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta

import pytest
from sqlalchemy import update

from models import repo
from models.tables import ApiClient
from tests.stack import Harness, native_body, new_wallet

DEAD = "0x000000000000000000000000000000000000dEaD"


def _body(**kw: object) -> dict[str, object]:
    b: dict[str, object] = {
        "user_id": "u-1",
        "network": "ethereum",
        "asset": "ETH",
        "to_address": DEAD,
        "amount": "0.01",
    }
    b.update(kw)
    return {k: v for k, v in b.items() if v is not None}


def _err(r, status: int, code: str) -> dict:  # type: ignore[no-untyped-def]
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        (_body(to_address="0x123"), "INVALID_ADDRESS", "to_address"),
        (_body(to_address="0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD"), "INVALID_ADDRESS", "to_address"),
        (_body(to_address=12345), "INVALID_ADDRESS", "to_address"),
        (_body(amount="0"), "INVALID_AMOUNT", "amount"),
        (_body(amount="-1"), "INVALID_AMOUNT", "amount"),
        (_body(amount="abc"), "INVALID_AMOUNT", "amount"),
        (_body(amount="1e3"), "INVALID_AMOUNT", "amount"),
        (_body(amount=1.5), "INVALID_AMOUNT", "amount"),
        (_body(asset="USDT", amount="1.0000001"), "INVALID_AMOUNT", "amount"),
        (_body(amount="9" * 90), "INVALID_AMOUNT", "amount"),
        (_body(network="bitcoin"), "UNSUPPORTED_NETWORK", "network"),
        (_body(asset="DOGE"), "UNSUPPORTED_ASSET", "asset"),
        (_body(network="bsc", asset="ETH"), "UNSUPPORTED_ASSET", "asset"),
        (_body(amount="1001"), "LIMIT_EXCEEDED", "amount"),
        (_body(user_id=None), "VALIDATION_ERROR", "user_id"),
        (_body(user_id=7), "VALIDATION_ERROR", "user_id"),
        (_body(user_id="   "), "VALIDATION_ERROR", "user_id"),
        (_body(amount=None), "VALIDATION_ERROR", "amount"),
        (_body(client_reference="x" * 300), "VALIDATION_ERROR", "client_reference"),
        (_body(to_address="0x" + "0" * 40), "INVALID_ADDRESS", "to_address"),
        (_body(to_address="0x" + "0" * 39 + "1"), "INVALID_ADDRESS", "to_address"),  # ecrecover
        (_body(to_address="0x" + "0" * 38 + "0a"), "INVALID_ADDRESS", "to_address"),  # point evaluation
        (_body(to_address=DEAD.lower() + "\n"), "INVALID_ADDRESS", "to_address"),
        (_body(to_address=" " + DEAD), "INVALID_ADDRESS", "to_address"),
        (_body(amount="\u0661\u0660"), "INVALID_AMOUNT", "amount"),  # Arabic-Indic "10"
        (_body(amount="10\n"), "INVALID_AMOUNT", "amount"),
        (_body(amount="\uff11"), "INVALID_AMOUNT", "amount"),  # fullwidth 1
        (_body(amount=" 1"), "INVALID_AMOUNT", "amount"),
        (_body(amount="0x10"), "INVALID_AMOUNT", "amount"),
    ],
)
async def test_refusals_have_their_codes(harness: Harness, body: dict, code: str, field: str) -> None:
    err = _err(await harness.request(body), 422, code)
    assert err.get("field") == field


@pytest.mark.parametrize("raw", [b"not json", b"[]", b"null", b'{"user_id": "u"'])
async def test_malformed_bodies_are_validation_errors(harness: Harness, raw: bytes) -> None:
    r = await harness.http.post(
        "/withdrawal/request", content=raw, headers={**harness.headers(), "Content-Type": "application/json"}
    )
    _err(r, 422, "VALIDATION_ERROR")


async def test_idempotency_key_is_required_and_bounded(harness: Harness) -> None:
    r = await harness.http.post("/withdrawal/request", json=_body(), headers={"X-API-Key": harness.api_key})
    _err(r, 400, "MISSING_IDEMPOTENCY_KEY")
    r = await harness.http.post(
        "/withdrawal/request", json={"garbage": True}, headers={"X-API-Key": harness.api_key}
    )
    _err(r, 400, "MISSING_IDEMPOTENCY_KEY")
    _err(await harness.request(_body(), key="k" * 256), 422, "VALIDATION_ERROR")


async def test_every_bad_key_gets_the_same_401(harness: Harness) -> None:
    revoked_key, expired_key = "we_revoked_" + uuid.uuid4().hex, "we_expired_" + uuid.uuid4().hex
    from devstack.bootstrap import ensure_api_client

    revoked = await ensure_api_client(harness.db, revoked_key, name="revoked")
    expired = await ensure_api_client(harness.db, expired_key, name="expired")
    async with harness.db.transaction() as s:
        await s.exec(update(ApiClient).where(ApiClient.id == revoked).values(active=False))  # type: ignore[call-overload,arg-type]
        await s.exec(
            update(ApiClient)
            .where(ApiClient.id == expired)  # type: ignore[call-overload,arg-type]
            .values(expires_at=datetime.utcnow() - timedelta(seconds=1))
        )
    bodies = []
    for key in (None, "", "we_unknown", revoked_key, expired_key, "x" * 500):
        headers = {"Idempotency-Key": "k1"} | ({"X-API-Key": key} if key is not None else {})
        for r in (
            await harness.http.post("/withdrawal/request", json=_body(), headers=headers),
            await harness.http.get(f"/withdrawal/status/{uuid.uuid4()}", headers=headers),
        ):
            assert r.status_code == 401
            bodies.append(r.json())
    assert all(b == bodies[0] for b in bodies) and bodies[0]["error"]["code"] == "UNAUTHORIZED"


async def test_read_only_key_is_forbidden_to_request(harness: Harness) -> None:
    from devstack.bootstrap import ensure_api_client

    key = "we_ro_" + uuid.uuid4().hex
    await ensure_api_client(harness.db, key, name="ro", scopes="withdrawals:read")
    r = await harness.http.post(
        "/withdrawal/request", json=_body(), headers={"X-API-Key": key, "Idempotency-Key": "a"}
    )
    _err(r, 403, "FORBIDDEN")


async def test_rate_limit_answers_429_with_retry_after(harness: Harness) -> None:
    from devstack.bootstrap import ensure_api_client

    key = "we_rl_" + uuid.uuid4().hex
    await ensure_api_client(harness.db, key, name="rl", rate_limit_per_minute=3)
    codes = []
    for _ in range(5):
        r = await harness.http.get("/withdrawal/queue/status", headers={"X-API-Key": key})
        codes.append(r.status_code)
    assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
    assert int(r.headers["Retry-After"]) >= 1 and r.json()["error"]["code"] == "RATE_LIMITED"


async def test_status_of_unknown_or_foreign_withdrawal_is_404(harness: Harness) -> None:
    to, _ = new_wallet()
    r = await harness.request(native_body("ethereum", to, "0.01"))
    assert r.status_code == 201
    wid = r.json()["id"]
    from devstack.bootstrap import ensure_api_client

    other = "we_other_" + uuid.uuid4().hex
    await ensure_api_client(harness.db, other, name="other")
    for path, key in (
        (f"/withdrawal/status/{wid}", other),
        (f"/withdrawal/status/{uuid.uuid4()}", harness.api_key),
        ("/withdrawal/status/not-a-uuid", harness.api_key),
    ):
        _err(await harness.http.get(path, headers={"X-API-Key": key}), 404, "NOT_FOUND")
    await harness.wait_status(wid, {"CONFIRMED"})


async def test_same_key_same_body_is_the_same_withdrawal_and_different_body_is_409(harness: Harness) -> None:
    to, _ = new_wallet()
    body = native_body("polygon", to, "0.3")
    key = f"idem-{uuid.uuid4()}"
    first = await harness.request(body, key)
    assert first.status_code == 201, first.text
    again = await harness.request(body, key)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    _err(await harness.request(body | {"amount": "0.31"}, key), 409, "IDEMPOTENCY_KEY_REUSED")
    # A different body under a used key is 409 even when that body alone would be refused (422).
    for bad, code in (
        ({"amount": "-1"}, "INVALID_AMOUNT"),
        ({"network": "dogecoin"}, "UNSUPPORTED_NETWORK"),
        ({"to_address": "0x123"}, "INVALID_ADDRESS"),
    ):
        _err(await harness.request(body | bad, key), 409, "IDEMPOTENCY_KEY_REUSED")
        _err(await harness.request(body | bad, f"idem-{uuid.uuid4()}"), 422, code)
    done = await harness.wait_status(first.json()["id"], {"CONFIRMED"})
    # After the workflow has finished, the record still answers replays.
    late = await harness.request(body, key)
    assert (
        late.status_code == 200 and late.json()["id"] == done["id"] and late.json()["status"] == "CONFIRMED"
    )
    _err(await harness.request(body | {"to_address": new_wallet()[0]}, key), 409, "IDEMPOTENCY_KEY_REUSED")
    # Exactly one payment.
    from devstack import processes

    bal = int(processes.rpc(harness.stack.rpc_urls["polygon"], "eth_getBalance", [to, "latest"]), 16)
    assert bal == 3 * 10**17


async def test_the_post_answers_the_row_as_admission_wrote_it(harness: Harness) -> None:
    """The 201 is built from the update's answer (no read of the row): it must be the row as admission
    left it, field for field; one that needs an approval answers AWAITING_APPROVAL as before."""
    to, _ = new_wallet()
    body = native_body("polygon", to, "0.2") | {"client_reference": "ref-7"}
    posted = await harness.request(body)
    assert posted.status_code == 201, posted.text
    out = posted.json()
    async with harness.db.read() as s:
        first = (await repo.status_events(s, out["id"]))[0]
    assert out["status"] == first.status == "PENDING"
    status = await harness.status(out["id"])
    same = ("id", "network", "asset", "amount", "to_address", "user_id", "client_reference", "created_at")
    assert {k: out[k] for k in same} == {k: status[k] for k in same}
    assert out["amount"] == "0.2" and out["client_reference"] == "ref-7" and out["error"] is None
    assert out["tx_hash"] is None and out["fee"] is None and out["confirmations"] == 0
    assert out["required_confirmations"] == status["required_confirmations"]
    assert datetime.fromisoformat(out["updated_at"]) <= datetime.fromisoformat(status["updated_at"])
    big = await harness.request(native_body("polygon", new_wallet()[0], "150"))  # above the threshold
    assert big.status_code == 201, big.text
    assert big.json()["status"] == "AWAITING_APPROVAL"
    rejected = await harness.http.post(
        f"/admin/transactions/{big.json()['id']}/reject",
        json={"reason": "test over"},
        headers=await harness.operator_headers("APPROVER"),
    )
    assert rejected.status_code == 200, rejected.text


async def test_concurrent_replays_of_one_key_create_one_withdrawal(harness: Harness) -> None:
    to, _ = new_wallet()
    body = native_body("bsc", to, "0.2")
    key = f"race-{uuid.uuid4()}"
    bad = body | {"amount": "0.21"}
    sent = [bad if i % 5 == 4 else body for i in range(10)]
    rs = await asyncio.gather(*(harness.request(b, key) for b in sent))
    ok = [r for r in rs if r.status_code in (200, 201)]
    assert {r.json()["id"] for r in ok} and len({r.json()["id"] for r in ok}) == 1
    assert sum(r.status_code == 201 for r in ok) == 1
    # Either body may reach the engine first; whichever did owns the key, and every request with the
    # other body is a 409 for reusing it.
    won = ok[0].json()["amount"]
    assert won in ("0.2", "0.21")
    for b, r in zip(sent, rs, strict=True):
        if b["amount"] == won:
            assert r.status_code in (200, 201), r.text
        else:
            assert r.status_code == 409 and r.json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED", r.text
    await harness.wait_status(ok[0].json()["id"], {"CONFIRMED"})
    from devstack import processes

    bal = int(processes.rpc(harness.stack.rpc_urls["bsc"], "eth_getBalance", [to, "latest"]), 16)
    assert bal == (2 * 10**17 if won == "0.2" else 21 * 10**16)


async def test_daily_limit_is_a_422_and_replays_answer_the_same(harness: Harness) -> None:
    to, _ = new_wallet()
    user = f"whale-{uuid.uuid4()}"
    for i in range(5):
        r = await harness.request(native_body("ethereum", to, "1000", user_id=user), f"d{i}-{user}")
        assert r.status_code == 201, r.text
    key = f"d5-{user}"
    over = await harness.request(native_body("ethereum", to, "1", user_id=user), key)
    _err(over, 422, "LIMIT_EXCEEDED")
    _err(await harness.request(native_body("ethereum", to, "1", user_id=user), key), 422, "LIMIT_EXCEEDED")


async def test_health_and_queue_status(harness: Harness) -> None:
    r = await harness.http.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    q = await harness.http.get("/withdrawal/queue/status", headers={"X-API-Key": harness.api_key})
    assert q.status_code == 200 and set(q.json()) >= {"in_flight", "by_status", "by_network"}
    assert (await harness.http.get("/api-docs")).status_code == 200
    assert (await harness.http.get("/openapi.json")).json()["paths"]["/withdrawal/request"]


async def test_engine_and_token_addresses_cannot_receive(harness: Harness) -> None:
    cfg = harness.config.networks["polygon"]
    for to in (cfg.hot_wallets[0], cfg.hot_wallets[0].lower(), cfg.tokens["USDT"].address):
        r = await harness.request(_body(network="polygon", asset="POL", to_address=to))
        assert _err(r, 422, "INVALID_ADDRESS").get("field") == "to_address"


async def test_oversized_bodies_are_refused_before_authentication(harness: Harness) -> None:
    big = b'{"user_id": "u", "x": "' + b"a" * 20_000 + b'"}'
    for headers in ({}, {"X-API-Key": "wrong"}, harness.headers()):
        r = await harness.http.post(
            "/withdrawal/request", content=big, headers={**headers, "Content-Type": "application/json"}
        )
        _err(r, 413, "PAYLOAD_TOO_LARGE")
    r = await harness.http.post("/auth/login", content=big, headers={"Content-Type": "application/json"})
    _err(r, 413, "PAYLOAD_TOO_LARGE")


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"[" * 100_000 + b"]" * 100_000, 413, "PAYLOAD_TOO_LARGE"),  # once a segfault of the API
        (b"[" * 5_000 + b"]" * 5_000, 422, "VALIDATION_ERROR"),
        (b'{"a":' * 33 + b"1" + b"}" * 33, 422, "VALIDATION_ERROR"),
        (b'{"user_id": "\xff\xfe"}', 422, "VALIDATION_ERROR"),
    ],
    ids=["deep-and-big", "deep-array", "deep-object", "not-utf8"],
)
async def test_deep_or_non_utf8_json_is_refused(harness: Harness, raw: bytes, status: int, code: str) -> None:
    r = await harness.http.post(
        "/withdrawal/request", content=raw, headers={**harness.headers(), "Content-Type": "application/json"}
    )
    _err(r, status, code)
    assert (await harness.http.get("/health")).status_code == 200  # still serving


async def test_a_workflow_started_around_the_api_is_revalidated(harness: Harness) -> None:
    """A workflow started from the CLI or Web UI with a bad recipient or an amount over the limit is
    REJECTED by admission: nothing reserved, nothing signed."""

    from models import repo
    from models.domain import WithdrawalRequest
    from workflows.withdrawal import WithdrawalWorkflow

    token = harness.config.networks["ethereum"].tokens["USDT"].address
    cases = {
        "INVALID_ADDRESS": {"to_address": token},
        "LIMIT_EXCEEDED": {"amount": str(5000 * 10**18)},
        "INVALID_AMOUNT": {"amount": "\u0661"},
        "UNSUPPORTED_NETWORK": {"network": "bitcoin"},
    }
    for code, change in cases.items():
        wid = str(uuid.uuid4())
        fields = {"network": "ethereum", "asset": "ETH", "to_address": DEAD, "amount": str(10**16)} | change
        req = WithdrawalRequest(
            withdrawal_id=wid,
            client_id=harness.client_id,
            idempotency_key=wid,
            fingerprint="cli",
            user_id="u",
            **fields,
        )
        handle = await harness.client.start_workflow(
            WithdrawalWorkflow.run, req, id=f"withdrawal-{wid}", task_queue=harness.settings.task_queue
        )
        outcome = await asyncio.wait_for(handle.result(), 60)
        assert outcome.status == "REJECTED" and outcome.error is not None and outcome.error.code == code, (
            outcome
        )
        async with harness.db.read() as s:
            row = await repo.get_withdrawal(s, wid)
            assert row is not None and row.status == "REJECTED" and row.error_code == code
            assert await repo.attempts_for(s, wid) == [] and await repo.reservations_for(s, wid) == []
            assert row.nonce is None
