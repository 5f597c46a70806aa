"""A visit form in progress survives the app being killed (SIGKILL) and a failed sync."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from fieldsync import KdfParams
from fieldsync.transport import ASGITransport
from server_stub.app import create_app
from server_stub.demo import build_demo
from server_stub.district import District
from terminal_app.config import AppConfig
from terminal_app.fieldday import PIN
from terminal_app.services.session import Session

CHILD = Path(__file__).with_name("draft_child.py")
ROOT = Path(__file__).resolve().parents[2]


def _child(data_dir: Path, mode: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(CHILD), str(data_dir), mode], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_killed_form_comes_back(tmp_path: Path) -> None:
    district = District(f"sqlite:///{tmp_path / 'district.db'}")
    build_demo(district, households_per_grid=20)
    transport = ASGITransport(create_app(district))
    data_dir = tmp_path / "tablet"
    session = Session(AppConfig.load(data_dir), lambda url: transport, KdfParams(n=2**14))
    code, _ = district.issue_code("w-lijing")
    session.set_up("http://127.0.0.1:9", code, PIN)  # an address nothing answers at: every sync fails
    from fieldsync.sync import SyncClient

    SyncClient(session.require_store(), transport).sync()  # the grid arrives once, then the tablet is offline
    session.lock()
    district.close()

    typing = _child(data_dir, "type")
    line = typing.stdout.readline() if typing.stdout else ""
    assert line.startswith("TYPED True"), (line, typing.stderr.read() if typing.stderr else "")
    typing.send_signal(signal.SIGKILL)  # no chance to save anything more, or to clean up
    typing.wait(30)
    assert typing.returncode == -signal.SIGKILL

    reading = _child(data_dir, "read")
    out, err = reading.communicate(timeout=120)
    assert reading.returncode == 0, err[-2000:]
    form = json.loads(out.strip().splitlines()[-1])
    assert form["notes"] == "独居老人王秀英，腿脚不便，需要每周送菜上门"
    assert form["purpose"] == "独居老人探访"
    assert form["needs"] == ["助餐"]
    raw = b"".join(p.read_bytes() for p in data_dir.glob("tablet.fsdb*") if p.is_file())
    assert "腿脚不便".encode() not in raw  # the draft is on disk only encrypted
