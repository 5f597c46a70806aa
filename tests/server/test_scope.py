"""Object-level access: a device reads and writes only its worker's grids, through every endpoint."""

from __future__ import annotations

import pytest
from serverkit import Tap, assert_matches_server, audit_actions, call, error_of, grid_state, household, json_of, now_ms

from fieldsync.clock import Stamp
from fieldsync.errors import RecordNotFound
from fieldsync.transport import Request
from server_stub.replica import Actor


@pytest.fixture
def g1_household(district, make_device):
    """A g1 household created by w1's device (synced)."""
    a = make_device("w1")
    hid = a.store.put("households", household("g1", 1))
    a.sync()
    return a, hid


def test_pull_never_returns_other_grids(district, make_device, inproc, g1_household):
    _, hid = g1_household
    c = make_device("w3")
    c.sync()
    assert c.store.grids() == ["g2"]
    assert all(r["grid_id"] == "g2" for r in c.store.list("households"))
    with pytest.raises(RecordNotFound):
        c.store.get("households", hid)

    forged = json_of(call(inproc, c.identity, "/v1/pull",
                          {"schema_version": 1, "cursors": {"g1": 0, "g2": 0, "g9": 0}, "limit": 100}))
    assert forged["grids"] == ["g2"]
    assert set(forged["cursors"]) == {"g2"} and set(forged["checksums"]) <= {"g2"}
    assert {ch["grid"] for ch in forged["changes"]} == {"g2"}
    assert hid not in {ch["id"] for ch in forged["changes"]}

    me = json_of(call(inproc, c.identity, "/v1/me", {}))
    assert me["grids"] == ["g2"] and me["worker_id"] == "w3" and me["device_id"] == c.device_id


def test_writes_to_other_grids_are_refused(district, make_device, g1_household):
    _, hid = g1_household
    before = district.get("households", hid)
    seq_before = grid_state(district, "g1")
    c = make_device("w3")
    c.sync()
    created = c.store.put("households", household("g1", 2))  # a create in g1
    c.store.put("households", {"id": hid, **household("g2", 3)})  # forged: an existing g1 id, claimed for g2
    ok = c.store.put("households", household("g2", 4))
    result = c.sync()
    assert result.pushed == 3 and result.rejected == 2
    codes = {r.id: r.code for r in c.store.rejections()}
    assert codes == {created: "out_of_scope", hid: "out_of_scope"}
    assert district.get("households", created) is None
    assert district.get("households", hid) == before, "the g1 record is untouched"
    assert grid_state(district, "g1") == seq_before
    assert district.get("households", ok)["grid_id"] == "g2"
    for gone in (created, hid):
        with pytest.raises(RecordNotFound):
            c.store.get("households", gone)
    assert_matches_server(c.store, district)
    refused = [(a, o) for a, act, o in audit_actions(district) if act == "authz.refused_write"]
    assert (f"device:{c.device_id}", f"households:{created}") in refused
    assert (f"device:{c.device_id}", f"households:{hid}") in refused


def test_update_claiming_the_other_grid_is_refused_even_with_a_valid_base(district, make_device, inproc, g1_household):
    """A hand-made push naming the real record's current stamps changes nothing either."""
    _, hid = g1_household
    c = make_device("w3")
    stamp = Stamp(now_ms(), 0, "nforged").encode()
    answer = json_of(call(inproc, c.identity, "/v1/push", {"schema_version": 1, "changes": [
        {"seq": 1, "collection": "households", "id": hid, "grid": "g2",
         "fields": {"phone": ["13000000000", stamp, None]}}]}))
    assert [r["code"] for r in answer["rejections"]] == ["out_of_scope"]
    assert district.get("households", hid)["phone"] != "13000000000"


