"""The server keeps each report's timeline: one step per status move, whoever made it."""

from __future__ import annotations

from typing import Any

from server_stub.district import District
from server_stub.replica import Actor


def test_every_status_move_adds_one_server_timeline_step(district: District, make_device: Any) -> None:
    worker = make_device("w1")
    rid = worker.store.put("reports", {"grid_id": "g1", "category": "违规张贴广告", "description": "楼道小广告",
                                       "location": "花园山3栋", "status": "submitted", "reporter_id": "w1"})
    worker.sync()
    district.write(Actor("cc", "command"), "reports", rid, {"status": "dispatched", "department": "城管"})
    district.write(Actor("dept-cg", "department"), "reports", rid, {"status": "in_progress"})
    district.write(Actor("dept-cg", "department"), "reports", rid, {"status": "resolved"})
    worker.sync()
    assert worker.store.get("reports", rid)["status"] == "resolved"
    worker.store.put("reports", {"id": rid, "status": "confirmed"})
    worker.sync()
    steps = worker.store.get("reports", rid)["timeline"]
    assert [(s["status"], s["role"]) for s in steps] == [
        ("submitted", "worker"), ("dispatched", "command"), ("in_progress", "department"),
        ("resolved", "department"), ("confirmed", "worker")]
    assert steps[0]["by"] == "w1" and steps[1]["by"] == "cc"
    assert all(s["at"][:4].isdigit() for s in steps)
    assert worker.store.rejections() == []
    # a worker still cannot write the timeline itself
    worker.store.put("reports", {"id": rid, "timeline": []})
    worker.sync()
    assert [r.code for r in worker.store.rejections()] == ["field_not_allowed"]
    assert len(district.get("reports", rid)["timeline"]) == 5
