"""Fixtures for the console tests: the server tests' fixtures (both backends, district, devices, live
servers) plus staff with console passwords and a signed-in HTTP session helper."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
from consolekit import ConsoleSession

SERVER_TESTS = Path(__file__).resolve().parents[1] / "server"
sys.path.insert(0, str(SERVER_TESTS))
_spec = importlib.util.spec_from_file_location("server_test_fixtures", SERVER_TESTS / "conftest.py")
assert _spec is not None and _spec.loader is not None
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)

backend = _fixtures.backend
db_url = _fixtures.db_url
district = _fixtures.district
inproc = _fixtures.inproc
make_device = _fixtures.make_device
server_factory = _fixtures.server_factory
live_server = _fixtures.live_server
live = _fixtures.live

PASSWORDS = {"cc": "zhihui-2019", "dept-cg": "chengguan-2019", "dept-ga": "gongan-2019"}


@pytest.fixture(autouse=True)
def attachments_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Server processes and the test's District keep attachments in the same temporary folder."""
    folder = tmp_path / "server-attachments"
    monkeypatch.setenv("FIELDSYNC_ATTACHMENTS", str(folder))
    return folder


@pytest.fixture
def staff(district: Any) -> dict[str, str]:
    """Console passwords for the command centre (cc), 城管 (dept-cg) and 公安 (dept-ga)."""
    from server_stub.accounts import set_password

    district.add_worker("dept-ga", "公安联络员", role="department", department="公安")
    for user, password in PASSWORDS.items():
        set_password(district.db, user, password)
    return dict(PASSWORDS)


@pytest.fixture
def console_client(district: Any, staff: dict[str, str]) -> Iterator[Any]:
    """``console_client(user)``: an in-process TestClient signed in as ``user`` (or anonymous with None)."""
    from starlette.testclient import TestClient

    from server_stub.app import create_app

    app = create_app(district)
    clients: list[Any] = []

    def make(user: str | None) -> ConsoleSession:
        client = TestClient(app, base_url="http://testserver")
        clients.append(client)
        session = ConsoleSession(client)
        if user is not None:
            resp = session.sign_in(user, staff[user])
            assert resp.status_code == 200 and "/console/login" not in str(resp.url), resp.text[:500]
        return session

    yield make
    for c in clients:
        c.close()
