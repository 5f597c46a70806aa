"""Schema versions: too-old clients are told so; newer fields travel; unknown kinds are refused."""

from __future__ import annotations

import pytest
from serverkit import PIN, assert_matches_server, call, error_of, household, json_of

from fieldsync import Field, Kind, Registry, Store
from fieldsync.protocol import dumps
from fieldsync.schema import DEFAULT_KINDS
from fieldsync.sync import SyncClient
from fieldsync.transport import Request


def _newer_registry() -> Registry:
    """A newer app: households gained an optional field, and a new kind exists."""
    kinds = []
    for kind in DEFAULT_KINDS:
        if kind.name == "households":
            kind = Kind("households", {**kind.fields, "elevator": Field("boolean")}, version=2)
        kinds.append(kind)
    kinds.append(Kind("parking", {"grid_id": Field(required=True), "plate": Field(required=True)}))
    return Registry(kinds)


@pytest.mark.parametrize("path", ["/v1/pull", "/v1/push"])
def test_schema_version_zero_is_unsupported(district, make_device, inproc, path):
    dev = make_device("w1")
    resp = call(inproc, dev.identity, path, {"schema_version": 0, "cursors": {}, "changes": []})
    err = error_of(resp)
    assert resp.status == 426 and err["code"] == "schema_unsupported" and "schema version 0" in err["message"]
    resp = call(inproc, dev.identity, path, {"cursors": {}, "changes": []})
    assert resp.status == 400 and error_of(resp)["code"] == "bad_request"


def test_enrollment_with_schema_version_zero_is_unsupported(district, inproc):
    from fieldsync.identity import new_key, public_key_b64

    code, _ = district.issue_code("w1")
    body = {"code": code, "public_key": public_key_b64(new_key()), "node_id": "nold", "schema_version": 0}
    resp = inproc.handle(Request("POST", "/v1/enroll", "", {"Content-Type": "application/json"}, dumps(body)))
    assert resp.status == 426 and error_of(resp)["code"] == "schema_unsupported"
    assert district.devices() == []


def test_a_newer_field_is_kept_by_the_server_and_reaches_older_devices(district, make_device):
    newer = make_device("w1", registry=_newer_registry())
    older = make_device("w2")
    hid = newer.store.put("households", household("g1", 1, elevator=True))
    newer.sync()
    assert not newer.store.rejections()
    assert district.get("households", hid)["elevator"] is True
    older.sync()
    assert older.store.get("households", hid)["elevator"] is True
    # The older device edits another field; the newer field survives its write.
    older.store.put("households", {"id": hid, "notes": "三楼"})
    older.sync()
    newer.sync()
    assert newer.store.get("households", hid) == district.get("households", hid)
    assert district.get("households", hid)["elevator"] is True
    for dev in (newer, older):
        assert_matches_server(dev.store, district)


def test_unknown_kind_is_rejected_and_does_not_block(district, make_device):
    dev = make_device("w1", registry=_newer_registry())
    pid = dev.store.put("parking", {"grid_id": "g1", "plate": "鄂A12345"})
    hid = dev.store.put("households", household("g1", 2))
    result = dev.sync()
    assert result.rejected == 1
    (rej,) = dev.store.rejections()
    assert (rej.collection, rej.id, rej.code) == ("parking", pid, "unknown_kind")
    assert rej.values == {"grid_id": "g1", "plate": "鄂A12345"}
    assert district.get("households", hid) is not None
    assert dev.store.outbox_size() == 0


def test_old_device_store_reopened_with_the_default_registry_keeps_syncing(district, make_device, tmp_path):
    """An app downgrade must not lose fields it no longer declares."""
    dev = make_device("w1", registry=_newer_registry())
    hid = dev.store.put("households", household("g1", 3, elevator=False))
    dev.sync()
    dev.store.close()
    store = Store.open(dev.path, PIN)
    client = SyncClient(store, dev.transport, sleep=lambda s: None)
    store.put("households", {"id": hid, "notes": "降级后"})
    client.sync()
    assert district.get("households", hid)["elevator"] is False
    assert district.get("households", hid)["notes"] == "降级后"


def test_a_newer_schema_version_is_served(district, make_device, inproc):
    """A newer app (schema 2) talks to this server (schema 1) without being turned away."""
    dev = make_device("w1")
    answer = json_of(call(inproc, dev.identity, "/v1/pull", {"schema_version": 2, "cursors": {}}))
    assert answer["grids"] == ["g1"] and answer["changes"]
