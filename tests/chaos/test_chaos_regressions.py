"""Regression tests for what the chaos campaign found, each named after the seed that found it.

Each reproduces its bug deterministically (clocks injected, no randomness) and fails until the
bug is fixed; docs/reliability.md gives the root cause and the suggested fix of each.

* seed 3 (sqlite, inproc): a pushed write that loses the merge on the server is never replaced on
  the device, which shows it for ever (its checksum still matches).
* seed 6 (sqlite, inproc), seed 226: the server clamps a fast tablet's stamps onto one instant,
  so a tablet's later write can lose to its own earlier one, and two losses can share one
  conflict id (the second is never logged).
* seed 5 (postgresql, inproc): the server keeps a database connection for every thread that
  ever served a request, and never closes it: connections pile up until PostgreSQL refuses more.
* seed 1 (sqlite, TCP proxy): an answer cut inside its header block reaches the sync client as a
  complete, empty 200 answer: a ProtocolError instead of a retried network failure.
* seed 7034 (sqlite, inproc): records in a grid the worker lost before the tablet's first complete
  pull stay on the tablet for ever (personal data of a grid the worker no longer serves).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
from chaos_campaign import setup_district
from chaos_faults import LoopTransport
from chaos_servers import PG_ENV, RawServer, ThreadServer, database
from serverkit import PIN, assert_matches_server, household, rows

from fieldsync import KdfParams, Store
from fieldsync.clock import HybridClock
from fieldsync.errors import NetworkError
from fieldsync.identity import Identity, new_key, save_identity
from fieldsync.sync import SyncClient, enroll
from fieldsync.transport import Request, RequestsTransport, Response
from server_stub.app import create_app
from server_stub.district import District

DAY_MS = 24 * 3600 * 1000


def _real_ms() -> int:
    return time.time_ns() // 1_000_000


def _tablet(district: District, inproc: LoopTransport, tmp_path: Path, worker: str,
            wall: Callable[[], int] | None = None) -> tuple[Store, SyncClient]:
    store = Store.create(tmp_path / f"{worker}.fsdb", PIN, kdf=KdfParams(n=2**10), wall=wall)
    enroll(store, "http://in-process", district.issue_code(worker)[0], transport=inproc)
    return store, SyncClient(store, inproc, retries=0)


def test_seed_3_a_write_that_loses_the_merge_is_replaced_on_the_device(
        district: District, inproc: LoopTransport, tmp_path: Path) -> None:
    """A tablet whose clock is a day slow (say its battery died and the clock reset) edits a
    household it has synced.  Its device observes the server's newer stamp clamped to its own
    wall + 5 min, so its edit carries an older stamp and loses the merge on the server (the
    conflict is logged).  The push is acknowledged, the record does not change on the server,
    so no pull ever brings it back: the tablet shows its own value for ever, and its checksum
    (over the server's digests) still matches, so no repair notices.

    Root cause: server_stub/replica.py apply_writes stores the record (new server_seq) only
    ``if changed``; a write that lost every field changes nothing and is never re-sent.
    """
    honest, honest_client = _tablet(district, inproc, tmp_path, "w1")
    slow, slow_client = _tablet(district, inproc, tmp_path, "w2", wall=lambda: _real_ms() - DAY_MS)
    hid = honest.put("households", household("g1", 1))
    honest_client.sync()
    slow_client.sync()

    slow.put("households", {"id": hid, "phone": "13911112222"})
    for _ in range(3):
        slow_client.sync()
    assert slow.outbox_size() == 0
    print("server:", district.get("households", hid)["phone"], "tablet:", slow.get("households", hid)["phone"])
    assert_matches_server(slow, district)


@pytest.fixture
def frozen_server_clock(district: District) -> Iterator[None]:
    """The server's clock stands still (as it does, in effect, within one millisecond)."""
    now = _real_ms()
    real = district.clock
    district.clock = HybridClock(real.node, wall=lambda: now)
    yield
    district.clock = real


def test_seed_6_a_fast_tablets_later_write_never_loses_to_its_earlier_one(
        district: District, inproc: LoopTransport, tmp_path: Path, frozen_server_clock: None) -> None:
    """A tablet a day fast saves a household and edits its head's name twice before syncing.
    Its stamps are (T+1d, 0), (T+1d+10ms, 0), (T+1d+20ms, 0); the server clamps each to
    (server now + 5 min, counter, node), so all three become the SAME stamp when the push is
    processed within one millisecond.  The merge then orders them by value: the tablet's last
    edit is lost to its first, and the two losses get the same conflict id, so only one of
    them is logged.

    Root cause: server_stub/replica.py _clamped keeps the writer's counter under the clamped
    wall, which does not preserve the order of one node's stamps and can make them equal.
    """
    ticks = itertools.count()
    fast, client = _tablet(district, inproc, tmp_path, "w1", wall=lambda: _real_ms() + DAY_MS + 10 * next(ticks))
    hid = fast.put("households", {**household("g1", 1), "head_name": "张c-first"})
    fast.put("households", {"id": hid, "head_name": "张a-second"})
    fast.put("households", {"id": hid, "head_name": "张b-third"})
    client.sync()
    client.sync()
    server = district.get("households", hid)
    assert server is not None
    logged = {body for (body,) in rows(district, "SELECT body FROM records WHERE collection = 'conflicts'")}
    print("server keeps", server["head_name"], "; conflicts:", len(logged))
    assert server["head_name"] == "张b-third", "the tablet's last edit lost to an earlier one of its own"
    assert fast.get("households", hid)["head_name"] == "张b-third"
    assert_matches_server(fast, district)


def _count_connections(backend: str, url: str, db_path: Path | None) -> int:
    if backend == "sqlite":
        assert db_path is not None
        n = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{fd}") == str(db_path):
                    n += 1
            except OSError:
                pass
        return n
    import psycopg

    with psycopg.connect(os.environ[PG_ENV], autocommit=True) as conn:
        (n,) = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'chaos-leak'").fetchone()
    return int(n)


def _saves_and_syncs(store: Store, client: SyncClient, burst: int) -> None:
    for n in range(3):
        store.put("households", household("g1", 10 * burst + n))
        client.sync()


def test_seed_5_the_server_does_not_leak_a_database_connection_per_worker_thread(
        backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under uvicorn, Starlette runs the district's code in anyio worker threads; an idle worker
    exits after 10 s and the next burst of requests starts new ones.  Each new thread opens its
    own database connection (server_stub/db.py ``Database._connection``) and ``Database._all``
    keeps every connection open until ``close()``: a district server whose tablets sync in bursts
    accumulates connections until PostgreSQL answers "too many clients" and every request fails
    (on SQLite it piles up file descriptors).  The idle time is shortened here to 0.2 s.
    """
    from anyio._backends import _asyncio as anyio_asyncio

    monkeypatch.setattr(anyio_asyncio.WorkerThread, "MAX_IDLE_TIME", 0.2)
    with database(backend, tmp_path) as base_url:
        url, db_path = base_url, None
        if backend == "postgresql":
            url += ("&" if "?" in base_url else "?") + "application_name=chaos-leak"
        else:
            db_path = Path(base_url[len("sqlite:///"):])
        district = District(url)
        try:
            setup_district(district)
            with ThreadServer(create_app(district)) as server:
                tablets = []
                for i in range(6):
                    store = Store.create(tmp_path / f"t{i}.fsdb", PIN, kdf=KdfParams(n=2**10))
                    transport = RequestsTransport(server.url)
                    enroll(store, server.url, district.issue_code("w1")[0], transport=transport)
                    tablets.append((store, SyncClient(store, transport, retries=0)))
                counts = []
                for burst in range(5):
                    threads = [threading.Thread(target=_saves_and_syncs, args=(store, client, burst))
                               for store, client in tablets]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()
                    counts.append(_count_connections(backend, url, db_path))
                    time.sleep(0.6)  # the workers go idle and expire
                for store, _ in tablets:
                    store.close()
        finally:
            district.close()
    print(f"open {backend} connections after each burst: {counts}")
    assert counts[0] > 0, "the connections could not be counted"
    assert counts[-1] <= counts[0] + 2, f"connections pile up burst after burst: {counts}"


def test_seed_1_proxy_an_answer_cut_inside_its_head_is_a_network_error(tmp_path: Path) -> None:
    """The TCP proxy cut an answer after 'Content-Le': http.client takes the end of the stream as
    the end of the header block, so RequestsTransport returned status 200 with an empty body.
    The sync client then raised ProtocolError ("not valid JSON") and gave up, where a cut answer
    must be a NetworkError and be retried (docs/protocol.md §1 and §13)."""
    server = RawServer(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Le")
    try:
        store = Store.create(tmp_path / "t.fsdb", PIN, kdf=KdfParams(n=2**10))
        save_identity(store, Identity("d0000000000000001", "w1", server.url, new_key()))
        client = SyncClient(store, RequestsTransport(server.url), retries=1, sleep=lambda s: None)
        with pytest.raises(NetworkError):
            client.sync()
        assert server.requests == 2, "a cut answer is retried like any network failure"
    finally:
        server.close()


class _PullFails:
    """Passes everything through, except that pulls fail while ``broken`` is set."""

    def __init__(self, inner: LoopTransport) -> None:
        self.inner = inner
        self.broken = True

    def handle(self, request: Request) -> Response:
        if self.broken and request.path == "/v1/pull":
            raise NetworkError("the connection dropped during the first (snapshot) pull")
        return self.inner.handle(request)


def test_seed_7034_records_of_a_grid_that_left_before_the_first_pull_are_removed(
        district: District, inproc: LoopTransport, tmp_path: Path) -> None:
    """A new tablet of w4 (grids g2 and g3) records a household in g3 while offline.  Its first
    sync pushes the household (accepted: g3 is w4's) but the snapshot pull is cut off.  Then the
    command centre takes g3 away from w4.  The next pull says the scope is [g2]; the device only
    purges grids that were in its last known scope, which was still empty, so the g3 household
    (acknowledged, nothing pending, never marked stale) stays on the tablet for ever.

    Root cause: fieldsync/replica.py ``apply_pull`` computes the grids that left as
    ``set(self.grids()) - set(page.grids)``; records held in a grid that was never in the stored
    scope are never purged.
    """
    network = _PullFails(inproc)
    store = Store.create(tmp_path / "w4.fsdb", PIN, kdf=KdfParams(n=2**10))
    enroll(store, "http://in-process", district.issue_code("w4")[0], transport=inproc)
    client = SyncClient(store, network, retries=0)
    hid = store.put("households", household("g3", 1))
    with pytest.raises(NetworkError):
        client.sync()
    assert store.outbox_size() == 0 and district.get("households", hid) is not None
    district.unassign("w4", "g3")
    network.broken = False
    client.sync()
    client.sync()
    assert store.grids() == ["g2"]
    held = [r["id"] for r in store.list("households")]
    print("tablet holds", held, "in grids", store.grids())
    assert hid not in held, "a household of a grid w4 no longer has stayed on the tablet"
    assert_matches_server(store, district)
