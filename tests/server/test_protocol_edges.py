"""Edges found in the protocol review: moves across pages, reserved names, empty pushes,
JSON error shapes, non-JSON numbers, and the periodic full checksum rescan."""

from __future__ import annotations

from typing import Any

from serverkit import assert_matches_server, call, error_of, household, json_of

from fieldsync.transport import Request
from server_stub.district import District
from server_stub.replica import Actor


def test_record_moved_between_two_held_grids_survives_any_page_order(district: District,
                                                                      make_device: Any) -> None:
    district.assign("w1", "g2")  # w1 now holds g1 and g2
    device = make_device("w1", page_limit=1)  # one record per page: the move and the departure arrive apart
    hid = device.store.put("households", household("g2", 1))
    device.sync()
    cc = Actor("cc", "command")
    district.write(cc, "households", hid, {"grid_id": "g1"})  # g1's new copy pages before g2's departure
    device.sync()
    assert device.store.get("households", hid)["grid_id"] == "g1"
    assert_matches_server(device.store, district)


def test_a_field_named_id_is_refused(district: District, make_device: Any) -> None:
    device = make_device("w1")
    hid = device.store.put("households", household("g1", 2))
    device.sync()
    change = {"seq": 99, "collection": "households", "id": hid, "grid": "g1",
              "fields": {"id": ["FORGED", "0000000000ff-000000-nx", None]}}
    resp = call(device.transport, device.identity, "/v1/push", {"schema_version": 1, "changes": [change]})
    assert resp.status == 400 and error_of(resp)["code"] == "bad_request"
    assert district.get("households", hid)["id"] == hid


def test_an_empty_push_repeats_no_rejections(district: District, make_device: Any) -> None:
    device = make_device("w3")
    device.store.put("households", household("g1", 3))  # out of scope: rejected
    device.sync()
    assert [r.code for r in device.store.rejections()] == ["out_of_scope"]
    answer = json_of(call(device.transport, device.identity, "/v1/push", {"schema_version": 1, "changes": []}))
    assert answer["rejections"] == [] and answer["acked_seq"] >= 1


def test_unknown_paths_and_methods_answer_json_errors(inproc: object) -> None:
    for method, path, status, code in (("GET", "/v1/nowhere", 404, "not_found"),
                                       ("GET", "/v1/push", 405, "method_not_allowed")):
        resp = inproc.handle(Request(method, path))  # type: ignore[attr-defined]
        assert resp.status == status
        assert error_of(resp)["code"] == code
        assert resp.headers["x-fieldsync-server-time"].isdigit()


def test_nan_is_refused_not_stored(district: District, make_device: Any) -> None:
    device = make_device("w1")
    body = (b'{"schema_version": 1, "changes": [{"seq": 1, "collection": "households", "id": "h-nan", '
            b'"grid": "g1", "fields": {"grid_id": ["g1", "0000000000ff-000000-nx", null], '
            b'"address": ["x", "0000000000ff-000000-nx", null], "members": [NaN, "0000000000ff-000000-nx", null]}}]}')
    resp = call(device.transport, device.identity, "/v1/push", body)
    assert resp.status == 400 and "NaN" in error_of(resp)["message"]
    assert district.get("households", "h-nan") is None


def test_local_damage_is_found_by_the_periodic_rescan(district: District, make_device: Any) -> None:
    device = make_device("w1")
    ids = device.store.put_many("households", [household("g1", n) for n in range(20)])
    device.sync()
    device.sync()  # verified and remembered
    with device.store.atomic():  # damage: a row vanishes without the store knowing
        device.store.db.execute("DELETE FROM records WHERE collection = 'households' AND id = ?", [ids[5]])
    device.sync()  # a no-op sync trusts the remembered verification...
    assert device.store.count("households") == 19
    mark = device.store.get_meta("verified:g1")
    cursor, checksum, _ = mark.split(":")
    device.store.set_meta("verified:g1", f"{cursor}:{checksum}:0")  # ...until it is older than the rescan period
    result = device.sync()
    assert result.repaired >= 1
    assert device.store.count("households") == 20
    assert_matches_server(device.store, district)
