"""Fixtures for the console tests: the server tests' fixtures (both backends, district, devices, live
servers) plus staff with console passwords and a signed-in HTTP session helper."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
from consolekit import ConsoleSession

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from serverkit import share_server_fixtures  # noqa: E402

share_server_fixtures(globals(), "server_test_fixtures")

PASSWORDS = {"cc": "zhihui-2019", "dept-cg": "chengguan-2019", "dept-ga": "gongan-2019"}


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
