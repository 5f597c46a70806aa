"""Captured requests replayed or altered, the timestamp window's edges, and enrollment-code abuse.

tests/server/test_auth.py covers the basics (a forged key, a changed pull body, an immediate
replay, a 10-minute skew, single-use and expired codes, the per-source rate limit); these tests
take an attacker's captured request further: later, elsewhere, on another server process, with
one part changed at a time.
"""

from __future__ import annotations

import gzip
import json

import pytest
from securitykit import PHOTO_A, enroll_raw, sha256
from serverkit import audit_actions, error_of, json_of, now_ms, rows, signed_request

from fieldsync.identity import Identity, new_key, public_key_b64
from fieldsync.protocol import TIMESTAMP_WINDOW_MS, dumps
from fieldsync.schema import SCHEMA_VERSION
from fieldsync.transport import ASGITransport, Request, RequestsTransport
from server_stub import auth
from server_stub.app import create_app
from server_stub.auth import ApiError
from server_stub.replica import Actor

PULL = {"schema_version": SCHEMA_VERSION, "cursors": {}, "limit": 10}


def _push(seq: int, hid: str) -> dict[str, object]:
    from fieldsync.clock import Stamp

    stamp = Stamp(now_ms(), 0, "nreplay").encode()
    return {"schema_version": SCHEMA_VERSION, "changes": [
        {"seq": seq, "collection": "households", "id": hid, "grid": "g1",
         "fields": {"grid_id": ["g1", stamp, None], "address": ["花园山1栋", stamp, None]}}]}


@pytest.fixture
def device(district, inproc) -> Identity:
    code, _ = district.issue_code("w1")
    return enroll_raw(inproc, code, "w1", "nreplay")


def _with(req: Request, **changes: object) -> Request:
    """The captured request with one part changed and the captured signature headers kept."""
    parts = {"method": req.method, "path": req.path, "query": req.query, "headers": dict(req.headers), "body": req.body}
    parts.update(changes)
    return Request(parts["method"], parts["path"], parts["query"], parts["headers"], parts["body"])  # type: ignore[arg-type]


def _signed(identity: Identity, method: str, path: str, query: str, body: bytes, at_ms: int | None = None,
            **headers: str) -> Request:
    base = {"Content-Type": "application/json", **headers}
    base.update(identity.sign(method, path, query, body, at_ms))
    return Request(method, path, query, base, body)


def test_a_captured_push_replayed_later_is_refused_and_applies_nothing(district, device, inproc):
    req = signed_request(device, "/v1/push", _push(1, "hreplay1"))
    assert json_of(inproc.handle(req))["applied"] == 1
    for _n in range(3):  # the device keeps working; the attacker waits
        json_of(inproc.handle(signed_request(device, "/v1/pull", PULL)))
    resp = inproc.handle(req)
    assert resp.status == 401 and error_of(resp)["code"] == "nonce_replayed"
    assert rows(district, "SELECT last_seq FROM devices WHERE id = ?", (device.device_id,))[0][0] == 1
    assert ("device:" + device.device_id, "auth.nonce_replayed", "/v1/push") in audit_actions(district)


def test_a_replay_after_the_window_is_stale_even_if_its_nonce_was_forgotten(district, device, inproc):
    req = signed_request(device, "/v1/pull", PULL)
    json_of(inproc.handle(req))
    with district.db.transaction() as tx:  # the periodic clean-up removed old nonces
        tx.execute("DELETE FROM nonces WHERE device_id = ?", (device.device_id,))
    headers = {k.lower(): v for k, v in req.headers.items()}
    later = now_ms() + TIMESTAMP_WINDOW_MS + 1000
    with pytest.raises(ApiError) as refused:
        auth.verify_request(district.db, "POST", "/v1/pull", "", req.body, headers, now_ms=later)
    assert refused.value.code == "timestamp_stale"


def test_a_request_replayed_to_another_server_process_is_refused(district, device, server_factory):
    """Nonces live in the shared database: a second uvicorn process knows the first one's."""
    first, second = RequestsTransport(server_factory()), RequestsTransport(server_factory())
    try:
        req = signed_request(device, "/v1/pull", PULL)
        assert first.handle(req).status == 200
        resp = second.handle(req)
        assert resp.status == 401 and error_of(resp)["code"] == "nonce_replayed"
    finally:
        first.close()
        second.close()


