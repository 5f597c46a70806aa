"""The fieldsync-server admin commands, run as a separate process like an IT officer would."""

from __future__ import annotations

import json
import subprocess
import sys

from serverkit import rows

from fieldsync.identity import load_identity


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server_stub.cli", *args], capture_output=True, text=True,
                          timeout=60)


def assert_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode != 0, proc
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("Error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[-1], lines[-1]


def test_enroll_code_for_an_unknown_worker_fails_clearly(district, db_url):
    assert_error(cli("enroll-code", "--db", db_url, "--worker", "nobody"), "nobody")
    proc = cli("enroll-code", "--db", db_url, "--worker", "w1")
    assert proc.returncode == 0, proc.stderr
    code = proc.stdout.strip()
    assert len(code) == 14 and code.count("-") == 2
    assert "valid once" in proc.stderr
    assert rows(district, "SELECT count(*) FROM enroll_codes WHERE worker_id = 'w1'")[0][0] == 1


def test_assign_devices_and_revoke(district, db_url, make_device):
    proc = cli("assign", "--db", db_url, "--worker", "w1", "--grid", "g9")
    assert proc.returncode == 0 and "g9 assigned to w1" in proc.stdout
    assert ("w1", "g9") in rows(district, "SELECT worker_id, grid_id FROM assignments")
    proc = cli("assign", "--db", db_url, "--worker", "w1", "--grid", "g9", "--remove")
    assert proc.returncode == 0 and "g9 removed from w1" in proc.stdout
    assert ("w1", "g9") not in rows(district, "SELECT worker_id, grid_id FROM assignments")
    assert_error(cli("assign", "--db", db_url, "--worker", "nobody", "--grid", "g1"), "nobody")

    dev = make_device("w1")
    device_id = load_identity(dev.store).device_id
    proc = cli("devices", "--db", db_url, "--json")
    assert proc.returncode == 0, proc.stderr
    (listed,) = json.loads(proc.stdout)
    assert listed["id"] == device_id and listed["worker_id"] == "w1" and listed["revoked_ms"] is None
    table = cli("devices", "--db", db_url)
    assert device_id in table.stdout and "active" in table.stdout and "1 devices" in table.stderr

    proc = cli("revoke", "--db", db_url, "--device", device_id, "--wipe")
    assert proc.returncode == 0 and f"{device_id} revoked (wipe requested)" in proc.stdout
    (state,) = [d for d in district.devices() if d["id"] == device_id]
    assert state["revoked_ms"] is not None and state["wipe"] == 1
    assert "revoked+wipe" in cli("devices", "--db", db_url).stdout

    assert_error(cli("revoke", "--db", db_url, "--device", "dnope"), "dnope")
    assert_error(cli("revoke", "--db", db_url, "--device", device_id))  # already revoked


def test_a_bad_database_url_is_an_error_line(tmp_path):
    assert_error(cli("devices", "--db", f"mysql://{tmp_path}/x"), "unsupported database URL")
