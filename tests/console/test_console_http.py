"""The console over HTTP (in process): sessions, CSRF, role checks by URL, audit, language, enrollment codes."""

from __future__ import annotations

import re
from pathlib import Path

from serverkit import audit_actions, rows

from fieldsync import KdfParams, Store
from fieldsync.sync import enroll
from server_stub import accounts, jobs
from server_stub.console.messages import MESSAGES
from server_stub.replica import Actor

W1 = Actor("w1", "worker", frozenset({"g1"}))
CC = Actor("cc", "command")


def make_report(district, rid: str, department: str | None = None, category: str = "占道经营") -> None:
    district.write(W1, "reports", rid, {"grid_id": "g1", "category": category, "description": f"{rid} 门口摊贩",
                                        "status": "submitted", "reporter_id": "w1"})
    if department:
        district.write(CC, "reports", rid, {"status": "dispatched", "department": department,
                                            "due_at": "2031-01-01T00:00:00+08:00"})


def test_sign_in_cookie_session_storage_and_sign_out(district, console_client, staff):
    anon = console_client(None)
    page = anon.get("/console/login")
    assert page.status_code == 200 and "登录" in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    bad = anon.post("/console/login", {"user": "cc", "password": "wrong-password"}, csrf_from="/console/login")
    assert bad.status_code == 401 and "账号或密码不正确" in bad.text
    assert "fs_console" not in anon.client.cookies

    anon.client.follow_redirects = False
    resp = anon.post("/console/login", {"user": "cc", "password": staff["cc"]}, csrf_from="/console/login")
    assert resp.status_code == 303 and resp.headers["location"] == "/console/reports"
    set_cookie = [v for k, v in resp.headers.multi_items() if k == "set-cookie" and v.startswith("fs_console=")][0]
    assert "HttpOnly" in set_cookie and "SameSite=strict" in set_cookie and "Path=/console" in set_cookie
    sid = anon.client.cookies["fs_console"]
    stored = rows(district, "SELECT id_hash, worker_id, expires_ms - created_ms FROM console_sessions")
    assert len(stored) == 1 and stored[0][0] != sid and sid not in stored[0][0]
    assert stored[0][2] == accounts.SESSION_TTL_S * 1000
    anon.client.follow_redirects = True
    assert anon.get("/console/reports").status_code == 200

    anon.post("/console/logout", {}, csrf_from="/console/reports")
    assert rows(district, "SELECT COUNT(*) FROM console_sessions") == [(0,)]
    anon.client.cookies.set("fs_console", sid, path="/console")
    anon.client.follow_redirects = False
    assert anon.get("/console/reports").headers["location"] == "/console/login", "a closed session is dead"

    actions = [a for _, a, _ in audit_actions(district)]
    assert {"console.sign_in_failed", "console.sign_in", "console.sign_out"} <= set(actions)


def test_expired_sessions_and_non_staff_cannot_sign_in(district, console_client, staff):
    cc = console_client("cc")
    with district.db.transaction() as tx:
        tx.execute("UPDATE console_sessions SET expires_ms = 1")
    cc.client.follow_redirects = False
    assert cc.get("/console/reports").headers["location"] == "/console/login"
    with district.db.transaction() as tx:
        tx.execute("UPDATE workers SET password_hash = ? WHERE id = 'w1'", (accounts.hash_password("worker-pass-1"),))
    anon = console_client(None)
    assert anon.post("/console/login", {"user": "w1", "password": "worker-pass-1"},
                     csrf_from="/console/login").status_code == 401


def test_every_post_needs_the_csrf_token(district, console_client):
    make_report(district, "r1")
    cc = console_client("cc")
    for data in ({}, {"csrf": "forged"}):
        resp = cc.post("/console/reports/r1/dispatch", {"department": "城管", "due_at": "2031-01-01T10:00", **data})
        assert resp.status_code == 403 and "表单已过期" in resp.text
    assert district.get("reports", "r1")["status"] == "submitted"
    assert cc.post("/console/devices/code", {"worker": "w1"}).status_code == 403
    anon = console_client(None)
    assert anon.post("/console/login", {"user": "cc", "password": "x" * 10}).status_code == 403


def test_a_department_sees_and_moves_only_its_own_reports(district, console_client):
    make_report(district, "r-cg", "城管")
    make_report(district, "r-ga", "公安", category="安全隐患")
    make_report(district, "r-new")
    ga = console_client("dept-ga")
    listing = ga.get("/console/reports").text
    assert "r-ga" in listing and "r-cg" not in listing and "r-new" not in listing
    assert ga.get("/console/reports?status=dispatched").text.count('data-id="') == 1
    other = ga.get("/console/reports/r-cg")
    assert other.status_code == 404 and "r-cg 门口摊贩" not in other.text
    assert ga.get("/console/reports/r-new").status_code == 404
    moved = ga.post("/console/reports/r-cg/department", {"status": "in_progress", "note": ""},
                    csrf_from="/console/reports/r-ga")
    assert moved.status_code == 404 and district.get("reports", "r-cg")["status"] == "dispatched"
    for page in ("/console/devices", "/console/coverage", "/console/review"):
        assert ga.get(page).status_code == 403
    assert ga.post("/console/reports/r-ga/dispatch", {"department": "公安", "due_at": "2031-01-01T10:00"},
                   csrf_from="/console/reports/r-ga").status_code == 403
    refusals = [o for _, a, o in audit_actions(district) if a == "authz.refused_console"]
    assert "/console/reports/r-cg" in refusals and "/console/reports/r-cg/department" in refusals


