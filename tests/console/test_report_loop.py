"""The report loop end to end: a tablet (Store + SyncClient over HTTP to a real server) reports offline,
the dispatch job routes it, a department works it in the console, the tablet shows every status with
its time, and the worker confirms or reopens.  On both backends."""

from __future__ import annotations

import io
from datetime import datetime

import requests
from consolekit import ConsoleSession
from photo import jpeg

from fieldsync.transport import RequestsTransport
from server_stub import jobs
from terminal_app.services.inbox import report_steps, set_report_status


def _statuses(report: dict) -> list[str]:
    return [s["status"] for s in report.get("timeline") or []]


def test_a_report_goes_round_the_loop(district, staff, make_device, live_server):
    dev = make_device("w1", RequestsTransport(live_server))
    photo = jpeg()
    attachment = dev.store.attachments.add(io.BytesIO(photo))
    # Offline: saved on the tablet only.
    rid = dev.store.put("reports", {"grid_id": "g1", "category": "占道经营", "description": "花园山3栋门口流动摊贩占道经营",
                                    "status": "submitted", "reporter_id": "w1", "attachments": [attachment.hash],
                                    "reported_at": datetime.now().astimezone().isoformat(timespec="seconds")})
    assert district.get("reports", rid) is None
    dev.sync()
    server = district.get("reports", rid)
    assert server["status"] == "submitted" and _statuses(server) == ["submitted"]
    assert district.attachments.state(attachment.hash).complete, "the photo followed the record"

    assert jobs.run("dispatch", district)["dispatched"] == 1
    dev.sync()
    mine = dev.store.get("reports", rid)
    assert mine["status"] == "dispatched" and mine["department"] == "城管" and mine["due_at"]

    dept = ConsoleSession(requests.Session(), live_server)
    dept.sign_in("dept-cg", staff["dept-cg"])
    page = dept.get(f"/console/reports/{rid}")
    assert page.status_code == 200 and attachment.hash in page.text
    img = dept.get(f"/console/reports/{rid}/photos/{attachment.hash}")
    assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg" and img.content == photo

    resp = dept.post(f"/console/reports/{rid}/department", {"status": "in_progress", "note": "已通知城管中队前往"},
                     csrf_from=f"/console/reports/{rid}")
    assert resp.status_code == 200
    dev.sync()
    assert dev.store.get("reports", rid)["status"] == "in_progress"
    dept.post(f"/console/reports/{rid}/department", {"status": "resolved", "note": "摊贩已劝离，现场已清理"},
              csrf_from=f"/console/reports/{rid}")
    dev.sync()
    mine = dev.store.get("reports", rid)
    assert mine["status"] == "resolved" and mine["resolution"] == "摊贩已劝离，现场已清理"
    steps = report_steps(mine)
    assert [s["status"] for s in steps] == ["submitted", "dispatched", "in_progress", "resolved"]
    assert all(datetime.fromisoformat(s["at"]) for s in steps), "every step has the server's time"
    assert steps[-1]["note"] == "摊贩已劝离，现场已清理" and steps[-1]["role"] == "department"

    # The worker confirms on the tablet; the server records the step.
    set_report_status(dev.store, rid, "confirmed")
    dev.sync()
    server = district.get("reports", rid)
    assert server["status"] == "confirmed" and _statuses(server)[-1] == "confirmed"
    assert server["timeline"][-1]["by"] == "w1" and server["timeline"][-1]["role"] == "worker"
    assert dev.store.outbox_size() == 0 and not dev.store.rejections()


def test_a_reopened_report_is_dispatched_again_and_illegal_moves_are_refused(district, staff, make_device, live_server):
    dev = make_device("w1", RequestsTransport(live_server))
    rid = dev.store.put("reports", {"grid_id": "g1", "category": "安全隐患", "description": "楼道内电动车充电",
                                    "status": "submitted", "reporter_id": "w1"})
    dev.sync()
    cc = ConsoleSession(requests.Session(), live_server)
    cc.sign_in("cc", staff["cc"])
    cc.post(f"/console/reports/{rid}/dispatch", {"department": "公安", "due_at": "2031-01-01T12:00", "note": ""},
            csrf_from=f"/console/reports/{rid}")
    assert district.get("reports", rid)["department"] == "公安"
    ga = ConsoleSession(requests.Session(), live_server)
    ga.sign_in("dept-ga", staff["dept-ga"])
    ga.post(f"/console/reports/{rid}/department", {"status": "resolved", "note": "已现场劝导"},
            csrf_from=f"/console/reports/{rid}")
    dev.sync()
    # A worker may not move a resolved report back to in_progress: the server refuses it.
    dev.store.put("reports", {"id": rid, "status": "in_progress"})
    dev.sync()
    assert [r.code for r in dev.store.rejections()] == ["transition_not_allowed"]
    dev.sync()
    assert dev.store.get("reports", rid)["status"] == "resolved"

    set_report_status(dev.store, rid, "reopened")
    dev.sync()
    assert district.get("reports", rid)["status"] == "reopened"
    assert jobs.run("dispatch", district)["dispatched"] == 1
    dev.sync()
    mine = dev.store.get("reports", rid)
    assert mine["status"] == "dispatched"
    assert _statuses(mine) == ["submitted", "dispatched", "resolved", "reopened", "dispatched"]
