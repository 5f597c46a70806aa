"""Signed requests, enrollment codes, clock correction and revocation."""

from __future__ import annotations

import json

import pytest
from serverkit import PIN, audit_actions, call, error_of, household, json_of, now_ms, rows, signed_request

from fieldsync import KdfParams, Store
from fieldsync.errors import DeviceRevokedError, RequestRejected, StoreErasedError
from fieldsync.identity import Identity, new_key
from fieldsync.protocol import TIMESTAMP_WINDOW_MS, dumps
from fieldsync.sync import enroll
from fieldsync.transport import ASGITransport, Request
from server_stub.app import create_app
from server_stub.auth import ApiError

PULL = {"schema_version": 1, "cursors": {}, "limit": 10}


def test_forged_replayed_and_stale_requests_are_refused(district, make_device, live):
    dev = make_device("w1", live)
    ident = dev.identity

    forger = Identity(ident.device_id, ident.worker_id, ident.server_url, new_key())
    resp = call(live, forger, "/v1/pull", PULL)
    assert resp.status == 401 and error_of(resp)["code"] == "signature_invalid"

    # A body changed after signing is a forgery too.
    req = signed_request(ident, "/v1/pull", PULL)
    tampered = Request(req.method, req.path, req.query, req.headers, dumps({**PULL, "limit": 11}))
    resp = live.handle(tampered)
    assert resp.status == 401 and error_of(resp)["code"] == "signature_invalid"

    req = signed_request(ident, "/v1/pull", PULL)
    assert live.handle(req).status == 200
    resp = live.handle(req)
    assert resp.status == 401 and error_of(resp)["code"] == "nonce_replayed"

    for skew in (-10 * 60 * 1000, 10 * 60 * 1000):
        before = now_ms()
        resp = call(live, ident, "/v1/pull", PULL, at_ms=now_ms() + skew)
        err = error_of(resp)
        assert resp.status == 401 and err["code"] == "timestamp_stale"
        assert before - 5000 <= err["server_time_ms"] <= now_ms() + 5000
        assert int(resp.headers["x-fieldsync-server-time"]) >= before - 5000

    unknown = Identity("d0000000000000000", "w1", ident.server_url, new_key())
    resp = call(live, unknown, "/v1/pull", PULL)
    assert resp.status == 401 and error_of(resp)["code"] == "device_unknown"

    resp = live.handle(Request("POST", "/v1/pull", "", {"Content-Type": "application/json"}, dumps(PULL)))
    assert resp.status == 401 and error_of(resp)["code"] == "auth_missing"

    actions = {act for _, act, _ in audit_actions(district)}
    assert {"auth.signature_invalid", "auth.nonce_replayed", "auth.device_unknown"} <= actions


def test_client_corrects_a_clock_an_hour_off(district, make_device):
    for offset in (-3600_000, 3600_000):
        dev = make_device("w1")
        dev.store.put("households", household("g1", 1))
        dev.store.set_clock_offset(offset)
        assert abs(dev.store.now_ms() - now_ms() - offset) < 1000
        result = dev.sync()
        assert result.pushed == 1
        assert abs(dev.store.clock_offset_ms) < 5000, "the offset was measured against the server again"
        assert abs(dev.store.now_ms() - now_ms()) < 5000
        assert dev.client.status.last_error is None


def test_enrollment_code_is_single_use_and_expires(district, make_device, inproc, tmp_path):
    code, expires = district.issue_code("w1")
    assert expires > now_ms() + 14 * 60 * 1000
    first = Store.create(tmp_path / "first.fsdb", PIN, kdf=KdfParams(n=2**10))
    ident = enroll(first, "http://in-process", code, transport=inproc)
    assert ident.worker_id == "w1"

    second = Store.create(tmp_path / "second.fsdb", PIN, kdf=KdfParams(n=2**10))
    with pytest.raises(RequestRejected) as err:
        enroll(second, "http://in-process", code, transport=inproc)
    assert err.value.code == "enrollment_code_invalid" and err.value.status == 401

    short, _ = district.issue_code("w2", 60)
    with district.db.transaction() as tx:
        tx.execute("UPDATE enroll_codes SET expires_ms = ? WHERE expires_ms < ?", (now_ms() - 1000, now_ms() + 61_000))
    with pytest.raises(RequestRejected) as err:
        enroll(second, "http://in-process", short, transport=inproc)
    assert err.value.code == "enrollment_code_expired" and err.value.status == 401
    assert not [d for d in district.devices() if d["worker_id"] == "w2"]

    with pytest.raises(ApiError) as refused:
        district.issue_code("nobody")
    assert refused.value.code == "worker_unknown"