def test_a_fresh_signature_cannot_reuse_a_nonce(district, device, inproc):
    req = signed_request(device, "/v1/pull", PULL)
    json_of(inproc.handle(req))
    nonce = req.headers["X-Fieldsync-Nonce"]
    from fieldsync.protocol import b64, canonical_request

    ts = now_ms()
    body = dumps({**PULL, "limit": 11})
    sig = device.key.sign(canonical_request("POST", "/v1/pull", "", body, ts, nonce, device.device_id))
    again = Request("POST", "/v1/pull", "", {**req.headers, "X-Fieldsync-Timestamp": str(ts),
                                             "X-Fieldsync-Signature": b64(sig)}, body)
    resp = inproc.handle(again)
    assert resp.status == 401 and error_of(resp)["code"] == "nonce_replayed"


@pytest.mark.parametrize("part", ["path", "query", "method", "body", "gzip body", "device", "timestamp", "nonce"])
def test_changing_any_signed_part_breaks_the_signature(district, device, inproc, part):
    """One captured, unused request altered in one place at a time: every change is a forgery."""
    district.write_many(Actor("seed", "admin"), "reports", [
        {"id": "rphoto", "grid_id": "g1", "category": "市容环境", "description": "照片", "attachments": [sha256(PHOTO_A)]}])
    district.attachments.append(sha256(PHOTO_A), 0, PHOTO_A, len(PHOTO_A))
    path = f"/v1/attachments/{sha256(PHOTO_A)}"
    body = gzip.compress(dumps(PULL))
    if part in ("path", "query", "method"):
        req = _signed(device, "GET", path, "offset=0&length=10", b"")
        changed = {"path": _with(req, path=path.replace(sha256(PHOTO_A)[:4], "0000")),
                   "query": _with(req, query="offset=0&length=100000"),
                   "method": _with(req, method="PUT", query="offset=0&length=10")}[part]
    elif part == "gzip body":
        req = _signed(device, "POST", "/v1/pull", "", body, **{"Content-Encoding": "gzip"})
        changed = _with(req, body=gzip.compress(dumps({**PULL, "limit": 1}), compresslevel=1))
    else:
        req = _signed(device, "POST", "/v1/pull", "", dumps(PULL))
        other = {"device": {"X-Fieldsync-Device": "d" + "0" * 16},
                 "timestamp": {"X-Fieldsync-Timestamp": str(int(req.headers["X-Fieldsync-Timestamp"]) + 1)},
                 "nonce": {"X-Fieldsync-Nonce": "f" * 32}, "body": {}}[part]
        changed = _with(req, headers={**req.headers, **other},
                        body=dumps({**PULL, "limit": 11}) if part == "body" else req.body)
    resp = inproc.handle(changed)
    expected = "device_unknown" if part == "device" else "signature_invalid"
    assert resp.status == 401 and error_of(resp)["code"] == expected, resp.body[:200]
    assert PHOTO_A not in resp.body
    # The original, never used, still works: the forgery did not burn its nonce.
    assert inproc.handle(req).status == 200


@pytest.mark.parametrize("direction", [-1, 1])
def test_the_timestamp_window_edges(district, device, direction):
    """Exactly at the window's edge a request is accepted; one millisecond beyond, refused (both ways)."""
    now = now_ms()
    headers_at = {}
    for label, skew in (("inside", TIMESTAMP_WINDOW_MS), ("outside", TIMESTAMP_WINDOW_MS + 1)):
        req = signed_request(device, "/v1/pull", PULL, at_ms=now + direction * skew)
        headers_at[label] = ({k.lower(): v for k, v in req.headers.items()}, req.body)
    ok = auth.verify_request(district.db, "POST", "/v1/pull", "", headers_at["inside"][1], headers_at["inside"][0],
                             now_ms=now)
    assert ok.id == device.device_id
    with pytest.raises(ApiError) as refused:
        auth.verify_request(district.db, "POST", "/v1/pull", "", headers_at["outside"][1], headers_at["outside"][0],
                            now_ms=now)
    assert refused.value.code == "timestamp_stale" and refused.value.extra["server_time_ms"] == now
    # A stale request does not consume its nonce (it never passed check 5).
    assert not rows(district, "SELECT 1 FROM nonces WHERE nonce = ?", (headers_at["outside"][0]["x-fieldsync-nonce"],))


@pytest.mark.parametrize("bad", [{"X-Fieldsync-Timestamp": "-1"}, {"X-Fieldsync-Timestamp": "12e5"},
                                 {"X-Fieldsync-Nonce": "n" * 65}, {"X-Fieldsync-Device": "d" * 65}])
def test_malformed_signature_headers(district, device, inproc, bad):
    req = signed_request(device, "/v1/pull", PULL)
    resp = inproc.handle(_with(req, headers={**req.headers, **bad}))
    assert resp.status == 401 and error_of(resp)["code"] == "auth_malformed"


# -- enrollment codes -------------------------------------------------------------------------

