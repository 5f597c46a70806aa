"""Fixtures for the security tests: the server tests' fixtures (both backends, district, devices, live
servers), plus a two-grid :class:`World` with a device or a console user in every authorisation role."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
from securitykit import build_world

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from serverkit import database, share_server_fixtures  # noqa: E402

_fixtures = share_server_fixtures(globals(), "server_test_fixtures_security")
setup_district = _fixtures.setup_district


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
    with database(world_backend, folder) as url:
        d = District(url, attachments=folder / "attachments")
        transport = ASGITransport(create_app(d))
        try:
            setup_district(d)
            yield build_world(d, transport)
        finally:
            transport.close()
            d.close()