def test_dispatch_progress_and_resolution_through_the_console(district, console_client):
    make_report(district, "r1")
    cc = console_client("cc")
    page = cc.get("/console/reports/r1").text
    assert 'id="dispatch-form"' in page and 'value="城管" selected' in page, "the rule's department is suggested"
    cc.post("/console/reports/r1/dispatch", {"department": "城管", "due_at": "2031-05-01T18:00", "note": "请两日内处理"},
            csrf_from="/console/reports/r1")
    r1 = district.get("reports", "r1")
    assert r1["status"] == "dispatched" and r1["department"] == "城管" and r1["due_at"].startswith("2031-05-01T18:00")
    assert r1["timeline"][-1]["note"] == "请两日内处理" and r1["timeline"][-1]["by"] == "cc"
    cg = console_client("dept-cg")
    no_note = cg.post("/console/reports/r1/department", {"status": "resolved", "note": " "},
                      csrf_from="/console/reports/r1")
    assert "办结时请填写办理结果" in no_note.text and district.get("reports", "r1")["status"] == "dispatched"
    cg.post("/console/reports/r1/department", {"status": "in_progress", "note": ""}, csrf_from="/console/reports/r1")
    done = cg.post("/console/reports/r1/department", {"status": "resolved", "note": "已清理"},
                   csrf_from="/console/reports/r1")
    assert "已保存" in done.text and "已清理" in done.text
    # A department's move the workflow does not allow is refused, not applied.
    again = cg.post("/console/reports/r1/department", {"status": "in_progress", "note": ""},
                    csrf_from="/console/reports/r1")
    assert again.status_code == 200 and district.get("reports", "r1")["status"] == "resolved"
    cc.post("/console/reports/r1/command", {"status": "confirmed"}, csrf_from="/console/reports/r1")
    assert district.get("reports", "r1")["status"] == "confirmed"
    acts = [(a, act, o) for a, act, o in audit_actions(district) if act.startswith("report.")]
    assert acts == [("console:cc", "report.dispatch", "report:r1"), ("console:dept-cg", "report.in_progress", "report:r1"),
                    ("console:dept-cg", "report.resolved", "report:r1"), ("console:cc", "report.confirmed", "report:r1")]


def test_enrollment_code_as_qr_and_revocation(district, console_client, inproc, tmp_path):
    cc = console_client("cc")
    page = cc.post("/console/devices/code", {"worker": "w1"}, csrf_from="/console/devices")
    assert page.status_code == 200 and "<svg" in page.text
    code = re.search(r'id="code">([^<]+)<', page.text).group(1)
    store = Store.create(tmp_path / "tablet.fsdb", "2580", kdf=KdfParams(n=2**10))
    ident = enroll(store, "http://in-process", code, transport=inproc)
    devices = cc.get("/console/devices").text
    assert ident.device_id in devices and "正常" in devices
    cc.post(f"/console/devices/{ident.device_id}/revoke", {"wipe": "1"}, csrf_from="/console/devices")
    row = [d for d in district.devices() if d["id"] == ident.device_id][0]
    assert row["revoked_ms"] is not None and row["wipe"] == 1
    assert "已停用并擦除" in cc.get("/console/devices").text
    assert ("console:cc", "device.revoke", f"device:{ident.device_id}") in audit_actions(district)
    assert any(a == "console:cc" and act.startswith("enroll") for a, act, _ in audit_actions(district))


def test_english_switch_and_no_open_redirect(district, console_client):
    make_report(district, "r1")
    cc = console_client("cc")
    cc.client.follow_redirects = False
    resp = cc.get("/console/lang/en?next=/console/reports/r1")
    assert resp.headers["location"] == "/console/reports/r1"
    assert cc.get("/console/lang/en?next=https://evil.example/").headers["location"] == "/console/reports"
    assert cc.get("/console/lang/en?next=//evil.example/").headers["location"] == "/console/reports"
    cc.client.follow_redirects = True
    page = cc.get("/console/reports/r1").text
    assert "Dispatch" in page and "Submitted" in page and "派遣" not in page


def test_coverage_and_review_pages_show_the_jobs_results(district, console_client):
    make_report(district, "r1", "城管")
    district.write(CC, "reports", "r1", {"due_at": "2020-01-01T00:00:00+08:00"})
    district.write_many(CC, "households", [{"id": "h1", "grid_id": "g1", "address": "花园山1栋"}])
    jobs.run("coverage", district)
    jobs.run("escalate", district)
    cc = console_client("cc")
    cov = cc.get("/console/coverage").text
    assert '<svg' in cov and "花园山1网格" in cov and "0/1" in cov
    review = cc.get("/console/review").text
    assert "r1" in review and "超期" in review
    overdue = cc.get("/console/reports?overdue=1").text
    assert overdue.count('data-id="') == 1


def test_every_message_the_console_uses_is_in_the_catalog_in_both_languages():
    console = Path(__file__).resolve().parents[2] / "server_stub" / "console"
    text = "".join(p.read_text(encoding="utf-8") for p in [*console.glob("templates/*.html"), console / "app.py"])
    used = set(re.findall(r"""\bt\((?:lang, )?['"]([a-z_]+\.[a-z_]+)['"]""", text))
    used |= set(re.findall(r"""Refusal\(\d+, "([a-z_]+\.[a-z_]+)"\)""", text))
    assert len(used) > 60
    assert not used - set(MESSAGES), f"used but missing from the catalog: {sorted(used - set(MESSAGES))}"
    for key, (zh, en) in MESSAGES.items():
        assert zh and en and zh != en or key == "nav.lang", key
