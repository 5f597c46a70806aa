"""The audit log after a realistic session: complete, free of personal data, and tamper-evident.

The session is an IT officer's and a district's day on a real SQLite file: ``init-demo``, admin
commands (enroll-code, assign, user set-password, jobs run, revoke) as separate processes, tablets
syncing in process, forged and out-of-scope requests, and command-centre and department staff in
the console.  ``fieldsync-server audit verify`` then checks the chain, and each kind of tampering
(an edited row, a deleted row, two rows swapped, the newest rows removed, a forged row appended)
must make it fail naming the first broken entry.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner

from fieldsync import KdfParams, Store
from fieldsync.identity import Identity, new_key
from fieldsync.protocol import dumps
from fieldsync.schema import SCHEMA_VERSION
from fieldsync.sync import SyncClient, enroll
from fieldsync.transport import ASGITransport, Request
from server_stub import audit
from server_stub.app import create_app
from server_stub.cli import main as server_cli
from server_stub.demo_data import GRIDS
from server_stub.district import District

PIN = "2580"
PERSONAL_FIELDS = ("head_name", "name", "phone", "id_number", "address", "description", "notes", "resolution")
WRONG_PASSWORD = "Mima-123456-typed-into-user"
EXPECTED_ACTIONS = {
    "worker.upsert", "assignment.add", "assignment.remove", "enroll_code.issue", "device.enroll", "device.revoke",
    "console.password_set", "job.run", "auth.signature_invalid", "auth.device_unknown", "authz.refused_read",
    "authz.refused_write", "console.sign_in", "console.sign_in_failed", "report.dispatch", "authz.refused_console",
    "enroll.refused",
}


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real ``fieldsync-server`` command, as a separate process."""
    return subprocess.run([sys.executable, "-m", "server_stub.cli", *args], capture_output=True, text=True,
                          timeout=120, input=stdin)


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _staff_passwords(init_output: str) -> dict[str, str]:
    return dict(re.findall(r"^\s+(\S+)\s+(demo-\S+)", init_output, re.M))


def _console(district: District, user: str, password: str) -> Any:
    from starlette.testclient import TestClient

    client = TestClient(create_app(district), base_url="http://testserver", follow_redirects=False)
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/console/login").text)
    assert token
    resp = client.post("/console/login", data={"user": user, "password": password, "csrf": token.group(1)})
    if resp.status_code == 303:
        page = client.get("/console/reports").text
        client.csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[attr-defined, union-attr]
    client.last_status = resp.status_code  # type: ignore[attr-defined]
    return client


def _session(url: str, tmp: Path) -> None:
    """A district's day; every step goes through the real CLI, HTTP app or console."""
    passwords = _staff_passwords(_ok(cli("init-demo", "--db", url, "--households", "6", "--seed", "7")))
    mine, theirs = GRIDS[1]["id"], GRIDS[0]["id"]  # w-lijing's grid, w-zhang's grid
    code = _ok(cli("enroll-code", "--db", url, "--worker", "w-lijing")).strip()
    _ok(cli("assign", "--db", url, "--worker", "w-chenf", "--grid", mine))
    _ok(cli("assign", "--db", url, "--worker", "w-chenf", "--grid", mine, "--remove"))
    _ok(cli("user", "set-password", "--db", url, "--user", "dept-1", "--password-stdin", stdin="chengguan-2026\n"))
    _ok(cli("jobs", "run", "dispatch", "--db", url))
    _ok(cli("jobs", "run", "coverage", "--db", url))

    district = District(url)
    transport = ASGITransport(create_app(district))
    store = Store.create(tmp / "tablet.fsdb", PIN, kdf=KdfParams(n=2**10))
    try:
        ident = enroll(store, "http://in-process", code, transport=transport)
        client = SyncClient(store, transport, sleep=lambda s: None)
        client.sync()
        store.put("households", {"grid_id": mine, "address": "彭刘杨路88号", "head_name": "钱多多", "phone": "13911112222"})
        client.sync()
        their_household = next(r for r in _records(district, "households") if r["_grid"] == theirs)
        forged = Identity(ident.device_id, ident.worker_id, ident.server_url, new_key())
        for who, path, payload in [
            (ident, "/v1/buckets", {"grid": theirs}),
            (ident, "/v1/push", {"schema_version": SCHEMA_VERSION, "changes": [_change(99, their_household["id"], theirs)]}),
            (forged, "/v1/pull", {"schema_version": SCHEMA_VERSION, "cursors": {}}),
            (Identity("d" + "0" * 16, "w-lijing", "", new_key()), "/v1/pull", {}),
        ]:
            body = dumps(payload)
            transport.handle(Request("POST", path, "", {"Content-Type": "application/json",
                                                        **who.sign("POST", path, "", body)}, body))
        guess = dumps({"code": "AAAA-BBBB-CCCC", "public_key": "A" * 43 + "=", "node_id": "nguess",
                       "schema_version": SCHEMA_VERSION})
        transport.handle(Request("POST", "/v1/enroll", "", {"Content-Type": "application/json"}, guess))

        command = _console(district, "cc-wangcc", passwords["cc-wangcc"])
        report = next(r for r in _records(district, "reports") if r.get("status") in ("submitted", "dispatched")
                      and r.get("department") != "公安")
        assert command.post(f"/console/reports/{report['id']}/dispatch", data={
            "csrf": command.csrf, "department": "公安", "due_at": "2030-01-01T10:00"}).status_code == 303
        command.close()
        department = _console(district, "dept-1", "chengguan-2026")  # 城管: the report went to 公安
        assert department.get(f"/console/reports/{report['id']}").status_code == 404
        department.close()
        for user in ("李璟", WRONG_PASSWORD):  # a name and a password typed into the user box
            assert _console(district, user, "whatever-else").last_status == 401
    finally:
        store.close()
        transport.close()
        district.close()
    _ok(cli("revoke", "--db", url, "--device", ident.device_id, "--wipe"))