def test_enrollment_guessing_is_rate_limited_per_source(district, make_device):
    attacker = ASGITransport(create_app(district), client_host="10.0.0.66")
    try:
        body = {"code": "AAAA-BBBB-CCCC", "public_key": "", "node_id": "nattacker", "schema_version": 1}
        from fieldsync.identity import public_key_b64

        answers = []
        for _ in range(11):
            body["public_key"] = public_key_b64(new_key())
            resp = attacker.handle(Request("POST", "/v1/enroll", "", {"Content-Type": "application/json"}, dumps(body)))
            answers.append((resp.status, json.loads(resp.body)["error"]))
        assert [s for s, _ in answers[:10]] == [401] * 10
        assert {e["code"] for _, e in answers[:10]} == {"enrollment_code_invalid"}
        status, err = answers[10]
        assert status == 429 and err["code"] == "too_many_attempts"
        assert isinstance(err["retry_after"], int) and 0 < err["retry_after"] <= 600

        # Even a valid code is refused from that source now; another source is not affected.
        code, _ = district.issue_code("w1")
        body.update(code=code, public_key=public_key_b64(new_key()))
        resp = attacker.handle(Request("POST", "/v1/enroll", "", {"Content-Type": "application/json"}, dumps(body)))
        assert resp.status == 429
        make_device("w1").sync()
        assert "enroll.rate_limited" in {act for _, act, _ in audit_actions(district)}
    finally:
        attacker.close()


def test_revoked_without_wipe_keeps_the_data(district, make_device):
    dev = make_device("w1")
    hid = dev.store.put("households", household("g1", 1))
    dev.sync()
    district.revoke(dev.device_id)
    with pytest.raises(DeviceRevokedError) as err:
        dev.sync()
    assert err.value.wipe is False and err.value.status == 403
    assert dev.store.get("households", hid)["head_name"] == "张1"
    dev.store.close()
    with Store.open(dev.path, PIN) as again:
        assert again.get("households", hid)["head_name"] == "张1"
    with pytest.raises(ApiError) as refused:
        district.revoke(dev.device_id)  # already revoked
    assert refused.value.code == "device_unknown"


def test_revoked_with_wipe_pushes_pending_changes_then_erases(district, make_device):
    dev = make_device("w1")
    dev.sync()
    kept = [dev.store.put("households", household("g1", n)) for n in range(3)]
    district.revoke(dev.device_id, wipe=True)
    with pytest.raises(DeviceRevokedError) as err:
        dev.sync()
    assert err.value.wipe is True
    for hid in kept:
        assert district.get("households", hid) is not None, "the final push reached the server"
    with pytest.raises(StoreErasedError):
        Store.open(dev.path, PIN)
    assert "device.final_push" in {act for _, act, _ in audit_actions(district)}


def test_revoked_with_wipe_and_nothing_pending_erases(district, make_device):
    dev = make_device("w1")
    dev.sync()
    district.revoke(dev.device_id, wipe=True)
    with pytest.raises(DeviceRevokedError) as err:
        dev.sync()
    assert err.value.wipe is True
    with pytest.raises(StoreErasedError):
        Store.open(dev.path, PIN)


@pytest.mark.parametrize("path", ["/v1/pull", "/v1/me", "/v1/buckets", "/v1/repair"])
def test_revoked_device_gets_device_revoked(district, make_device, inproc, path):
    dev = make_device("w1")
    district.revoke(dev.device_id, wipe=True)
    resp = call(inproc, dev.identity, path, {**PULL, "grid": "g1", "buckets": [0]})
    err = error_of(resp)
    assert resp.status == 403 and err["code"] == "device_revoked" and err["wipe"] is True
    assert rows(district, "SELECT revoked_ms FROM devices WHERE id = ?", (dev.device_id,))[0][0] is not None


def test_requests_inside_the_window_are_accepted(district, make_device, inproc):
    dev = make_device("w1")
    margin = TIMESTAMP_WINDOW_MS - 30_000
    for skew in (-margin, margin):
        assert json_of(call(inproc, dev.identity, "/v1/pull", PULL, at_ms=now_ms() + skew))["grids"] == ["g1"]
