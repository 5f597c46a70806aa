"""One bad change never wedges the queue; its rejection reaches the worker, the record is repaired."""

from __future__ import annotations

import dataclasses

import pytest
from serverkit import assert_matches_server, call, household, json_of, now_ms

from fieldsync import Kind, Registry
from fieldsync.clock import Stamp
from fieldsync.errors import RecordNotFound
from fieldsync.schema import DEFAULT_KINDS

VALID_ID = "11010519491231002X"
BAD_ID = "110105194912310021"  # wrong check digit


def _lenient_registry() -> Registry:
    """An app whose residents kind forgot the ID-number check (a buggy or old build)."""
    kinds = []
    for kind in DEFAULT_KINDS:
        if kind.name == "residents":
            fields = dict(kind.fields)
            fields["id_number"] = dataclasses.replace(fields["id_number"], check=None)
            kind = Kind(kind.name, fields, kind.grid_field, kind.version, kind.description)
        kinds.append(kind)
    return Registry(kinds)


def _wire(value, node: str = "nforged") -> list:
    return [value, Stamp(now_ms(), 0, node).encode(), None]


def test_rejected_changes_do_not_block_the_ones_behind_them(district, make_device, inproc):
    """A hand-built push bypassing every device check: each bad change is refused, the rest apply."""
    dev = make_device("w1")
    hid = "h-manual-1"
    changes = [
        {"seq": 1, "collection": "residents", "id": "r-bad-id", "grid": "g1",
         "fields": {"grid_id": _wire("g1"), "household_id": _wire(hid), "name": _wire("王芳"),
                    "id_number": _wire(BAD_ID)}},
        {"seq": 2, "collection": "households", "id": hid, "grid": "g1",
         "fields": {"grid_id": _wire("g1"), "address": _wire("花园山3栋")}},
        {"seq": 3, "collection": "reports", "id": "rep-1", "grid": "g1",
         "fields": {"grid_id": _wire("g1"), "category": _wire("违章张贴"), "description": _wire("小广告"),
                    "status": _wire("resolved")}},
        {"seq": 4, "collection": "households", "id": "h-elsewhere", "grid": "g2",
         "fields": {"grid_id": _wire("g2"), "address": _wire("彭刘杨路1号")}},
        {"seq": 5, "collection": "residents", "id": "r-good", "grid": "g1",
         "fields": {"grid_id": _wire("g1"), "household_id": _wire(hid), "name": _wire("王芳"),
                    "id_number": _wire(VALID_ID)}},
    ]
    answer = json_of(call(inproc, dev.identity, "/v1/push", {"schema_version": 1, "changes": changes}))
    assert answer["acked_seq"] == 5 and answer["applied"] == 2
    got = {r["seq"]: (r["code"], r["field"]) for r in answer["rejections"]}
    assert got == {1: ("validation_failed", "id_number"), 3: ("transition_not_allowed", "status"),
                   4: ("out_of_scope", "grid_id")}
    assert district.get("residents", "r-bad-id") is None
    assert district.get("reports", "rep-1") is None
    assert district.get("households", "h-elsewhere") is None
    assert district.get("households", hid)["address"] == "花园山3栋"
    assert district.get("residents", "r-good")["id_number"] == VALID_ID
    (me,) = [d for d in district.devices() if d["id"] == dev.device_id]
    assert me["last_seq"] == 5


def test_rejection_reaches_the_device_with_what_was_sent(district, make_device):
    dev = make_device("w1", registry=_lenient_registry())
    dev.sync()
    hid = dev.store.put("households", household("g1", 1))
    bad = dev.store.put("residents", {"grid_id": "g1", "household_id": hid, "name": "王芳", "id_number": BAD_ID})
    rid = dev.store.put("reports", {"grid_id": "g1", "category": "违章张贴", "description": "小广告",
                                    "status": "resolved"})
    vid = dev.store.put("visits", {"grid_id": "g1", "household_id": hid, "worker_id": "w1",
                                   "visited_at": "2024-05-01T09:30:00+08:00", "purpose": "走访"})
    result = dev.sync()
    assert result.pushed == 4 and result.rejected == 2
    assert district.get("visits", vid) is not None and district.get("households", hid) is not None

    rejections = {r.id: r for r in dev.store.rejections()}
    assert set(rejections) == {bad, rid}
    assert rejections[bad].code == "validation_failed" and rejections[bad].field == "id_number"
    assert rejections[bad].values["id_number"] == BAD_ID and rejections[bad].values["name"] == "王芳"
    assert rejections[bad].collection == "residents" and "id_number" in rejections[bad].message
    assert rejections[rid].code == "transition_not_allowed" and rejections[rid].field == "status"
    assert rejections[rid].values["status"] == "resolved"
    assert dev.client.status.rejections == 2

    # Stale repair: the refused records are gone from the device, the accepted ones stay.
    for collection, gone in (("residents", bad), ("reports", rid)):
        with pytest.raises(RecordNotFound):
            dev.store.get(collection, gone)
    assert dev.store.get("visits", vid)["purpose"] == "走访"
    assert dev.store.outbox_size() == 0
    assert_matches_server(dev.store, district)

    # The worker fixes the resident and resubmits, then dismisses the rejection.
    dev.store.put("residents", {"id": bad, "grid_id": "g1", "household_id": hid, "name": "王芳", "id_number": VALID_ID})
    dev.sync()
    assert district.get("residents", bad)["id_number"] == VALID_ID
    seq = rejections[bad].seq
    dev.store.dismiss_rejection(seq)
    assert [r.id for r in dev.store.rejections()] == [rid]
    assert {r.seq for r in dev.store.rejections(include_dismissed=True)} == {seq, rejections[rid].seq}
    dev.sync()
    assert dev.client.status.rejections == 1


def test_rejected_update_reverts_to_the_server_version(district, make_device):
    dev = make_device("w1")
    rid = dev.store.put("reports", {"grid_id": "g1", "category": "占道经营", "description": "流动摊贩",
                                    "status": "submitted"})
    dev.sync()
    before = district.get("reports", rid)
    dev.store.put("reports", {"id": rid, "department": "城管", "description": "流动摊贩，已劝离"})
    dev.sync()
    (rej,) = dev.store.rejections()
    assert (rej.code, rej.field) == ("field_not_allowed", "department")
    assert rej.values == {"department": "城管", "description": "流动摊贩，已劝离"}
    assert district.get("reports", rid) == before
    assert dev.store.get("reports", rid) == before, "the refused edit is reverted locally"
    assert_matches_server(dev.store, district)