def _change(seq: int, rid: str, grid: str) -> dict[str, Any]:
    from fieldsync.clock import Stamp
    from server_stub.district import _now_ms

    stamp = Stamp(_now_ms(), 0, "naudit").encode()
    return {"seq": seq, "collection": "households", "id": rid, "grid": grid, "fields": {"phone": ["13000000000", stamp, None]}}


def _records(district: District, collection: str) -> list[dict[str, Any]]:
    from server_stub.console.queries import _records as records

    return records(district, collection)


@pytest.fixture(scope="module")
def session_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite district file after the session (closed; copy it before changing it)."""
    folder = tmp_path_factory.mktemp("audit")
    path = folder / "district.db"
    _session(f"sqlite:///{path}", folder)
    return path


@pytest.fixture
def copy_db(session_db: Path, tmp_path: Path) -> Iterator[Path]:
    """A private copy of the session's database (SQLite's backup API: WAL content included)."""
    target = tmp_path / "copy.db"
    with sqlite3.connect(session_db) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    yield target


def _audit_rows(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT n, actor, action, object, detail FROM audit_log ORDER BY n").fetchall()


def test_the_session_is_audited_and_the_chain_verifies(session_db: Path) -> None:
    entries = _audit_rows(session_db)
    actions = {a for _, _, a, _, _ in entries}
    assert EXPECTED_ACTIONS <= actions, f"not audited: {sorted(EXPECTED_ACTIONS - actions)}"
    proc = cli("audit", "verify", "--db", f"sqlite:///{session_db}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{len(entries)} entries checked, OK (head {len(entries)}:")
    for n, actor, action, obj, detail in entries:
        assert actor and action and obj, (n, actor, action, obj)
        assert isinstance(json.loads(detail), dict)


def test_no_personal_data_in_the_audit_log(session_db: Path) -> None:
    with sqlite3.connect(session_db) as conn:
        personal: set[str] = {r[0] for r in conn.execute("SELECT name FROM workers WHERE role != 'department'")}
        for (body,) in conn.execute("SELECT body FROM records"):
            for name, write in json.loads(body).items():
                value = write[0] if isinstance(write, list) and write else None
                if name in PERSONAL_FIELDS and isinstance(value, str) and len(value) >= 2:
                    personal.add(value)
        text = "\n".join("\x1f".join(str(v) for v in row) for row in conn.execute(
            "SELECT actor, action, object, detail FROM audit_log"))
    assert {"钱多多", "13911112222", "李璟"} <= personal, "the scan must include the session's own data"
    assert len(personal) > 100
    personal.add(WRONG_PASSWORD)
    found = [v for v in personal if re.search(r"(?<![0-9A-Za-z])" + re.escape(v) + r"(?![0-9A-Za-z])", text)]
    assert not found, f"personal data in the audit log: {found[:5]}"


def _verify(path: Path) -> Any:
    return CliRunner().invoke(server_cli, ["audit", "verify", "--db", f"sqlite:///{path}"])


def _tamper(path: Path, *sql: str) -> None:
    with sqlite3.connect(path) as conn:
        for statement in sql:
            conn.execute(statement)


def test_an_edited_entry_is_found(copy_db: Path) -> None:
    n = len(_audit_rows(copy_db)) // 2
    _tamper(copy_db, f"UPDATE audit_log SET detail = '{{\"wipe\":false}}' WHERE n = {n}")
    result = _verify(copy_db)
    assert result.exit_code == 1 and f"BROKEN at entry {n}:" in result.output and "altered" in result.output


def test_a_deleted_middle_entry_is_found(copy_db: Path) -> None:
    n = len(_audit_rows(copy_db)) // 3
    _tamper(copy_db, f"DELETE FROM audit_log WHERE n = {n}")
    result = _verify(copy_db)
    assert result.exit_code == 1 and f"BROKEN at entry {n}: entry {n} is missing" in result.output


def test_two_swapped_entries_are_found(copy_db: Path) -> None:
    n = len(_audit_rows(copy_db)) // 2
    _tamper(copy_db, f"UPDATE audit_log SET n = -1 WHERE n = {n}", f"UPDATE audit_log SET n = {n} WHERE n = {n + 1}",
            f"UPDATE audit_log SET n = {n + 1} WHERE n = -1")
    result = _verify(copy_db)
    assert result.exit_code == 1 and f"BROKEN at entry {n}:" in result.output


def test_removing_the_newest_entries_is_found(copy_db: Path) -> None:
    last = len(_audit_rows(copy_db))
    _tamper(copy_db, f"DELETE FROM audit_log WHERE n >= {last - 1}")
    proc = cli("audit", "verify", "--db", f"sqlite:///{copy_db}")  # the real command, as an operator runs it
    assert proc.returncode == 1 and proc.stdout == ""
    assert f"BROKEN at entry {last - 1}: entries {last - 1} to {last} are missing" in proc.stderr


def test_a_forged_entry_with_a_valid_hash_is_found(copy_db: Path) -> None:
    """Someone with write access appends an entry chained correctly; the head kept by the server disagrees."""
    from server_stub.audit import _entry_hash

    rows = _audit_rows(copy_db)
    with sqlite3.connect(copy_db) as conn:
        prev = conn.execute("SELECT hash FROM audit_log ORDER BY n DESC LIMIT 1").fetchone()[0]
        n = len(rows) + 1
        digest = _entry_hash(n, 1, "admin", "device.revoke", "device:dforged", "{}", prev)
        conn.execute("INSERT INTO audit_log VALUES (?, 1, 'admin', 'device.revoke', 'device:dforged', '{}', ?, ?)",
                     (n, prev, digest))
    result = _verify(copy_db)
    assert result.exit_code == 1 and f"BROKEN at entry {n}:" in result.output


def test_a_rewritten_chain_is_found_against_a_recorded_head(copy_db: Path) -> None:
    """Editing an entry and re-hashing everything after it passes the chain check, not a recorded head."""
    from server_stub.audit import _GENESIS, _entry_hash

    recorded = _verify(copy_db).output.split("(head ")[1].rstrip(")\n")
    n = len(_audit_rows(copy_db)) // 2
    with sqlite3.connect(copy_db) as conn:
        conn.execute(f"UPDATE audit_log SET actor = 'admin' WHERE n = {n}")
        prev = _GENESIS
        for row in conn.execute("SELECT n, at_ms, actor, action, object, detail FROM audit_log ORDER BY n").fetchall():
            digest = _entry_hash(*row, prev)
            conn.execute("UPDATE audit_log SET prev_hash = ?, hash = ? WHERE n = ?", (prev, digest, row[0]))
            prev = digest
        conn.execute("UPDATE server_meta SET value = ? WHERE key = 'audit_head'", (f"{row[0]}:{prev}",))
    assert _verify(copy_db).exit_code == 0, "a consistent rewrite passes the chain check on its own"
    result = CliRunner().invoke(server_cli, ["audit", "verify", "--db", f"sqlite:///{copy_db}", "--expect", recorded])
    assert result.exit_code == 1 and "was rewritten" in result.output, result.output
    assert CliRunner().invoke(server_cli, ["audit", "verify", "--db", f"sqlite:///{copy_db}",
                                           "--expect", "12:xyz"]).exit_code != 0


def test_audit_show_prints_the_newest_entries(session_db: Path) -> None:
    total = len(_audit_rows(session_db))
    result = CliRunner().invoke(server_cli, ["audit", "show", "--db", f"sqlite:///{session_db}", "--limit", "3"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [int(line.split()[0]) for line in lines] == [total - 2, total - 1, total]
    assert "device.revoke" in lines[-1]
    as_json = CliRunner().invoke(server_cli, ["audit", "show", "--db", f"sqlite:///{session_db}", "--json",
                                              "--limit", "1"])
    (entry,) = [json.loads(line) for line in as_json.output.splitlines()]
    assert entry["n"] == total and entry["action"] == "device.revoke" and entry["detail"] == {"wipe": True}


def test_tampering_is_found_on_both_backends(district: District, db_url: str, make_device) -> None:
    make_device("w1")
    verdict = audit.verify(district.db)
    assert verdict.ok and verdict.checked >= 8
    result = CliRunner().invoke(server_cli, ["audit", "verify", "--db", db_url])
    assert result.exit_code == 0 and f"{verdict.checked} entries checked, OK" in result.output
    with district.db.transaction() as tx:
        tx.execute("UPDATE audit_log SET actor = 'job:forged' WHERE n = 3")
    result = CliRunner().invoke(server_cli, ["audit", "verify", "--db", db_url])
    assert result.exit_code == 1 and "BROKEN at entry 3:" in result.output
    with district.db.transaction() as tx:
        tx.execute("DELETE FROM audit_log WHERE n = 2")
    assert audit.verify(district.db).broken_at == 2
