"""Enrollment, a push/pull round trip, the status value, progress reports and compression."""

from __future__ import annotations

import gzip
import json

import pytest
import requests
from serverkit import Tap, assert_matches_server, household, rows, signed_request

from fieldsync.errors import NetworkError, RecordNotFound
from fieldsync.identity import load_identity
from fieldsync.protocol import dumps
from fieldsync.sync import SyncProgress, SyncStatus
from fieldsync.transport import Request, Response


def test_enroll_binds_a_device_to_the_worker_and_first_sync_gets_its_grid(district, make_device):
    dev = make_device("w1")
    ident = load_identity(dev.store)
    assert ident is not None and ident.worker_id == "w1" and ident.device_id.startswith("d")
    listed = {d["id"]: d for d in district.devices()}
    assert listed[ident.device_id]["worker_id"] == "w1"
    assert listed[ident.device_id]["revoked_ms"] is None

    result = dev.sync()
    assert result.grids == ["g1"] and dev.store.grids() == ["g1"]
    assert dev.store.get("grids", "g1")["name"] == "花园山1网格"
    with pytest.raises(RecordNotFound):
        dev.store.get("grids", "g2")  # not this worker's grid
    assert ("worker:w1", "device.enroll", f"device:{ident.device_id}") in [
        (a, act, o) for a, act, o in rows(district, "SELECT actor, action, object FROM audit_log")]


def test_round_trip_between_two_devices_of_one_grid(district, make_device, via):
    a, b = make_device("w1", via), make_device("w2", via)
    a.sync()
    b.sync()
    hid = a.store.put("households", household("g1", 1, members=3))
    res = a.sync()
    assert res.pushed == 1 and res.rejected == 0
    assert district.get("households", hid)["members"] == 3

    res = b.sync()
    assert res.pulled >= 1
    assert b.store.get("households", hid) == a.store.get("households", hid) == district.get("households", hid)

    # and back: b edits, a receives
    b.store.put("households", {"id": hid, "notes": "独居老人，每周探访", "tags": ["独居老人"]})
    b.sync()
    a.sync()
    assert a.store.get("households", hid)["notes"] == "独居老人，每周探访"
    assert a.store.find("households", "head_name", "张1")[0]["id"] == hid
    for dev in (a, b):
        assert dev.store.outbox_size() == 0
        assert_matches_server(dev.store, district)


def test_status_after_sync_and_while_offline(district, make_device, inproc):
    seen: list[SyncStatus] = []
    dev = make_device("w1", on_status=seen.append)
    dev.store.put("households", household("g1", 2))
    dev.sync()
    status = dev.client.status
    assert status.pending == 0 and status.online is True and status.phase == "idle"
    assert status.last_error is None and status.progress is None
    assert status.last_synced_ms is not None and abs(status.last_synced_ms - dev.store.now_ms()) < 60_000
    assert dev.store.get_meta("last_synced_ms") == status.last_synced_ms
    pushing = [s for s in seen if s.phase == "pushing"]
    assert pushing and pushing[0].pending == 1, "the UI must see the pending change while it is pushed"
    assert any(s.phase == "pulling" for s in seen)
    assert seen[-1] == status

    def down(request: Request, n: int) -> None:
        raise NetworkError("no signal")

    dev.client.transport = Tap(inproc, before=down)
    dev.store.put("households", household("g1", 3))
    with pytest.raises(NetworkError):
        dev.sync()
    offline = dev.client.status
    assert offline.online is False and offline.pending == 1 and offline.last_error
    assert offline.last_synced_ms == status.last_synced_ms, "a failed sync is not a sync"


def test_progress_reports_records_and_bytes(district, make_device):
    a, b = make_device("w1"), make_device("w2")
    a.store.put_many("households", [household("g1", n) for n in range(30)])
    pushed: list[SyncProgress] = []
    result = a.sync(progress=pushed.append)
    push_steps = [p for p in pushed if p.phase == "pushing"]
    assert push_steps and push_steps[-1].records == 30 == result.pushed
    assert push_steps[-1].bytes_sent > 0 and push_steps[-1].bytes_received > 0
    assert result.bytes_sent >= push_steps[-1].bytes_sent

    pulled: list[SyncProgress] = []
    result = b.sync(progress=pulled.append)
    pull_steps = [p for p in pulled if p.phase == "pulling"]
    assert pull_steps[-1].records == result.pulled == 31  # 30 households and the grid record
    assert pull_steps[-1].bytes_received == result.bytes_received > 0
    counts = [p.records for p in pulled]
    assert counts == sorted(counts), "progress never goes backwards"


def test_big_push_is_gzipped_and_small_one_is_not(district, make_device, via):
    tap = Tap(via)
    dev = make_device("w1", tap)
    tap.clear()
    dev.store.put("households", household("g1", 1))
    dev.sync()
    (small,) = tap.to("/v1/push")
    assert "Content-Encoding" not in small.request.headers
    assert small.request.headers.get("Accept-Encoding") == "gzip"

    tap.clear()
    dev.store.put_many("households", [household("g1", n, notes="楼道堆物，已提醒清理。" * 10) for n in range(40)])
    result = dev.sync()
    (big,) = tap.to("/v1/push")
    assert big.request.headers["Content-Encoding"] == "gzip"
    assert big.request.body[:2] == b"\x1f\x8b"
    assert len(big.payload()["changes"]) == 40
    assert len(big.request.body) < len(dumps(big.payload())) / 3
    assert result.pushed == 40 and big.answer()["acked_seq"] == 41
    assert len([r for r in rows(district, "SELECT id FROM records WHERE collection = 'households'")]) == 41


def test_live_server_compresses_a_big_pull_page(district, make_device, live, live_server):
    writer = make_device("w1", live)
    writer.store.put_many("households", [household("g1", n, notes="独居老人，需每周探访。" * 5) for n in range(60)])
    writer.sync()

    tap = Tap(live)
    reader = make_device("w2", tap)
    tap.clear()
    reader.sync()
    page = tap.to("/v1/pull")[0]
    assert page.response is not None and page.response.headers.get("content-encoding") == "gzip"
    assert len(page.answer()["changes"]) == 61

    # The bytes on the wire, undecoded: a gzip stream much smaller than the JSON it holds.
    ident = load_identity(reader.store)
    req = signed_request(ident, "/v1/pull", {"schema_version": 1, "cursors": {}, "limit": 500},
                         headers={"Accept-Encoding": "gzip"})
    raw = requests.post(live_server + req.path, data=req.body, headers=req.headers, stream=True, timeout=30)
    assert raw.status_code == 200 and raw.headers["Content-Encoding"] == "gzip"
    wire = raw.raw.read(decode_content=False)
    assert wire[:2] == b"\x1f\x8b"
    plain = gzip.decompress(wire)
    assert len(json.loads(plain)["changes"]) == 61
    assert len(wire) < len(plain) / 3


def test_small_answers_are_not_compressed(make_device, live):
    tap = Tap(live)
    dev = make_device("w3", tap)
    dev.sync()
    resp: Response | None = tap.to("/v1/pull")[-1].response
    assert resp is not None and "content-encoding" not in resp.headers
