"""Every row of the authorisation matrix (``authz_matrix.py``) against a real server.

Every row runs in process on SQLite and on PostgreSQL; a sample of grid-B
probes crosses a real uvicorn socket.  Each test checks the status and error code, that the
refusal is in the audit log as documented, and that nothing of grid B is in the answer.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import pytest
from authz_matrix import DOC, ROWS, Row, doc_table, markdown_table
from securitykit import PHOTO_A, PHOTO_B, STAFF_PASSWORDS, UPLOAD_A, World, enroll_raw

from fieldsync.clock import Stamp
from fieldsync.protocol import N_BUCKETS, dumps
from fieldsync.schema import SCHEMA_VERSION
from fieldsync.transport import Request, Response

SYNC = [r for r in ROWS if not r.route.startswith("/console")]
CONSOLE = [r for r in ROWS if r.route.startswith("/console")]
DEVICE_ROLES = {"worker", "revoked", "revoked-expired", "unenrolled-key", "bad-signature"}


def _id(row: Row) -> str:
    return f"{row.method} {row.route} {row.role} {row.objects} {row.case}"


def test_the_documented_table_is_the_matrix() -> None:
    assert doc_table(DOC.read_text(encoding="utf-8")) == markdown_table(), (
        "docs/security.md and tests/security/authz_matrix.py disagree: run python tests/security/authz_matrix.py --write")


def test_the_matrix_covers_every_route_of_the_server(world: World) -> None:
    from starlette.routing import Mount, Route

    from server_stub.app import create_app

    served: set[tuple[str, str]] = set()
    for route in create_app(world.district).routes:
        if isinstance(route, Mount) and route.path == "/console":
            for sub in route.routes:
                path = "/console" + (sub.path if sub.path != "/" else "/")
                if isinstance(sub, Mount):
                    served.add(("GET", path + "/{file}"))
                else:
                    served |= {(m, path) for m in (sub.methods or ()) if m != "HEAD"}
        elif isinstance(route, Route):
            served |= {(m, route.path) for m in (route.methods or ()) if m != "HEAD"}
    matrix = {(r.method, r.route) for r in ROWS}
    assert served - matrix == set(), "routes missing from the matrix"
    assert matrix - served == set(), "matrix rows for routes the server does not have"


# -- the sync API ---------------------------------------------------------------------------

@dataclass
class Probe:
    request: Request
    names: str  # text the request itself carries (an id it names may come back, e.g. in a rejection)


def _change(world: World, identity: Any, rid: str, grid: str, fields: dict[str, Any]) -> dict[str, Any]:
    with world.district.db.transaction() as tx:
        row = tx.one("SELECT last_seq FROM devices WHERE id = ?", (identity.device_id,))
    seq = int(row[0]) + 1 if row else 1
    stamp = Stamp(time.time_ns() // 1_000_000, 0, "nprobe").encode()
    return {"seq": seq, "collection": "households", "id": rid, "grid": grid,
            "fields": {k: [v, stamp, None] for k, v in fields.items()}}


def _sync_probe(world: World, row: Row) -> Probe:
    grid = "g1" if row.objects == "own" else "g2"
    identity = world.devices.get(row.role)
    body: dict[str, Any] | bytes = {}
    path, query, size = row.route, "", None
    own = row.objects == "own"
    digest = world.ids["hashUp" if (own and row.method == "PUT") else "hashA" if own else "hashB"]
    if row.route == "/v1/push":
        if "create" in row.case:
            change = _change(world, identity or world.devices["worker"], f"hnew{os.urandom(4).hex()}",
                             grid, {"grid_id": grid, "address": "新地址1号"})
        elif "update" in row.case:
            change = _change(world, identity or world.devices["worker"], world.ids["hB"], "g2", {"phone": "13000000000"})
        else:  # a final push of grid A's work
            change = _change(world, identity or world.devices["worker"], f"hfin{os.urandom(4).hex()}",
                             "g1", {"grid_id": "g1", "address": "最后一户"})
        body = {"schema_version": SCHEMA_VERSION, "changes": [change]}
    elif row.route == "/v1/pull":
        # "grids" is no pull parameter: a filter naming grid B must change nothing.
        body = {"schema_version": SCHEMA_VERSION, "cursors": {grid: 0}, "limit": 1000, "grids": [grid]}
    elif row.route == "/v1/buckets":
        body = {"grid": grid}
    elif row.route == "/v1/repair":
        body = {"grid": grid, "buckets": list(range(N_BUCKETS))}
    elif row.route == "/v1/wait":
        body = {"schema_version": SCHEMA_VERSION, "cursors": {grid: 0}, "timeout_ms": 0}
    elif row.route == "/v1/attachments/status":
        body = {"schema_version": SCHEMA_VERSION, "hashes": [digest]}
    elif row.route == "/v1/attachments/{hash}":
        path = f"/v1/attachments/{digest}"
        if row.method == "PUT":
            data = UPLOAD_A if own else PHOTO_B
            body, query, size = data, "offset=0", len(data)
        else:
            query = "offset=0&length=1048576"
    elif row.route == "/v1/enroll":
        body = {"code": "AAAA-BBBB-CCCC", "public_key": "", "node_id": "nguess", "schema_version": SCHEMA_VERSION}
        from fieldsync.identity import new_key, public_key_b64

        body["public_key"] = public_key_b64(new_key())
    raw = body if isinstance(body, bytes) else (dumps(body) if row.method != "GET" else b"")
    headers = {"Content-Type": "application/octet-stream" if isinstance(body, bytes) else "application/json"}
    if size is not None:
        headers["X-Fieldsync-Attachment-Size"] = str(size)
    if identity is not None and row.role != "anonymous":
        headers.update(identity.sign(row.method, path, query, raw))
    names = path + query + (raw.decode("utf-8", "replace") if not isinstance(body, bytes) else "")
    return Probe(Request(row.method, path, query, headers, raw), names)


def _check_sync_answer(world: World, row: Row, resp: Response, probe: Probe) -> None:
    text = resp.body.decode("utf-8", "replace")
    assert resp.status == row.status, f"{resp.status}: {text[:300]}"
    if row.status >= 400:
        assert json.loads(resp.body)["error"]["code"] == row.code
    elif row.route == "/v1/push":
        answer = json.loads(resp.body)
        assert [r["code"] for r in answer["rejections"]] == ([row.code] if row.code else [])
        assert answer["applied"] == (0 if row.code else 1)
        assert ("revoked" in answer) == row.role.startswith("revoked")
    elif row.route in ("/v1/pull", "/v1/me"):
        answer = json.loads(resp.body)
        assert answer["grids"] == ["g1"]
        if row.route == "/v1/pull":
            assert set(answer["cursors"]) == {"g1"} and {c["grid"] for c in answer["changes"]} == {"g1"}
            assert world.ids["hA"] in {c["id"] for c in answer["changes"]}, "the worker's own grid arrives"
    elif row.route == "/v1/wait":
        assert json.loads(resp.body)["changed"] == ["g1"], "only the worker's grid is ever reported"
    elif row.route == "/v1/buckets":
        assert json.loads(resp.body)["grid"] == "g1"
    elif row.route == "/v1/repair":
        assert world.ids["hA"] in {r["id"] for r in json.loads(resp.body)["records"]}
    elif row.route == "/v1/attachments/status":
        assert json.loads(resp.body)["attachments"][0]["state"] == "complete"
    elif row.route == "/v1/attachments/{hash}" and row.method == "GET":
        assert resp.body == PHOTO_A
    elif row.route == "/v1/attachments/{hash}":
        assert json.loads(resp.body)["state"] == "complete"
    leaked = [m for m in world.b_markers() if m not in probe.names and m in text]
    assert not leaked, f"grid B leaked into the answer: {leaked}"
    assert b"GRID-B-PHOTO-SECRET" not in resp.body


def _check_audit(world: World, row: Row, entries: list[tuple[str, str, str, str]], subject: str) -> None:
    actions = [a for _, a, _, _ in entries]
    if row.audit:
        found = [e for e in entries if e[1] == row.audit]
        assert found, f"expected {row.audit!r} in the audit log, got {actions}"
        assert all(subject in actor for actor, _, _, _ in found), found
    refusals = {a for a in actions if a.startswith(("authz.", "auth."))}
    expected = {row.audit} if row.audit.startswith(("authz.", "auth.")) else set()
    if row.role == "revoked":
        expected.add("auth.revoked_device_contact")  # every contact in the grace period is noted
    assert refusals == expected, f"audited {actions}"


@pytest.mark.parametrize("row", SYNC, ids=_id)
def test_sync_api(world: World, row: Row) -> None:
    probe = _sync_probe(world, row)
    before = world.audit_head()
    resp = world.transport.handle(probe.request)
    _check_sync_answer(world, row, resp, probe)
    identity = world.devices.get(row.role)
    subject = f"device:{identity.device_id[:20]}" if identity is not None else "source:"
    _check_audit(world, row, world.audit_since(before), subject)


def test_worker_probes_of_grid_b_over_real_uvicorn(district, make_device, live, tmp_path) -> None:
    """The grid-B rows over a real socket: the refusals do not depend on the in-process transport."""
    from server_stub.replica import Actor

    hB = "hBlive01"
    district.write_many(Actor("seed", "admin"), "households", [
        {"id": hB, "grid_id": "g2", "address": "彭刘杨路秘密巷9号", "head_name": "欧阳秘户", "phone": "13977770001"}])
    district.write_many(Actor("seed", "admin"), "reports", [
        {"id": "rBlive01", "grid_id": "g2", "category": "市容环境", "description": "B网格秘密事件：井盖丢失",
         "status": "submitted", "attachments": [_sha(PHOTO_B)]}])
    district.attachments.append(_sha(PHOTO_B), 0, PHOTO_B, len(PHOTO_B))
    code, _ = district.issue_code("w1")
    worker = enroll_raw(live, code, "w1", "nlive")
    world = World(district, live, ids={"hA": "-", "hB": hB, "rB": "rBlive01", "hashA": "-", "hashB": _sha(PHOTO_B),
                                       "hashUp": "-", "rA": "-"}, devices={"worker": worker})
    rows = [r for r in SYNC if r.role == "worker" and r.objects == "other"]
    assert len(rows) >= 8
    for row in rows:
        probe = _sync_probe(world, row)
        before = world.audit_head()
        resp = live.handle(probe.request)
        text = resp.body.decode("utf-8", "replace")
        assert resp.status == row.status, f"{_id(row)}: {resp.status} {text[:200]}"
        if row.status >= 400:
            assert json.loads(resp.body)["error"]["code"] == row.code
        for marker in ("欧阳秘户", "13977770001", "井盖丢失", "GRID-B-PHOTO-SECRET"):
            assert marker not in text
        _check_audit(world, row, world.audit_since(before), f"device:{worker.device_id}")


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


# -- the web console ------------------------------------------------------------------------

CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')
STAFF = {"command": "cc", "department": "dept-cg"}


def _console_client(world: World, role: str) -> tuple[Any, str]:
    """A TestClient on the real app, signed in as the role's staff member: (client, csrf)."""
    from starlette.testclient import TestClient

    from server_stub.app import create_app

    client = TestClient(create_app(world.district), base_url="http://testserver", follow_redirects=False)
    if role not in STAFF:
        return client, ""
    page = client.get("/console/login")
    token = CSRF_RE.search(page.text)
    assert token
    user = STAFF[role]
    resp = client.post("/console/login", data={"user": user, "password": STAFF_PASSWORDS[user],
                                               "csrf": token.group(1)})
    assert resp.status_code == 303, resp.text[:300]
    page = client.get("/console/reports")
    found = CSRF_RE.search(page.text)
    assert page.status_code == 200 and found
    return client, found.group(1)


