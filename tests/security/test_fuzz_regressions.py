"""Regressions for what the API fuzzer (test_fuzz_api.py) found: one focused test per bug.

Each ran into a 500 (or a refused-input check) before its fix; now each is a clear 4xx
``{"error": {"code", "message"}}`` and nothing is stored.  Both backends: several failures were
PostgreSQL-only (a text column cannot hold NUL; INTEGER and BIGINT have bounds SQLite's Python
driver enforces differently).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fuzz_support import error_of

from fieldsync.identity import Identity, new_key, public_key_b64
from fieldsync.protocol import dumps
from fieldsync.schema import SCHEMA_VERSION
from fieldsync.transport import ASGITransport, Request, Response
from server_stub.district import District

STAMP = "01a2212f375e-000000-ne563acc58d944b8"


def _enroll(inproc: ASGITransport, district: District, worker: str = "w1", **overrides: Any) -> Response:
    code, _ = district.issue_code(worker)
    body = {"code": code, "public_key": public_key_b64(new_key()), "node_id": "nfuzz", "device_name": "t",
            "schema_version": SCHEMA_VERSION, **overrides}
    return inproc.handle(Request("POST", "/v1/enroll", "", {}, dumps(body)))


@pytest.fixture
def device(inproc: ASGITransport, district: District) -> Identity:
    key = new_key()
    code, _ = district.issue_code("w1")
    resp = inproc.handle(Request("POST", "/v1/enroll", "", {}, dumps({
        "code": code, "public_key": public_key_b64(key), "node_id": "nfuzz", "schema_version": SCHEMA_VERSION})))
    assert resp.status == 200, resp.body
    return Identity(json.loads(resp.body)["device_id"], "w1", "", key)


def _signed(inproc: ASGITransport, device: Identity, path: str, body: bytes | dict[str, Any],
            method: str = "POST") -> Response:
    raw = body if isinstance(body, bytes) else dumps(body)
    return inproc.handle(Request(method, path, "", device.sign(method, path, "", raw), raw))


def _refused(resp: Response, status: int = 400, code: str = "bad_request") -> str:
    assert resp.status == status, (resp.status, resp.body[:300])
    err = error_of(resp.body)
    assert err["code"] == code
    assert resp.headers.get("x-fieldsync-server-time", "").isdigit()
    return str(err["message"])


def _last_seq(district: District, device: Identity) -> int:
    with district.db.transaction() as tx:
        row = tx.one("SELECT last_seq FROM devices WHERE id = ?", (device.device_id,))
    assert row is not None
    return int(row[0])


def _household(seq: int, rid: str = "h-fuzz", **fields: Any) -> dict[str, Any]:
    writes = {"grid_id": ["g1", STAMP, None], "address": ["花园山1栋", STAMP, None]}
    writes.update({k: [v, STAMP, None] for k, v in fields.items()})
    return {"seq": seq, "collection": "households", "id": rid, "grid": "g1", "fields": writes}


def test_method_not_allowed_names_the_allowed_methods(inproc: ASGITransport) -> None:
    """405 answers lacked the Allow header RFC 9110 requires (the error handler dropped it)."""
    resp = inproc.handle(Request("GET", "/v1/push", "", {}, b""))
    _refused(resp, 405, "method_not_allowed")
    assert resp.headers.get("allow") == "POST"


def test_pull_refuses_a_snapshots_flag_that_is_not_boolean(inproc: ASGITransport, device: Identity) -> None:
    """"snapshots": "yes" was silently taken as false instead of refused."""
    message = _refused(_signed(inproc, device, "/v1/pull", {"schema_version": 1, "snapshots": "yes"}))
    assert "snapshots" in message
    ok = _signed(inproc, device, "/v1/pull", {"schema_version": 1, "snapshots": True})
    assert ok.status == 200


def test_push_refuses_a_seq_beyond_64_bits(inproc: ASGITransport, district: District, device: Identity) -> None:
    """seq = 2**64 reached the BIGINT last_seq column: 500 (OverflowError / bigint out of range)."""
    message = _refused(_signed(inproc, device, "/v1/push", {"schema_version": 1, "changes": [_household(2**64)]}))
    assert "seq" in message
    assert _last_seq(district, device) == 0 and district.get("households", "h-fuzz") is None
    top = _signed(inproc, device, "/v1/push", {"schema_version": 1, "changes": [_household(2**63 - 1)]})
    assert top.status == 200 and json.loads(top.body)["acked_seq"] == 2**63 - 1


@pytest.mark.parametrize("path", ["/v1/pull", "/v1/wait"])
def test_cursors_beyond_64_bits_are_refused(inproc: ASGITransport, device: Identity, path: str) -> None:
    """A cursor of 2**63 reached a BIGINT comparison in SQL: 500."""
    message = _refused(_signed(inproc, device, path, {"schema_version": 1, "cursors": {"g1": 2**63}, "timeout_ms": 0}))
    assert "cursors" in message


def test_enroll_refuses_a_schema_version_the_column_cannot_hold(inproc: ASGITransport, district: District) -> None:
    """schema_version = 2**31 reached the INTEGER column devices.schema_version: 500 on PostgreSQL."""
    message = _refused(_enroll(inproc, district, schema_version=2**31))
    assert "schema_version" in message
    assert district.devices() == []


def test_enroll_refuses_a_device_name_with_nul(inproc: ASGITransport, district: District) -> None:
    """A NUL in device_name reached a text column: 500 on PostgreSQL."""
    message = _refused(_enroll(inproc, district, device_name="平板\x00"))
    assert "device_name" in message
    assert district.devices() == []


@pytest.mark.parametrize("path", ["/v1/buckets", "/v1/repair"])
@pytest.mark.parametrize("grid", ["g\x001", "", "g/1", "g" * 65])
def test_buckets_and_repair_refuse_a_malformed_grid(inproc: ASGITransport, device: Identity, path: str,
                                                    grid: str) -> None:
    """A grid with NUL went into the audit log of the refused read: 500 on PostgreSQL."""
    message = _refused(_signed(inproc, device, path, {"grid": grid, "buckets": [1]}))
    assert "grid" in message
    assert _signed(inproc, device, path, {"grid": "g1", "buckets": [1]}).status == 200


def test_push_refuses_a_field_name_with_nul(inproc: ASGITransport, district: District, device: Identity) -> None:
    """A NUL in a field name reached the rejections table (conflicts: field_not_allowed): 500 on PostgreSQL."""
    change = {"seq": 1, "collection": "conflicts", "id": "c-fuzz", "grid": "g1",
              "fields": {"grid_id": ["g1", STAMP, None], "a\x00": [1, STAMP, None]}}
    message = _refused(_signed(inproc, device, "/v1/push", {"schema_version": 1, "changes": [change]}))
    assert "field name" in message
    assert _last_seq(district, device) == 0


def test_nul_in_an_attachment_path_is_refused_and_audited(inproc: ASGITransport, district: District,
                                                          device: Identity) -> None:
    """/v1/attachments/%00 went into the audit log as text: 500 on PostgreSQL instead of 401."""
    path = "/v1/attachments/a\x00b"
    stranger = Identity("d0000000000000000", "w1", "", new_key())
    _refused(inproc.handle(Request("GET", path, "", stranger.sign("GET", path, "", b""), b"")), 401, "device_unknown")
    impostor = Identity(device.device_id, "w1", "", new_key())
    _refused(inproc.handle(Request("GET", path, "", impostor.sign("GET", path, "", b""), b"")), 401,
             "signature_invalid")
    with district.db.transaction() as tx:
        actions = [r[0] for r in tx.all("SELECT action FROM audit_log")]
    assert "auth.signature_invalid" in actions


@pytest.mark.parametrize("text", [rb'"\ud800"', rb'"x\uDFFFy"', rb'"\udc00\ud800"'])
def test_an_unpaired_surrogate_escape_is_refused(inproc: ASGITransport, district: District, device: Identity,
                                                 text: bytes) -> None:
    """Valid JSON but not Unicode: the value could not be encoded back to UTF-8 when stored, a 500."""
    body = (b'{"schema_version":1,"changes":[{"seq":1,"collection":"households","id":"h-fuzz","grid":"g1",'
            b'"fields":{"grid_id":["g1","' + STAMP.encode() + b'",null],"address":[' + text + b',"'
            + STAMP.encode() + b'",null]}}]}')
    message = _refused(_signed(inproc, device, "/v1/push", body))
    assert "surrogate" in message
    assert _last_seq(district, device) == 0
    paired = body.replace(text, rb'"\ud83c\udfe0"')  # a house emoji as an escaped surrogate pair is fine
    assert _signed(inproc, device, "/v1/push", paired).status == 200
    assert district.get("households", "h-fuzz")["address"] == "\U0001f3e0"


def test_json_nested_too_deeply_is_refused(inproc: ASGITransport, device: Identity) -> None:
    """A body of 100 000 nested arrays made the JSON parser raise RecursionError: a 500."""
    message = _refused(_signed(inproc, device, "/v1/me", b"[" * 100_000 + b"]" * 100_000))
    assert "nested" in message
