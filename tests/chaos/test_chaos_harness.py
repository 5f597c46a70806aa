"""The fault injectors do what they claim, and the server and client react as the protocol says.

Each fault kind is forced (rate 1) on one push of a tablet with three pending changes, through
the fault-injecting transport and through the TCP proxy in front of a real uvicorn.  The push
ledger (every answer the server produced) tells whether the server applied the push; afterwards
a clean sync must apply whatever was not applied yet, once, and leave the tablet equal to the
server.  Also: one seed replays the same run.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
from chaos_campaign import run_campaign
from chaos_faults import FAULT_KINDS, FaultyTransport, LoopTransport, PushLedger
from chaos_proxy import TCP_FAULT_KINDS, FaultProxy
from chaos_servers import ThreadServer
from serverkit import PIN, assert_matches_server, household

from fieldsync import KdfParams, Store
from fieldsync.errors import NetworkError, ProtocolError, RequestRejected, ServerError, SyncError
from fieldsync.sync import SyncClient, enroll
from fieldsync.transport import RequestsTransport
from server_stub.app import create_app
from server_stub.district import District


@pytest.fixture
def backend() -> str:
    """The injectors are the subject here; one backend is enough."""
    return "sqlite"


# kind -> (what the client raises or None, pushes the server applied during the faulty sync)
EXPECTED: dict[str, tuple[type[Exception] | tuple[type[Exception], ...] | None, int]] = {
    "drop_request": (NetworkError, 0),
    "drop_response": (NetworkError, 1),
    "duplicate": (None, 1),  # the copy is refused as a replayed nonce, never applied
    "delay": (None, 1),
    "reorder": (NetworkError, 0),  # held; it arrives later (after healing here)
    "truncate_request": (RequestRejected, 0),
    "truncate_response": (ProtocolError, 1),
    "server_error": (ServerError, 0),
    "server_error_after": (ServerError, 1),
    "timeout": (NetworkError, 1),
}


def _tablet(district: District, transport: object, tmp_path: Path, url: str) -> Store:
    store = Store.create(tmp_path / "t.fsdb", PIN, kdf=KdfParams(n=2**10))
    enroll(store, url, district.issue_code("w1")[0], transport=transport)  # type: ignore[arg-type]
    for n in range(3):
        store.put("households", household("g1", n))
    return store


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_each_transport_fault(kind: str, district: District, tmp_path: Path) -> None:
    ledger = PushLedger(create_app(district))
    inner = LoopTransport(ledger)
    try:
        store = _tablet(district, inner, tmp_path, "http://in-process")
        stats: Counter[str] = Counter()
        faulty = FaultyTransport(inner, random.Random(7), {kind: 1.0}, stats, concurrent=False)
        raises, applied = EXPECTED[kind]
        client = SyncClient(store, faulty, retries=0)
        if raises is None:
            client.sync()
        else:
            with pytest.raises(raises):
                client.sync()
        assert stats[kind] >= 1
        assert len(ledger.answers) == applied, f"{kind}: the server applied {len(ledger.answers)} pushes"
        if kind == "duplicate":
            assert store.outbox_size() == 0
        elif raises is not None:
            assert store.outbox_size() == 3, f"{kind}: the outbox lost entries without an acknowledgement"
        faulty.heal()
        assert not faulty.violations, faulty.violations
        client.sync()
        (me,) = district.devices()
        assert me["last_seq"] == 3
        assert ledger.applied_by(me["id"]) == 3, f"{kind}: changes applied {ledger.applied_by(me['id'])} times"
        assert store.outbox_size() == 0
        assert_matches_server(store, district)
    finally:
        inner.close()


TCP_EXPECTED: dict[str, tuple[bool, int]] = {  # kind -> (the sync fails, pushes applied during it)
    "tcp_drop_request": (True, 0),
    "tcp_cut_request": (True, 0),
    "tcp_drop_response": (True, 1),
    "tcp_cut_response": (True, 1),
    "tcp_delay": (False, 1),
    "tcp_duplicate": (False, 1),
    "tcp_reorder": (True, 0),
}


@pytest.mark.parametrize("kind", TCP_FAULT_KINDS)
def test_each_tcp_fault(kind: str, district: District, tmp_path: Path) -> None:
    ledger = PushLedger(create_app(district))
    stats: Counter[str] = Counter()
    with ThreadServer(ledger) as server:
        store = _tablet(district, RequestsTransport(server.url), tmp_path, server.url)
        with FaultProxy(("127.0.0.1", server.port), random.Random(7), {kind: 1.0}, stats) as proxy:
            client = SyncClient(store, RequestsTransport(proxy.url, timeout=5), retries=0)
            fails, applied = TCP_EXPECTED[kind]
            if fails:
                with pytest.raises(SyncError):
                    client.sync()
            else:
                try:
                    client.sync()
                except RequestRejected as exc:  # the duplicate that reached the server first won
                    assert kind == "tcp_duplicate" and exc.code == "nonce_replayed", exc
            assert stats[kind] >= 1
            assert len(ledger.answers) == applied, f"{kind}: the server applied {len(ledger.answers)} pushes"
            proxy.heal()
            client.sync()
        (me,) = district.devices()
        assert ledger.applied_by(me["id"]) == 3, f"{kind}: changes applied {ledger.applied_by(me['id'])} times"
        assert store.outbox_size() == 0
        assert_matches_server(store, district)


def test_a_seed_replays_the_same_run(workdir: Path) -> None:
    """Without threads the same seed makes the same operations and meets the same faults."""
    runs = [run_campaign(4242, "sqlite", workdir / f"run{i}", concurrent=False, rounds=6) for i in range(2)]
    for field in ("ops", "faults", "syncs"):
        assert getattr(runs[0], field) == getattr(runs[1], field), f"{field} differ between two plays of one seed"
