"""The ``fieldsync`` command, run for real in a subprocess (with the production KDF)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

PIN = "2580"
NEW_PIN = "731946"
README = Path(__file__).resolve().parent.parent / "README.md"

HOUSEHOLD = {"grid_id": "wc-lds-hys-01", "address": "武昌区粮道街花园山社区3栋2单元301",
             "head_name": "张桂兰", "phone": "138 0713 2468", "members": 3, "tags": ["低保", "独居老人"]}


def fieldsync(*args: str, pin: str | None = PIN, new_pin: str | None = None,
              stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIELDSYNC_")}
    env["PYTHONIOENCODING"] = "utf-8"
    if pin is not None:
        env["FIELDSYNC_PIN"] = pin
    if new_pin is not None:
        env["FIELDSYNC_NEW_PIN"] = new_pin
    return subprocess.run([sys.executable, "-m", "fieldsync.cli", *args], env=env, input=stdin if stdin else "",
                          text=True, encoding="utf-8", capture_output=True, timeout=120)


def assert_clean_error(proc: subprocess.CompletedProcess[str], *expect: str) -> None:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error:"), proc.stderr
    for text in expect:
        assert text in lines[0], (text, lines[0])


@pytest.fixture(scope="module")
def cli_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "tablet.fsdb"
    proc = fieldsync("init", "--store", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "Created" in proc.stdout
    return path


def test_put_get_search_status(cli_store: Path) -> None:
    store = str(cli_store)
    put = fieldsync("put", "--store", store, "households", json.dumps(HOUSEHOLD, ensure_ascii=False))
    assert put.returncode == 0, put.stderr
    hid = put.stdout.strip()
    assert re.fullmatch(r"[A-Za-z0-9_.:\-]{1,64}", hid)

    update = fieldsync("put", "--store", store, "households", "-",
                       stdin=json.dumps({"id": hid, "members": 2}))
    assert update.returncode == 0, update.stderr
    assert update.stdout.strip() == hid

    got = fieldsync("get", "--store", store, "households", hid)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout) == {**HOUSEHOLD, "id": hid, "members": 2}
    assert "张桂兰" in got.stdout  # readable Chinese, not \u escapes

    found = fieldsync("search", "--store", store, "households", "phone", "+86 138-0713-2468")
    assert found.returncode == 0, found.stderr
    assert [r["id"] for r in json.loads(found.stdout)] == [hid]
    assert "1 found" in found.stderr

    none = fieldsync("search", "--store", store, "households", "head_name", "李四")
    assert none.returncode == 0 and json.loads(none.stdout) == []

    status = fieldsync("status", "--store", store, "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["records"]["households"] == 1 and data["records"]["residents"] == 0
    assert data["pending_changes"] == 2 and data["attachments"] == 0

    text = fieldsync("status", "--store", store)
    assert text.returncode == 0, text.stderr
    assert re.search(r"households\s+1\b", text.stdout)
    assert re.search(r"Pending changes:\s+2\b", text.stdout)


def test_change_pin(tmp_path: Path) -> None:
    store = str(tmp_path / "t.fsdb")
    assert fieldsync("init", "--store", store).returncode == 0
    hid = fieldsync("put", "--store", store, "households", json.dumps(HOUSEHOLD)).stdout.strip()
    changed = fieldsync("change-pin", "--store", store, new_pin=NEW_PIN)
    assert changed.returncode == 0, changed.stderr
    assert "PIN changed" in changed.stdout
    old = fieldsync("get", "--store", store, "households", hid, pin=PIN)
    assert_clean_error(old, "wrong PIN")
    new = fieldsync("get", "--store", store, "households", hid, pin=NEW_PIN)
    assert new.returncode == 0, new.stderr
    assert json.loads(new.stdout)["head_name"] == "张桂兰"


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["put", "households", "{grid_id: g1}"], "JSON is not valid"),
        (["put", "households", '["g1"]'], "JSON object"),
        (["put", "households", "42"], "JSON object"),
        (["put", "water_meters", '{"grid_id": "wc-lds-hys-01"}'], "water_meters"),
        (["put", "households", '{"grid_id": "wc-lds-hys-01"}'], "address"),
        (["put", "residents", json.dumps({"grid_id": "wc-lds-hys-01", "household_id": "h1", "name": "张三",
                                          "id_number": "420106195203150029"})], "id_number"),
        (["get", "households", "no-such-id"], "no-such-id"),
        (["search", "households", "address", "花园山"], "address"),
    ],
    ids=["invalid-json", "json-list", "json-number", "unknown-collection", "missing-required", "bad-id-number",
         "missing-record", "unsearchable-field"],
)
def test_bad_input_is_one_clear_line(cli_store: Path, args: list[str], expect: str) -> None:
    proc = fieldsync(args[0], "--store", str(cli_store), *args[1:])
    assert_clean_error(proc, expect)


def test_wrong_pin(cli_store: Path) -> None:
    proc = fieldsync("status", "--store", str(cli_store), pin="9999")
    assert_clean_error(proc, "wrong PIN", "attempts left")
    assert fieldsync("status", "--store", str(cli_store)).returncode == 0  # resets the count


def test_missing_store(tmp_path: Path) -> None:
    proc = fieldsync("status", "--store", str(tmp_path / "nowhere.fsdb"))
    assert_clean_error(proc, "nowhere.fsdb")
    assert not (tmp_path / "nowhere.fsdb").exists()


def test_init_over_existing_store_refuses(cli_store: Path) -> None:
    before = cli_store.read_bytes()
    proc = fieldsync("init", "--store", str(cli_store))
    assert_clean_error(proc, "already exists")
    assert cli_store.read_bytes() == before


def test_short_pin_refused_at_init(tmp_path: Path) -> None:
    proc = fieldsync("init", "--store", str(tmp_path / "t.fsdb"), pin="12")
    assert_clean_error(proc, "PIN")
    assert not (tmp_path / "t.fsdb").exists()


def _help_commands() -> list[str]:
    proc = fieldsync("--help", pin=None)
    assert proc.returncode == 0, proc.stderr
    section = proc.stdout.split("Commands:", 1)[1]
    commands = [m.group(1) for m in re.finditer(r"^\s{2}([a-z][a-z0-9-]*)\s", section, re.MULTILINE)]
    assert {"init", "put", "get", "search", "status", "change-pin"} <= set(commands)
    return commands


def test_every_command_has_help() -> None:
    for command in _help_commands():
        proc = fieldsync(command, "--help", pin=None)
        assert proc.returncode == 0, (command, proc.stderr)
        assert "--store" in proc.stdout


def test_every_command_is_documented_in_readme() -> None:
    commands = _help_commands()
    assert README.exists(), "README.md is missing: the CLI commands must be documented there"
    text = README.read_text(encoding="utf-8")
    undocumented = [c for c in commands if not re.search(rf"\bfieldsync(?:\.cli)?\s+{re.escape(c)}\b", text)]
    assert not undocumented, f"commands missing from README.md (as 'fieldsync <command>'): {undocumented}"
