"""Concurrent offline edits converge to the server's state; overwrites are kept as conflicts."""

from __future__ import annotations

import time

from serverkit import assert_matches_server, household, rows

from fieldsync.clock import DEFAULT_MAX_DRIFT_MS, Stamp
from fieldsync.merge import FieldWrite
from server_stub.replica import load_state

DAY_MS = 24 * 3600 * 1000


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _server_state(district, collection: str, rid: str) -> dict[str, FieldWrite]:
    (body,) = rows(district, "SELECT body FROM records WHERE collection = ? AND id = ?", (collection, rid))[0]
    return load_state(body)


def test_two_devices_editing_one_household_offline_converge(district, make_device):
    a, b = make_device("w1"), make_device("w2")
    hid = a.store.put("households", household("g1", 1))
    a.sync()
    b.sync()

    # Offline: different fields on each side, and the same field on both.
    a.store.put("households", {"id": hid, "phone": "13900000001", "room": "301"})
    b.store.put("households", {"id": hid, "phone": "13900000002", "notes": "独居"})
    for _ in range(2):
        a.sync()
        b.sync()

    server = district.get("households", hid)
    assert server["room"] == "301" and server["notes"] == "独居"
    assert server["phone"] in ("13900000001", "13900000002")
    lost = ({"13900000001", "13900000002"} - {server["phone"]}).pop()
    for dev in (a, b):
        assert dev.store.get("households", hid) == server
        assert dev.store.outbox_size() == 0
        assert_matches_server(dev.store, district)

    for dev in (a, b):
        (conflict,) = [c for c in dev.store.list("conflicts") if c["record_id"] == hid]
        assert conflict["collection"] == "households" and conflict["field"] == "phone"
        assert conflict["kept_value"] == server["phone"] and conflict["lost_value"] == lost
        assert conflict["status"] == "open"
        assert Stamp.decode(conflict["kept_stamp"]) > Stamp.decode(conflict["lost_stamp"])
        assert dev.client.status.conflicts == 1
    # Only the concurrent field conflicted; the other two merged silently.
    assert len(district_conflicts(district)) == 1


def district_conflicts(district) -> list[str]:
    return [r[0] for r in rows(district, "SELECT id FROM records WHERE collection = 'conflicts'")]


def test_sequential_edits_are_not_conflicts(district, make_device):
    a, b = make_device("w1"), make_device("w2")
    hid = a.store.put("households", household("g1", 1))
    a.sync()
    b.sync()
    b.store.put("households", {"id": hid, "phone": "13900000002"})
    b.sync()
    a.sync()
    a.store.put("households", {"id": hid, "phone": "13900000003"})
    a.sync()
    b.sync()
    assert b.store.get("households", hid)["phone"] == "13900000003"
    assert district_conflicts(district) == []


def test_delete_and_concurrent_edit_converge(district, make_device):
    a, b = make_device("w1"), make_device("w2")
    hid = a.store.put("households", household("g1", 1))
    a.sync()
    b.sync()
    a.store.delete("households", hid)
    b.store.put("households", {"id": hid, "notes": "已搬走?"})
    for _ in range(2):
        a.sync()
        b.sync()
    assert district.get("households", hid) is not None  # a tombstone, kept with its clock
    assert a.store.count("households") == b.store.count("households")
    for dev in (a, b):
        assert_matches_server(dev.store, district)


def test_clock_a_day_fast_is_clamped_and_converges(district, make_device):
    fast = make_device("w1", wall=lambda: _wall_ms() + DAY_MS)
    honest = make_device("w2")
    hid = honest.store.put("households", household("g1", 1))
    honest.sync()
    fast.sync()

    fast.store.put("households", {"id": hid, "phone": "13911111111", "room": "502"})
    local = fast.store.outbox()[0].fields["phone"].stamp
    assert local.wall_ms > _wall_ms() + DAY_MS - 60_000, "the device really stamps a day ahead"
    fast.sync()

    limit = _wall_ms() + DEFAULT_MAX_DRIFT_MS
    state = _server_state(district, "households", hid)
    assert state["phone"].value == "13911111111"
    assert state["phone"].stamp.wall_ms <= limit, "the server clamped the future stamp"
    assert state["room"].stamp.wall_ms <= limit
    assert_matches_server(fast.store, district)

    # An honest later edit beats the clamped one: without clamping it would lose for a whole day.
    honest.sync()
    honest.store.put("households", {"id": hid, "phone": "13922222222"})
    honest.sync()
    assert district.get("households", hid)["phone"] == "13922222222"
    fast.sync()
    assert fast.store.get("households", hid)["phone"] == "13922222222"
    for dev in (fast, honest):
        assert_matches_server(dev.store, district)
    for stamp_wall in (w.stamp.wall_ms for w in _server_state(district, "households", hid).values()):
        assert stamp_wall <= _wall_ms() + DEFAULT_MAX_DRIFT_MS
