"""The device side of attachment transfer, against a small fake server: every odd answer handled.

The real server is in tests/server/test_attachments_sync.py; here a fake one answers exactly as
a test needs (a stale offset, a hash mismatch twice, a malformed answer, a 500, a range too long),
checks each request's signature over method, path, query and body, and keeps nothing on disk.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fieldsync import IntegrityError, NetworkError, ProtocolError, RequestRejected, Store
from fieldsync.identity import Identity, new_key, save_identity
from fieldsync.protocol import (
    CHUNK_BYTES,
    H_DEVICE,
    H_NONCE,
    H_SIGNATURE,
    H_TIMESTAMP,
    MAX_CHUNK_BYTES,
    canonical_request,
    unb64,
)
from fieldsync.sync import SyncClient
from fieldsync.transfer import STATUS_BATCH, pending_uploads
from fieldsync.transport import Request, Response

GRID = "g1"


def blob(n: int, seed: int = 0) -> bytes:
    out = bytearray()
    block = hashlib.sha256(f"att-{seed}".encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:n])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def body_of(request: Request) -> bytes:
    return gzip.decompress(request.body) if request.headers.get("Content-Encoding") == "gzip" else request.body


def answer(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(status, {"content-type": "application/json", **(headers or {})}, json.dumps(payload).encode())


def error(status: int, code: str, **extra: Any) -> Response:
    return answer(status, {"error": {"code": code, "message": code.replace("_", " "), **extra}})


@dataclass
class FakeServer:
    """Protocol §16 in memory.  ``hook(request)`` may answer instead (return a Response) or raise."""

    public_key: Ed25519PublicKey | None = None
    held: dict[str, bytearray] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    complete: dict[str, bytes] = field(default_factory=dict)
    scope: set[str] | None = None  # hashes the device may reach (None: all)
    hook: Callable[[Request], Response | None] | None = None
    log: list[Request] = field(default_factory=list)

    def handle(self, request: Request) -> Response:
        self.log.append(request)
        h = request.headers
        assert self.public_key is not None
        self.public_key.verify(unb64(h[H_SIGNATURE], "signature"), canonical_request(
            request.method, request.path, request.query, request.body, int(h[H_TIMESTAMP]), h[H_NONCE], h[H_DEVICE]))
        if self.hook is not None:
            hooked = self.hook(request)
            if hooked is not None:
                return hooked
        if request.path == "/v1/attachments/status":
            hashes = json.loads(body_of(request))["hashes"]
            if self.scope is not None and not set(hashes) <= self.scope:
                return error(403, "out_of_scope")
            return answer(200, {"attachments": [self._state(x) for x in hashes]})
        digest = request.path.rsplit("/", 1)[1]
        params = dict(p.split("=") for p in request.query.split("&"))
        if self.scope is not None and digest not in self.scope:
            return error(403, "out_of_scope")
        if request.method == "GET":
            if digest not in self.complete:
                return error(404, "attachment_pending")
            data = self.complete[digest]
            off, length = int(params["offset"]), min(int(params["length"]), MAX_CHUNK_BYTES)
            return Response(200, {"x-fieldsync-attachment-size": str(len(data))}, data[off:off + length])
        return self._put(digest, int(params["offset"]), int(h["X-Fieldsync-Attachment-Size"]), request.body)

    def _state(self, digest: str) -> dict[str, Any]:
        if digest in self.complete:
            n = len(self.complete[digest])
            return {"hash": digest, "state": "complete", "received": n, "size": n}
        got = len(self.held.get(digest, b""))
        return {"hash": digest, "state": "partial" if got else "missing", "received": got,
                "size": self.sizes.get(digest) if got else None}

    def _put(self, digest: str, offset: int, size: int, body: bytes) -> Response:
        if digest in self.complete:
            return answer(200, self._state(digest))
        held = self.held.setdefault(digest, bytearray())
        if offset != len(held):
            return error(409, "offset_mismatch", received=len(held))
        self.sizes[digest] = size
        held += body
        if len(held) == size:
            del self.held[digest]
            if sha(bytes(held)) != digest:
                return error(422, "hash_mismatch")
            self.complete[digest] = bytes(held)
        return answer(200, self._state(digest))

    def puts(self) -> list[Request]:
        return [r for r in self.log if r.method == "PUT"]


def offsets(requests: list[Request]) -> list[int]:
    return [int(r.query.split("=")[1]) for r in requests]


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def client(store: Store, server: FakeServer) -> SyncClient:
    key = new_key()
    save_identity(store, Identity("d0123456789abcdef", "w1", "https://district.example", key))
    server.public_key = key.public_key()
    return SyncClient(store, server, sleep=lambda s: None, retries=2)


def with_report(store: Store, data: bytes, n: int = 0) -> str:
    h = store.attachments.add(io.BytesIO(data)).hash
    store.put("reports", {"grid_id": GRID, "category": "c", "description": f"d{n}", "attachments": [h],
                          "status": "submitted"})
    return h


# -- upload ----------------------------------------------------------------------------------

def test_upload_sends_chunks_signed_over_the_query(client: SyncClient, store: Store, server: FakeServer) -> None:
    data = blob(3 * CHUNK_BYTES + 17)
    h = with_report(store, data)
    assert pending_uploads(store) == [h] and SyncClient(store, server).status.photos_pending == 1
    result = client.upload_attachments()
    assert result.uploaded == 1 and result.bytes_sent == len(data) and result.error is None
    assert server.complete[h] == data
    assert offsets(server.puts()) == [0, CHUNK_BYTES, 2 * CHUNK_BYTES, 3 * CHUNK_BYTES]
    assert all(r.headers["Content-Type"] == "application/octet-stream" for r in server.puts())
    assert store.attachments.state(h).confirmed and pending_uploads(store) == []
    assert client.status.photos_pending == 0 and client.status.phase == "idle"


def test_upload_continues_from_a_partial_and_from_the_servers_count(client: SyncClient, store: Store,
                                                                    server: FakeServer) -> None:
    data = blob(4 * CHUNK_BYTES)
    h = with_report(store, data)
    server.held[h] = bytearray(data[:CHUNK_BYTES])
    server.sizes[h] = len(data)

    def ahead(request: Request) -> Response | None:
        if request.method == "PUT" and len(server.puts()) == 1:  # meanwhile another attempt got further
            server.held[h] += data[CHUNK_BYTES:3 * CHUNK_BYTES]
        return None

    server.hook = ahead
    result = client.upload_attachments()
    assert offsets(server.puts()) == [CHUNK_BYTES, 3 * CHUNK_BYTES]
    assert result.uploaded == 1 and server.complete[h] == data


def test_the_server_behind_the_device_is_followed_backwards(client: SyncClient, store: Store,
                                                             server: FakeServer) -> None:
    data = blob(3 * CHUNK_BYTES)
    h = with_report(store, data)
    server.held[h] = bytearray(data[:2 * CHUNK_BYTES])
    server.sizes[h] = len(data)

    def forget(request: Request) -> Response | None:
        if request.method == "PUT" and len(server.puts()) == 1:
            del server.held[h][CHUNK_BYTES:]  # the server lost its last chunk (a disk restored from backup)
        return None

    server.hook = forget
    client.upload_attachments()
    assert offsets(server.puts()) == [2 * CHUNK_BYTES, CHUNK_BYTES, 2 * CHUNK_BYTES]
    assert server.complete[h] == data


def test_hash_mismatch_twice_gives_up_until_the_next_pass(client: SyncClient, store: Store,
                                                          server: FakeServer) -> None:
    data = blob(2 * CHUNK_BYTES + 5)
    h = with_report(store, data)

    def damaged_on_the_way(request: Request) -> Response | None:
        if request.method == "PUT" and len(request.body) < CHUNK_BYTES:  # the last chunk: the whole is checked
            server.held.pop(h, None)
            return error(422, "hash_mismatch")
        return None

    server.hook = damaged_on_the_way
    result = client.upload_attachments()
    assert offsets(server.puts()) == [0, CHUNK_BYTES, 2 * CHUNK_BYTES] * 2, "restarted from 0 once, then gave up"
    assert result.uploaded == 0 and result.pending == 1 and result.skipped == 1
    assert result.error is not None and "hash_mismatch" in result.error
    assert client.status.upload_error == result.error and not store.attachments.state(h).confirmed
    server.hook = None
    server.held.clear()
    assert client.upload_attachments().uploaded == 1 and server.complete[h] == data


def test_a_refused_attachment_does_not_stop_the_others(client: SyncClient, store: Store, server: FakeServer) -> None:
    too_big, fine = blob(1000, 1), blob(2000, 2)
    h_big, h_fine = with_report(store, too_big, 1), with_report(store, fine, 2)
    server.hook = lambda r: error(413, "attachment_too_large") if r.path.endswith(h_big) else None
    result = client.upload_attachments()
    assert result.uploaded == 1 and result.skipped == 1 and "attachment_too_large" in (result.error or "")
    assert h_fine in server.complete and h_big not in server.complete


def test_out_of_scope_batches_are_asked_one_by_one(client: SyncClient, store: Store, server: FakeServer) -> None:
    hashes = [with_report(store, blob(100 + n, n), n) for n in range(STATUS_BATCH + 3)]
    server.scope = set(hashes[1:])
    result = client.upload_attachments()
    statuses = [r for r in server.log if r.path == "/v1/attachments/status"]
    sizes = [len(json.loads(body_of(r))["hashes"]) for r in statuses]
    # the batch holding the refused hash is asked again hash by hash; the other batch went at once
    assert sizes in ([STATUS_BATCH] + [1] * STATUS_BATCH + [3], [STATUS_BATCH, 3, 1, 1, 1])
    assert result.uploaded == STATUS_BATCH + 2 and result.skipped == 1 and result.pending == 1
    assert pending_uploads(store) == [hashes[0]]


@pytest.mark.parametrize("trouble", ["network", "server_error", "malformed_status", "malformed_put", "revoked"])
def test_trouble_stops_the_pass_quietly(client: SyncClient, store: Store, server: FakeServer, trouble: str) -> None:
    data = blob(2 * CHUNK_BYTES)
    h = with_report(store, data)

    def hook(request: Request) -> Response | None:
        if trouble == "malformed_status" and request.path.endswith("status"):
            return answer(200, {"attachments": [{"hash": h, "state": "partial", "received": 10**9, "size": 5}]})
        if request.method != "PUT":
            return None
        if trouble == "network":
            raise NetworkError("no signal")
        if trouble == "server_error":
            return answer(503, {"error": {"code": "unavailable", "message": "busy"}})
        if trouble == "malformed_put":
            return answer(200, {"state": "done"})
        return error(403, "device_revoked", wipe=False)

    server.hook = hook
    result = client.upload_attachments()  # never raises
    assert result.uploaded == 0 and result.pending == 1 and result.error
    assert client.status.upload_error == result.error and client.status.phase == "idle"
    assert len(server.puts()) <= 3  # the first PUT and its two retries at most
    assert not store.attachments.state(h).confirmed


def test_an_offset_that_never_advances_is_given_up(client: SyncClient, store: Store, server: FakeServer) -> None:
    h = with_report(store, blob(2 * CHUNK_BYTES))
    server.hook = lambda r: error(409, "offset_mismatch", received=0) if r.method == "PUT" else None
    result = client.upload_attachments()
    assert result.pending == 1 and "does not advance" in (result.error or "")
    assert 3 <= len(server.puts()) <= 10
    assert not store.attachments.state(h).confirmed


def test_a_damaged_local_file_is_reported_and_skipped(client: SyncClient, store: Store, server: FakeServer) -> None:
    bad, good = blob(3 * CHUNK_BYTES, 1), blob(1000, 2)
    h_bad, h_good = with_report(store, bad, 1), with_report(store, good, 2)
    name = store.attachments.folder / store._keys.attachment_name(h_bad)
    raw = bytearray(name.read_bytes())
    raw[-100] ^= 0x01
    name.write_bytes(bytes(raw))
    result = client.upload_attachments()
    assert result.uploaded == 1 and h_good in server.complete and h_bad not in server.complete
    assert "cannot be read here" in (result.error or "")


def test_nothing_to_send_reads_no_records(client: SyncClient, store: Store, server: FakeServer,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    h = with_report(store, blob(500))
    client.upload_attachments()
    assert store.attachments.state(h).confirmed
    monkeypatch.setattr(store, "list", lambda *a, **k: pytest.fail("records were read"))
    server.log.clear()
    assert client.upload_attachments().uploaded == 0 and server.log == []


def test_only_held_unconfirmed_attachments_of_live_records_are_pending(store: Store) -> None:
    held = with_report(store, blob(300, 1), 1)
    store.put("reports", {"grid_id": GRID, "category": "c", "description": "refers to a photo not here",
                          "attachments": ["ab" * 32, "not-a-hash"], "status": "submitted"})
    loose = store.attachments.add(io.BytesIO(blob(300, 2))).hash  # a draft's photo: no record yet
    gone = with_report(store, blob(300, 3), 3)
    store.delete("reports", next(r["id"] for r in store.list("reports") if gone in (r.get("attachments") or [])))
    assert store.attachments.unconfirmed_count() == 3
    assert pending_uploads(store) == [held]
    assert loose != held


# -- download --------------------------------------------------------------------------------

def test_download_streams_ranges_into_the_store(client: SyncClient, store: Store, server: FakeServer) -> None:
    data = blob(2 * MAX_CHUNK_BYTES + 999)
    h = sha(data)
    server.complete[h] = data
    got = client.download_attachment(h)
    assert got.size == len(data) and store.attachments.read(h) == data
    gets = [r for r in server.log if r.method == "GET"]
    assert [r.query for r in gets] == [f"offset={o}&length={MAX_CHUNK_BYTES}" for o in
                                       (0, MAX_CHUNK_BYTES, 2 * MAX_CHUNK_BYTES)]
    assert all(r.body == b"" for r in gets)


def test_an_empty_attachment(client: SyncClient, store: Store, server: FakeServer) -> None:
    h = sha(b"")
    server.complete[h] = b""
    assert client.download_attachment(h).size == 0 and store.attachments.read(h) == b""


def _leftovers(store: Store) -> list[Path]:
    return list(store.attachments.folder.iterdir())


@pytest.mark.parametrize("damage", ["content", "size_header", "range_too_long", "size_changes", "cut_midway"])
def test_a_bad_download_leaves_nothing(client: SyncClient, store: Store, server: FakeServer, damage: str) -> None:
    data = blob(MAX_CHUNK_BYTES + 500)
    h = sha(data)
    server.complete[h] = data if damage != "content" else data[:-1] + b"X"
    gets: list[int] = []

    def hook(request: Request) -> Response | None:
        if request.method != "GET":
            return None
        gets.append(1)
        if damage == "size_header":
            return Response(200, {}, data[:10])
        if damage == "range_too_long":
            return Response(200, {"x-fieldsync-attachment-size": str(len(data))}, data)
        if damage == "size_changes" and len(gets) == 2:
            return Response(200, {"x-fieldsync-attachment-size": str(len(data) + 1)}, data[MAX_CHUNK_BYTES:])
        if damage == "cut_midway" and len(gets) >= 2:
            raise NetworkError("gone")
        return None

    server.hook = hook
    expected = {"content": IntegrityError, "cut_midway": NetworkError}.get(damage, ProtocolError)
    with pytest.raises(expected):
        client.download_attachment(h)
    assert not store.attachments.exists(h) and _leftovers(store) == []


def test_download_refusals(client: SyncClient, store: Store, server: FakeServer) -> None:
    with pytest.raises(RequestRejected) as err:
        client.download_attachment("cd" * 32)
    assert err.value.code == "attachment_pending" and err.value.status == 404
    server.scope = set()
    with pytest.raises(RequestRejected) as err:
        client.download_attachment("cd" * 32)
    assert err.value.code == "out_of_scope"
    with pytest.raises(ValueError):
        client.download_attachment("../../etc/passwd")
    assert _leftovers(store) == []


# -- the store side ----------------------------------------------------------------------------

def test_receive_checks_the_hash_and_size(store: Store) -> None:
    data = os.urandom(300_000)
    pieces = [data[i:i + 7_777] for i in range(0, len(data), 7_777)]
    with pytest.raises(IntegrityError):
        store.attachments.receive(sha(data), pieces, size=len(data) + 1)
    with pytest.raises(IntegrityError):
        store.attachments.receive(sha(data), pieces[:-1])
    assert _leftovers(store) == [] and not store.attachments.exists(sha(data))
    got = store.attachments.receive(sha(data), iter(pieces), size=len(data))
    assert got.size == len(data) and store.attachments.read(sha(data)) == data
    state = store.attachments.state(sha(data))
    assert state is not None and state.origin == "downloaded" and state.confirmed
    assert [s.hash for s in store.attachments.cached()] == [sha(data)]


def test_lru_eviction_order_and_the_limit(store: Store) -> None:
    clock = iter(range(1000, 10**6, 10))
    store.attachments.now_ms = lambda: next(clock)
    blobs = [blob(10_000, n) for n in range(5)]
    for b in blobs:
        store.attachments.receive(sha(b), [b])
    mine = store.attachments.add(io.BytesIO(blob(50_000, 9))).hash
    store.attachments.read(sha(blobs[0]))
    assert store.attachments.cache_bytes() == 50_000
    assert store.attachments.evict(25_000) == 3
    assert {s.hash for s in store.attachments.cached() if s.confirmed} == {sha(blobs[0]), sha(blobs[4])}
    assert store.attachments.evict(0, keep=[sha(blobs[4])]) == 1
    assert store.attachments.exists(sha(blobs[4])) and store.attachments.exists(mine)
    store.attachments.confirm(mine)
    assert store.attachments.evict(0) == 2 and not store.attachments.exists(mine)


def test_migration_0003_adopts_attachments_added_before_it(store_path: Path, fast_kdf: Any) -> None:
    store = Store.create(store_path, "2580", kdf=fast_kdf)
    data = blob(1234)
    h = with_report(store, data)
    # Make it a store from before 0003: no state table, the migration not recorded.
    store.db.execute("DROP TABLE attachment_state")
    store.db.execute("DELETE FROM _sqlite_migrations WHERE name = '0003_attachment_state'")
    store.db.conn.commit()
    store.close()
    again = Store.open(store_path, "2580")
    state = again.attachments.state(h)
    assert state is not None and state.origin == "local" and not state.confirmed
    assert again.attachments.cached() == []  # its hash is not known to the state table yet (never in clear)
    assert pending_uploads(again) == [h]
    again.attachments.confirm(h)
    assert [s.hash for s in again.attachments.cached()] == [h]
    assert again.attachments.read(h) == data
