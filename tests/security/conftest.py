"""Fixtures for the security tests: the server tests' fixtures (both backends, district, devices, live
servers), plus a two-grid :class:`World` with a device or a console user in every authorisation role."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
from securitykit import build_world

SERVER_TESTS = Path(__file__).resolve().parents[1] / "server"
sys.path.insert(0, str(SERVER_TESTS))
_spec = importlib.util.spec_from_file_location("server_test_fixtures_security", SERVER_TESTS / "conftest.py")
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
setup_district = _fixtures.setup_district


@pytest.fixture(autouse=True)
def attachments_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Server processes and the test's District keep attachments in the same temporary folder."""
    folder = tmp_path / "server-attachments"
    monkeypatch.setenv("FIELDSYNC_ATTACHMENTS", str(folder))
    return folder


@pytest.fixture(scope="module", params=[
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
])
def world_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def world(world_backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One district per module and backend with grid A (g1) and grid B (g2) data and a device per role."""
    from fieldsync.transport import ASGITransport
    from server_stub.app import create_app
    from server_stub.district import District

    folder = tmp_path_factory.mktemp("world")
    urls = iter([f"sqlite:///{folder / 'district.db'}"]) if world_backend == "sqlite" else _fixtures._pg_schema_url()
    url = next(urls)
    d = District(url, attachments=folder / "attachments")
    transport = ASGITransport(create_app(d))
    try:
        setup_district(d)
        yield build_world(d, transport)
    finally:
        transport.close()
        d.close()
        for _ in urls:  # drops the PostgreSQL schema
            pass
