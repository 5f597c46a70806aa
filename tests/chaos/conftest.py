"""Fixtures for the reliability campaign (docs/reliability.md).

Every test that touches a district runs on SQLite and on PostgreSQL (a fresh schema per test in
the cluster named by FIELDSYNC_TEST_PG; the PostgreSQL half fails, never skips, without it).
Randomised tests print their seed; FIELDSYNC_CHAOS_SEED=<seed> replays one.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

HERE = Path(__file__).resolve().parent
for extra in (HERE, HERE.parent / "server"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from chaos_campaign import SEED_ENV, base_seed, setup_district  # noqa: E402
from chaos_faults import LoopTransport  # noqa: E402
from chaos_servers import PG_ENV, database  # noqa: E402

from server_stub.app import create_app  # noqa: E402
from server_stub.district import District  # noqa: E402


@pytest.fixture
def seed() -> int:
    value = base_seed()
    print(f"chaos seed {value} (replay with {SEED_ENV}={value})")
    return value


@pytest.fixture(params=[
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql" and not os.environ.get(PG_ENV):
        pytest.fail(f"{PG_ENV} is not set: run scripts/test, which starts a throwaway PostgreSQL", pytrace=False)
    return str(request.param)


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """A scratch folder on tmpfs when there is one (fsyncs are free there; crash and disk
    tests use ``tmp_path`` or their own mounts instead)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        with tempfile.TemporaryDirectory(dir=shm, prefix="fieldsync-chaos-") as d:
            yield Path(d)
    else:
        yield tmp_path


@pytest.fixture
def db_url(backend: str, tmp_path: Path) -> Iterator[str]:
    with database(backend, tmp_path) as url:
        yield url


@pytest.fixture
def district(db_url: str) -> Iterator[District]:
    """Workers w1, w2 (g1), w3 (g2), w4 (g2, g3), w5 (g3); cc (command); dept; grid g9 unassigned."""
    d = District(db_url)
    try:
        setup_district(d)
        yield d
    finally:
        d.close()


@pytest.fixture
def inproc(district: District) -> Iterator[LoopTransport]:
    transport = LoopTransport(create_app(district))
    yield transport
    transport.close()