def _console_request(world: World, row: Row, client: Any, csrf: str) -> Any:
    ids = world.ids
    rid = {"own": ids["rA"], "other": ids["rB"]}.get(row.objects, ids["rB"])
    form: dict[str, str] = {"csrf": csrf}
    path = row.route
    if row.route == "/console/reports/{rid}/dispatch":
        rid = ids["rSub"] if row.role == "command" else rid
        form.update(department="城管", due_at="2030-01-01T10:00")
    elif row.route == "/console/reports/{rid}/command":
        rid = ids["rRej"] if row.role == "command" else rid
        form.update(status="rejected", note="重复上报")
    elif row.route == "/console/reports/{rid}/department":
        form.update(status="in_progress", note="已受理")
    elif row.route == "/console/devices/code":
        form.update(worker="w1")
    elif row.route == "/console/login":
        page = client.get("/console/login")
        found = CSRF_RE.search(page.text)
        assert found
        form = {"user": "dept-cg", "password": "not-the-password", "csrf": found.group(1)}
    photo = ids["hashA"] if row.objects == "own" else ids["hashB"]
    path = (path.replace("{rid}", rid).replace("{hash}", photo).replace("{tid}", ids["tB"])
            .replace("{device_id}", world.devices["spare"].device_id).replace("{lang}", "en")
            .replace("{file}", "console.css"))
    if row.method == "GET":
        return client.get(path)
    return client.post(path, data=form)


