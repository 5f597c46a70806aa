"""Fixtures for the district-server tests: both backends, a standard district, devices, live servers.

Every test that touches a District runs twice, on SQLite and on PostgreSQL (a fresh schema per
test in the database named by FIELDSYNC_TEST_PG).  PostgreSQL tests fail, never skip, when that
variable is missing.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests
from serverkit import PIN, Device, database

from fieldsync import KdfParams, Registry, Store
from fieldsync.sync import SyncClient, enroll
from fieldsync.transport import ASGITransport, RequestsTransport, Transport
from server_stub.app import create_app
from server_stub.district import District
from server_stub.replica import Actor

REPO = Path(__file__).resolve().parents[2]
SERVER_START_TIMEOUT_S = 20.0


@pytest.fixture(params=[
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(backend: str, tmp_path: Path) -> Iterator[str]:
    with database(backend, tmp_path) as url:
        yield url


def setup_district(district: District) -> None:
    """The standard district: w1, w2 in grid g1; w3 in g2; a command centre; a department."""
    district.add_worker("w1", "李璟")
    district.add_worker("w2", "小张")
    district.add_worker("w3", "王五")
    district.add_worker("cc", "指挥中心", role="command")
    district.add_worker("dept-cg", "城管科", role="department", department="城管")
    district.assign("w1", "g1")
    district.assign("w2", "g1")
    district.assign("w3", "g2")
    district.write_many(Actor("admin", "command"), "grids",
                        [{"id": "g1", "name": "花园山1网格"}, {"id": "g2", "name": "彭刘杨2网格"}])


@pytest.fixture
def district(db_url: str) -> Iterator[District]:
    d = District(db_url)
    try:
        setup_district(d)
        yield d
    finally:
        d.close()


@pytest.fixture
def inproc(district: District) -> Iterator[ASGITransport]:
    transport = ASGITransport(create_app(district))
    yield transport
    transport.close()


MakeDevice = Callable[..., Device]


@pytest.fixture
def make_device(district: District, inproc: ASGITransport, tmp_path: Path) -> MakeDevice:
    """``make_device(worker, transport=None, *, wall=None, registry=None, **client_options)``.

    A new store (cheap KDF) enrolled for ``worker`` with a fresh code, and a SyncClient that
    never sleeps between retries.  ``transport`` defaults to the in-process app.
    """
    counter = itertools.count(1)

    def make(worker: str, transport: Transport | None = None, *, wall: Callable[[], int] | None = None,
             registry: Registry | None = None, **client_options: Any) -> Device:
        transport = transport if transport is not None else inproc
        path = tmp_path / f"{worker}-{next(counter)}.fsdb"
        store = Store.create(path, PIN, kdf=KdfParams(n=2**10), wall=wall, registry=registry)
        code, _ = district.issue_code(worker)
        base = getattr(transport, "base_url", None) or getattr(getattr(transport, "inner", None), "base_url", None)
        identity = enroll(store, base or "http://in-process", code, transport=transport)
        client_options.setdefault("sleep", lambda s: None)
        client = SyncClient(store, transport, **client_options)
        return Device(worker, store, client, path, transport, identity)

    return make


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


StartServer = Callable[[], str]


@pytest.fixture
def server_factory(db_url: str, district: District, tmp_path: Path) -> Iterator[StartServer]:
    """Start real uvicorn processes on the test database; each call returns a base URL."""
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> str:
        port = _free_port()
        log = tmp_path / f"uvicorn-{port}.log"
        env = {**os.environ, "FIELDSYNC_DB": db_url}
        with open(log, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "server_stub.asgi:app", "--host", "127.0.0.1", "--port", str(port)],
                env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"uvicorn exited with {proc.returncode} before answering:\n{log.read_text()}", pytrace=False)
            try:
                if requests.get(f"{url}/v1/hello", timeout=1).status_code == 200:
                    return url
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"uvicorn did not answer /v1/hello within {SERVER_START_TIMEOUT_S:.0f} s:\n"
                            f"{log.read_text()}", pytrace=False)
            time.sleep(0.05)

    yield start
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def live_server(server_factory: StartServer) -> str:
    """Base URL of a real uvicorn server (a subprocess) serving the test's district."""
    return server_factory()


@pytest.fixture
def live(live_server: str) -> Iterator[RequestsTransport]:
    transport = RequestsTransport(live_server)
    yield transport
    transport.close()


@pytest.fixture(params=["inproc", "live"])
def via(request: pytest.FixtureRequest) -> Transport:
    """The in-process app, or HTTP to a live uvicorn server (for tests that must cross a socket)."""
    name = request.param
    return request.getfixturevalue("inproc" if name == "inproc" else "live")  # type: ignore[no-any-return]