def _enroll_body(code: str, node: str = "nattack") -> bytes:
    return dumps({"code": code, "public_key": public_key_b64(new_key()), "node_id": node,
                  "schema_version": SCHEMA_VERSION})


def _enroll(transport, code: str):
    return transport.handle(Request("POST", "/v1/enroll", "", {"Content-Type": "application/json"}, _enroll_body(code)))


def test_a_captured_enrollment_replayed_is_refused(district, inproc):
    code, _ = district.issue_code("w1")
    req = Request("POST", "/v1/enroll", "", {"Content-Type": "application/json"}, _enroll_body(code))
    assert inproc.handle(req).status == 200
    resp = inproc.handle(req)  # the same code and key again
    assert resp.status == 401 and error_of(resp)["code"] == "enrollment_code_invalid"
    assert len([d for d in district.devices() if d["worker_id"] == "w1"]) == 1


def test_codes_are_stored_hashed_and_typed_loosely(district, inproc):
    code, _ = district.issue_code("w1")
    stored = [r[0] for r in rows(district, "SELECT code_hash FROM enroll_codes")]
    assert code not in stored and code.replace("-", "") not in stored
    resp = _enroll(inproc, " " + code.lower().replace("-", " ") + " ")
    assert json_of(resp)["worker_id"] == "w1"


def test_an_expired_code_stays_refused_and_the_refusal_names_no_code(district, inproc):
    code, _ = district.issue_code("w2", 60)
    with district.db.transaction() as tx:
        tx.execute("UPDATE enroll_codes SET expires_ms = ?", (now_ms() - 1,))
    for _ in range(2):
        resp = _enroll(inproc, code)
        assert resp.status == 401 and error_of(resp)["code"] == "enrollment_code_expired"
    text = json.dumps(rows(district, "SELECT actor, action, object, detail FROM audit_log"))
    assert code not in text and code.replace("-", "") not in text
    assert ("source:127.0.0.1", "enroll.refused", "worker:w2") in audit_actions(district)


def test_successful_enrollments_behind_one_address_do_not_count(district):
    """A training day: 25 tablets behind one NAT address enroll with good codes; the address is
    still allowed its full number of failed attempts afterwards."""
    office = ASGITransport(create_app(district), client_host="10.0.0.90")
    try:
        for _ in range(25):
            code, _ = district.issue_code("w1")
            assert json_of(_enroll(office, code))["worker_id"] == "w1"
        wrong = [_enroll(office, f"GUES-SXXX-{n:04d}") for n in range(auth.ENROLL_ATTEMPTS)]
        assert {error_of(r)["code"] for r in wrong} == {"enrollment_code_invalid"}
        assert error_of(_enroll(office, "GUES-SXXX-9999"))["code"] == "too_many_attempts"
    finally:
        office.close()


def test_guessing_locks_the_source_out_with_retry_after_then_lifts(district):
    attacker = ASGITransport(create_app(district), client_host="10.0.0.77")
    neighbour = ASGITransport(create_app(district), client_host="10.0.0.78")
    try:
        answers = [_enroll(attacker, f"GUES-SXXX-{n:04d}") for n in range(auth.ENROLL_ATTEMPTS)]
        assert {error_of(r)["code"] for r in answers} == {"enrollment_code_invalid"}
        locked = _enroll(attacker, "GUES-SXXX-9999")
        err = error_of(locked)
        assert locked.status == 429 and err["code"] == "too_many_attempts"
        assert 0 < err["retry_after"] <= auth.ENROLL_WINDOW_S and f"{err['retry_after']} s" in err["message"]
        assert locked.headers["retry-after"] == str(err["retry_after"])
        # Locked out even with a good code; another address is not.
        code, _ = district.issue_code("w1")
        assert _enroll(attacker, code).status == 429
        assert json_of(_enroll(neighbour, code))["worker_id"] == "w1"
        # When the window has passed the source may try again.
        with district.db.transaction() as tx:
            tx.execute("UPDATE enroll_attempts SET at_ms = at_ms - ? WHERE source = ?",
                       ((auth.ENROLL_WINDOW_S + 1) * 1000, "10.0.0.77"))
        again, _ = district.issue_code("w2")
        assert json_of(_enroll(attacker, again))["worker_id"] == "w2"
        audited = [(a, act) for a, act, _ in audit_actions(district) if a == "source:10.0.0.77"]
        assert audited.count(("source:10.0.0.77", "enroll.refused")) == auth.ENROLL_ATTEMPTS
        assert audited.count(("source:10.0.0.77", "enroll.rate_limited")) == 2
    finally:
        attacker.close()
        neighbour.close()