@pytest.mark.parametrize("row", CONSOLE, ids=_id)
def test_console(world: World, row: Row) -> None:
    client, csrf = _console_client(world, row.role)
    try:
        before = world.audit_head()
        resp = _console_request(world, row, client, csrf)
    finally:
        client.close()
    assert resp.status_code == row.status, resp.text[:300]
    if row.role == "anonymous" and row.status == 303 and row.route not in ("/console/", "/console/lang/{lang}"):
        assert resp.headers["location"].endswith("/console/login")
    if row.code.startswith("error."):
        assert resp.headers["content-type"].startswith("text/html")
    body = resp.content
    if row.role in ("department", "anonymous"):
        markers = ["B网格秘密事件", "GRID-B-PHOTO-SECRET"]
        if world.ids["rB"] not in str(resp.request.url):  # a refusal page may name the id it was asked for
            markers.append(world.ids["rB"])
        for marker in markers:
            assert marker.encode() not in body, f"{marker!r} leaked to {row.role}"
    if row.role == "department" and row.route == "/console/reports":
        assert world.ids["rA"].encode() in body, "a department sees the reports dispatched to it"
    if row.route.endswith("/photos/{hash}") and row.status == 200:
        assert body == (PHOTO_A if row.objects == "own" else PHOTO_B)
    entries = world.audit_since(before)
    subject = f"console:{STAFF.get(row.role, '')}" if row.role in STAFF else "console"
    _check_audit(world, row, entries, subject)


def test_console_sessions_are_not_device_credentials(world: World) -> None:
    """A signed device request is no console session, and a console session signs no sync request."""
    client, _ = _console_client(world, "command")
    try:
        assert client.post("/v1/pull", content=b"{}", headers={"Content-Type": "application/json"}).json()[
            "error"]["code"] == "auth_missing"
    finally:
        client.close()
    worker = world.devices["worker"]
    headers = worker.sign("GET", "/console/reports", "", b"")
    resp = world.transport.handle(Request("GET", "/console/reports", "", headers, b""))
    assert resp.status == 303 and resp.headers["location"].endswith("/console/login")