@pytest.mark.parametrize("path", ["/v1/buckets", "/v1/repair"])
def test_repair_endpoints_refuse_other_grids(district, make_device, inproc, path):
    c = make_device("w3")
    payload = {"grid": "g1", "buckets": [0, 1, 2]}
    resp = call(inproc, c.identity, path, payload)
    assert resp.status == 403 and error_of(resp)["code"] == "out_of_scope"
    assert "records" not in resp.body.decode()
    ok = json_of(call(inproc, c.identity, path, {"grid": "g2", "buckets": [0, 1, 2]}))
    assert ok["grid"] == "g2"
    refused = [(a, o) for a, act, o in audit_actions(district) if act == "authz.refused_read"]
    assert refused == [(f"device:{c.device_id}", "grid:g1")]


def test_assign_and_unassign_move_a_grid_into_and_out_of_scope(district, make_device, g1_household):
    a, _ = g1_household
    a.store.put_many("households", [household("g1", n) for n in range(10, 20)])
    a.sync()
    c = make_device("w3")
    c.sync()
    assert c.store.grids() == ["g2"]

    district.assign("w3", "g1")
    c.sync()
    assert c.store.grids() == ["g1", "g2"]
    assert len(c.store.list("households", grid="g1")) == 11, "scope-enter brings the whole grid"
    assert c.store.get("grids", "g1")["name"] == "花园山1网格"
    assert_matches_server(c.store, district)

    district.unassign("w3", "g1")
    c.sync()
    assert c.store.grids() == ["g2"]
    assert c.store.list("households", grid="g1") == []
    assert "g1" not in c.store.cursors()
    with pytest.raises(RecordNotFound):
        c.store.get("grids", "g1")
    assert_matches_server(c.store, district)


def test_leaving_scope_keeps_a_record_with_an_unsynced_change(district, make_device, inproc, g1_household):
    _, hid = g1_household
    district.assign("w3", "g1")
    edited = {}

    def edit_during_sync(request: Request, n: int) -> None:
        # The worker saves an edit while the sync runs (after its push, before the pull).
        if request.path == "/v1/pull" and not edited:
            edited["id"] = c.store.put("households", {"id": hid, "notes": "门锁坏了"})

    tap = Tap(inproc)
    c = make_device("w3", tap)
    c.sync()
    assert c.store.get("households", hid)["grid_id"] == "g1"

    district.unassign("w3", "g1")
    tap.before = edit_during_sync
    c.sync()
    assert c.store.grids() == ["g2"]
    assert c.store.get("households", hid)["notes"] == "门锁坏了", "unsynced work survives the purge"
    assert c.store.outbox_size() == 1
    assert [r["grid_id"] for r in c.store.list("households")] == ["g1"]

    # The next sync sends it; the server refuses it (no longer in scope) and the
    # worker keeps what was sent in the rejection; only then is the record dropped.
    tap.before = None
    c.sync()
    (rej,) = c.store.rejections()
    assert rej.id == hid and rej.code == "out_of_scope" and rej.values == {"notes": "门锁坏了"}
    assert c.store.list("households") == []
    assert "notes" not in district.get("households", hid)
    assert_matches_server(c.store, district)


def test_command_centre_moves_a_household_between_grids(district, make_device, g1_household):
    a, hid = g1_household
    c = make_device("w3")
    c.sync()
    with pytest.raises(RecordNotFound):
        c.store.get("households", hid)

    district.write(Actor("cc", "command"), "households", hid, {"grid_id": "g2"})
    a.sync()
    c.sync()
    with pytest.raises(RecordNotFound):
        a.store.get("households", hid)
    assert c.store.get("households", hid) == district.get("households", hid)
    assert c.store.get("households", hid)["grid_id"] == "g2"
    for dev in (a, c):
        assert_matches_server(dev.store, district)  # includes both grid checksums
    # The worker of g2 can now edit it; the worker of g1 no longer can.
    c.store.put("households", {"id": hid, "notes": "新搬入"})
    c.sync()
    assert district.get("households", hid)["notes"] == "新搬入"
    a.store.put("households", {"id": hid, **household("g1", 1)})
    a.sync()
    assert [r.code for r in a.store.rejections()] == ["out_of_scope"]
    assert district.get("households", hid)["grid_id"] == "g2"
