"""Attachments on the district server (docs/protocol.md §16): resumable, content-addressed, in scope.

Requests are built by hand here (signed like a device signs them, the query string included), so
these tests pin the wire protocol the device side is written against.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from serverkit import audit_actions, call, error_of, json_of, now_ms, rows

from fieldsync.clock import Stamp
from fieldsync.identity import Identity
from fieldsync.protocol import CHUNK_BYTES, H_SCHEMA, MAX_ATTACHMENT_BYTES, MAX_CHUNK_BYTES
from fieldsync.transport import Request as WireRequest
from fieldsync.transport import RequestsTransport, Response, Transport
from server_stub.attachments import ATTACHMENTS_ENV, DirectoryStorage, HashMismatch, OffsetMismatch
from server_stub.district import District
from server_stub.openapi import openapi_document
from server_stub.replica import Actor

SIZE = "X-Fieldsync-Attachment-Size"
COMMAND = Actor("cc", "command")


@pytest.fixture(autouse=True)
def attachments_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """One attachments folder per test, shared by the in-process district and every live server."""
    folder = tmp_path / "attachments"
    monkeypatch.setenv(ATTACHMENTS_ENV, str(folder))
    return folder


# -- helpers ----------------------------------------------------------------------------


def photo(n: int = 4, tail: int = 1000, seed: int = 1) -> bytes:
    """Pseudo-random bytes of ``n - 1`` full chunks and a short last one (``n`` chunks to send)."""
    out = bytearray()
    block = hashlib.sha256(f"photo-{seed}".encode()).digest()
    while len(out) < (n - 1) * CHUNK_BYTES + tail:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[: (n - 1) * CHUNK_BYTES + tail])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunks(data: bytes, start: int = 0) -> list[tuple[int, bytes]]:
    return [(off, data[off:off + CHUNK_BYTES]) for off in range(start, len(data), CHUNK_BYTES)]


def put(transport: Transport, identity: Identity, digest: str, offset: int | str, body: bytes, size: int | str | None,
        *, query: str | None = None, headers: dict[str, str] | None = None) -> Response:
    """``PUT /v1/attachments/{digest}?offset=N`` with raw bytes, signed over the query string."""
    path = f"/v1/attachments/{digest}"
    query = f"offset={offset}" if query is None else query
    base = {"Content-Type": "application/octet-stream", H_SCHEMA: "1", **(headers or {})}
    if size is not None:
        base[SIZE] = str(size)
    base.update(identity.sign("PUT", path, query, body))
    return transport.handle(WireRequest("PUT", path, query, base, body))


def get(transport: Transport, identity: Identity, digest: str, query: str = "",
        headers: dict[str, str] | None = None) -> Response:
    path = f"/v1/attachments/{digest}"
    signed = {**(headers or {}), **identity.sign("GET", path, query, b"")}
    return transport.handle(WireRequest("GET", path, query, signed, b""))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def send_cut_off(base_url: str, identity: Identity, digest: str, offset: int, body: bytes, size: int,
                 keep: int) -> None:
    """A signed PUT whose connection drops after ``keep`` bytes of its body (a tablet losing the network)."""
    path, query = f"/v1/attachments/{digest}", f"offset={offset}"
    host, port = base_url.removeprefix("http://").split(":")
    head = {"Host": f"{host}:{port}", "Content-Type": "application/octet-stream", "Content-Length": str(len(body)),
            SIZE: str(size), **identity.sign("PUT", path, query, body)}
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"PUT {path}?{query} HTTP/1.1\r\n".encode()
                     + "".join(f"{k}: {v}\r\n" for k, v in head.items()).encode() + b"\r\n" + body[:keep])
    time.sleep(0.2)  # let the server notice the disconnect


def status(transport: Transport, identity: Identity, *hashes: str) -> Response:
    return call(transport, identity, "/v1/attachments/status", {"schema_version": 1, "hashes": list(hashes)})


def states(transport: Transport, identity: Identity, *hashes: str) -> list[dict[str, Any]]:
    answer = json_of(status(transport, identity, *hashes))
    assert [a["hash"] for a in answer["attachments"]] == list(hashes)
    return answer["attachments"]  # type: ignore[no-any-return]


def upload(transport: Transport, identity: Identity, data: bytes, start: int = 0) -> dict[str, Any]:
    """Send ``data`` from ``start`` in CHUNK_BYTES pieces; the last answer."""
    answer: dict[str, Any] = {}
    for off, piece in chunks(data, start):
        answer = json_of(put(transport, identity, sha(data), off, piece, len(data)))
    if not data:
        answer = json_of(put(transport, identity, sha(data), 0, b"", 0))
    return answer


def upload_racing(transport: Transport, identity: Identity, data: bytes) -> int:
    """Upload like a client that shares the upload with others: follow ``received`` on 409.  Returns PUTs sent."""
    digest, offset, sent = sha(data), 0, 0
    while True:
        resp = put(transport, identity, digest, offset, data[offset:offset + CHUNK_BYTES], len(data))
        sent += 1
        if resp.status == 409:
            offset = error_of(resp)["received"]
            continue
        answer = json_of(resp)
        if answer["state"] == "complete":
            return sent
        offset = answer["received"]


@dataclass
class Tablet:
    """A device's identity and a push sequence: pushes records as the protocol does, by hand."""

    identity: Identity
    transport: Transport
    seqs: itertools.count = field(default_factory=lambda: itertools.count(1))
    ticks: itertools.count = field(default_factory=lambda: itertools.count(1))

    def push(self, collection: str, rid: str, values: dict[str, Any]) -> dict[str, Any]:
        stamp = Stamp(now_ms(), next(self.ticks), "ntablet").encode()
        change = {"seq": next(self.seqs), "collection": collection, "id": rid, "grid": values.get("grid_id", "g1"),
                  "fields": {k: [v, stamp, None] for k, v in values.items()}}
        answer = json_of(call(self.transport, self.identity, "/v1/push", {"schema_version": 1, "changes": [change]}))
        return answer  # type: ignore[no-any-return]


def report(grid: str, *hashes: str) -> dict[str, Any]:
    return {"grid_id": grid, "category": "违章张贴", "description": "楼道里有小广告", "status": "submitted",
            "attachments": list(hashes)}


def tablet(make_device: Any, worker: str, transport: Transport | None = None) -> Tablet:
    dev = make_device(worker)
    return Tablet(dev.identity, transport if transport is not None else dev.transport)


def stored(folder: Path) -> dict[str, list[str]]:
    """Files under complete/ and partial/ of an attachments folder."""
    return {part: sorted(p.name for p in (folder / part).rglob("*") if p.is_file())
            for part in ("complete", "partial")}


def refs(district: District) -> set[tuple[str, str, str, str]]:
    return {tuple(r) for r in rows(district, "SELECT hash, collection, record_id, grid FROM attachment_refs")}  # type: ignore[misc]


# -- upload, status, download --------------------------------------------------------------


def test_upload_in_chunks_then_download_ranges(district, make_device, inproc, attachments_dir):
    a = tablet(make_device, "w1")
    data = photo(4)
    digest = sha(data)
    assert a.push("reports", "r1", report("g1", digest))["rejections"] == []
    assert states(inproc, a.identity, digest) == [{"hash": digest, "state": "missing", "received": 0, "size": None}]

    pieces = chunks(data)
    assert len(pieces) == 4
    for i, (off, piece) in enumerate(pieces[:-1], 1):
        assert json_of(put(inproc, a.identity, digest, off, piece, len(data))) == {
            "state": "partial", "received": i * CHUNK_BYTES, "size": len(data)}
        assert states(inproc, a.identity, digest)[0] == {
            "hash": digest, "state": "partial", "received": i * CHUNK_BYTES, "size": len(data)}
    off, piece = pieces[-1]
    assert json_of(put(inproc, a.identity, digest, off, piece, len(data))) == {
        "state": "complete", "received": len(data), "size": len(data)}
    assert states(inproc, a.identity, digest)[0]["state"] == "complete"
    assert stored(attachments_dir) == {"complete": [digest], "partial": []}
    assert (attachments_dir / "complete" / digest[:2] / digest).read_bytes() == data

    whole = get(inproc, a.identity, digest)
    assert whole.status == 200 and whole.headers["content-type"] == "application/octet-stream"
    assert whole.headers[SIZE.lower()] == str(len(data)) and "x-fieldsync-server-time" in whole.headers
    assert whole.body == data  # under 1 MiB: the default range is the whole photo

    for offset, length in ((0, 1), (100, 1000), (CHUNK_BYTES - 3, 7), (len(data) - 10, 500), (len(data), 10)):
        resp = get(inproc, a.identity, digest, f"offset={offset}&length={length}")
        assert resp.status == 200 and resp.body == data[offset:offset + length], (offset, length)
    # Another device of the grid downloads it in ranges and checks the hash at the end.
    b = tablet(make_device, "w2")
    got, offset = b"", 0
    while offset < len(data):
        piece = get(inproc, b.identity, digest, f"length=300000&offset={offset}").body
        got, offset = got + piece, offset + len(piece)
    assert sha(got) == digest


def test_download_ranges_are_at_most_one_mib_and_never_gzipped(district, make_device, inproc, live):
    a = tablet(make_device, "w1")
    data = photo(6, tail=CHUNK_BYTES)  # 1.5 MiB
    digest = sha(data)
    a.push("reports", "r1", report("g1", digest))
    upload(inproc, a.identity, data)
    first = get(live, a.identity, digest, f"length={3 * MAX_CHUNK_BYTES}", headers={"Accept-Encoding": "gzip"})
    assert first.status == 200 and first.body == data[:MAX_CHUNK_BYTES]
    assert "content-encoding" not in first.headers and first.size_on_wire == MAX_CHUNK_BYTES
    rest = get(live, a.identity, digest, f"offset={MAX_CHUNK_BYTES}")
    assert rest.body == data[MAX_CHUNK_BYTES:] and rest.headers[SIZE.lower()] == str(len(data))


def test_an_upload_cut_off_resumes_from_the_offset_status_reports(district, make_device, server_factory,
                                                                  attachments_dir, tmp_path):
    """Real servers: 2 of 4 chunks reach server process A, then the tablet loses the network; later it
    asks a second server process B (same database, same folder) where to continue, and finishes there."""
    first, second = RequestsTransport(server_factory()), RequestsTransport(server_factory())
    dev = make_device("w1")
    a = Tablet(dev.identity, first)
    data = photo(4, seed=7)
    digest = sha(data)
    assert a.push("reports", "r-cut", report("g1", digest))["acked_seq"] == 1
    for off, piece in chunks(data)[:2]:
        assert json_of(put(first, a.identity, digest, off, piece, len(data)))["state"] == "partial"
    # The connection drops in the middle of chunk 3: the server keeps nothing of a chunk it did not get whole.
    off, piece = chunks(data)[2]
    send_cut_off(first.base_url, a.identity, digest, off, piece, len(data), keep=len(piece) // 3)
    first.close()  # then the tablet is offline: chunk 4 never leaves it

    (state,) = states(second, a.identity, digest)
    assert state == {"hash": digest, "state": "partial", "received": 2 * CHUNK_BYTES, "size": len(data)}
    answer = upload(second, a.identity, data, start=state["received"])
    assert answer == {"state": "complete", "received": len(data), "size": len(data)}
    assert stored(attachments_dir) == {"complete": [digest], "partial": []}
    assert get(second, a.identity, digest).body == data
    assert district.attachments.open_range(digest, 0, len(data)) == data
    second.close()
    logs = "".join(p.read_text() for p in tmp_path.glob("uvicorn-*.log"))
    assert "Traceback" not in logs and "unexpected error" not in logs, logs


def test_a_chunk_at_the_wrong_offset_is_409_with_received(district, make_device, inproc):
    a = tablet(make_device, "w1")
    data = photo(4)
    digest = sha(data)
    a.push("reports", "r1", report("g1", digest))
    # Nothing held yet: only offset 0 is accepted.
    err = error_of(resp := put(inproc, a.identity, digest, CHUNK_BYTES, data[CHUNK_BYTES:2 * CHUNK_BYTES], len(data)))
    assert resp.status == 409 and err["code"] == "offset_mismatch" and err["received"] == 0
    put(inproc, a.identity, digest, 0, data[:CHUNK_BYTES], len(data))
    for wrong in (0, 100, 2 * CHUNK_BYTES):
        resp = put(inproc, a.identity, digest, wrong, data[wrong:wrong + CHUNK_BYTES], len(data))
        assert resp.status == 409 and error_of(resp)["code"] == "offset_mismatch"
        assert error_of(resp)["received"] == CHUNK_BYTES
    assert states(inproc, a.identity, digest)[0]["received"] == CHUNK_BYTES  # the refused chunks changed nothing
    assert upload(inproc, a.identity, data, start=CHUNK_BYTES)["state"] == "complete"
    assert get(inproc, a.identity, digest).body == data


def test_a_corrupted_chunk_is_caught_at_the_end_and_nothing_is_kept(district, make_device, inproc, attachments_dir):
    a = tablet(make_device, "w1")
    data = photo(4)
    digest = sha(data)
    a.push("reports", "r1", report("g1", digest))
    bad = bytearray(data)
    bad[CHUNK_BYTES + 12345] ^= 0x01  # one bit flipped in chunk 2 on the way
    last: Response | None = None
    for off, piece in chunks(bytes(bad)):
        last = put(inproc, a.identity, digest, off, piece, len(data))
    assert last is not None and last.status == 422 and error_of(last)["code"] == "hash_mismatch"
    assert states(inproc, a.identity, digest)[0] == {"hash": digest, "state": "missing", "received": 0, "size": None}
    assert stored(attachments_dir) == {"complete": [], "partial": []}
    assert error_of(get(inproc, a.identity, digest))["code"] == "attachment_pending"
    assert ("device:" + a.identity.device_id, "attachment.hash_mismatch", f"attachment:{digest}") in audit_actions(district)

    assert upload(inproc, a.identity, data)["state"] == "complete"  # a clean upload from 0 succeeds
    assert get(inproc, a.identity, digest).body == data


def test_a_duplicate_upload_stores_one_copy(district, make_device, inproc, attachments_dir):
    a, b = tablet(make_device, "w1"), tablet(make_device, "w2")
    data = photo(3)
    digest = sha(data)
    a.push("reports", "r1", report("g1", digest))
    b.push("reports", "r2", report("g1", digest))  # the same photo attached to two reports
    assert upload(inproc, a.identity, data)["state"] == "complete"
    before = (attachments_dir / "complete" / digest[:2] / digest).stat()
    # A retry of any chunk, or the other device's whole upload: answered complete, nothing written.
    for off, piece in chunks(data):
        assert json_of(put(inproc, b.identity, digest, off, piece, len(data))) == {
            "state": "complete", "received": len(data), "size": len(data)}
    assert json_of(put(inproc, a.identity, digest, 0, data[:10], len(data)))["state"] == "complete"
    after = (attachments_dir / "complete" / digest[:2] / digest).stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert stored(attachments_dir) == {"complete": [digest], "partial": []}


def test_concurrent_uploads_of_one_photo_through_two_server_processes(district, make_device, server_factory,
                                                                      attachments_dir):
    urls = [server_factory(), server_factory()]
    tablets = [tablet(make_device, w) for w in ("w1", "w2")]
    data = photo(12, seed=3)
    digest = sha(data)
    tablets[0].push("reports", "r1", report("g1", digest))
    errors: list[BaseException] = []
    sent: list[int] = []
    start = threading.Barrier(2)

    def run(i: int) -> None:
        transport = RequestsTransport(urls[i])
        try:
            start.wait()
            sent.append(upload_racing(transport, tablets[i].identity, data))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            transport.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(sent) == 2
    assert stored(attachments_dir) == {"complete": [digest], "partial": []}
    assert (attachments_dir / "complete" / digest[:2] / digest).read_bytes() == data


def test_storage_takes_concurrent_appends_of_one_hash_from_many_threads(tmp_path):
    storage = DirectoryStorage(tmp_path / "store")
    data = photo(8, seed=5)
    digest = sha(data)
    done: list[int] = []

    def run() -> None:
        offset = 0
        while True:
            try:
                state = storage.append(digest, offset, data[offset:offset + CHUNK_BYTES], len(data))
            except OffsetMismatch as exc:
                offset = exc.received
                continue
            if state.complete:
                done.append(1)
                return
            offset = state.received

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(done) == 6
    assert storage.state(digest) == (len(data), len(data), True)
    assert storage.open_range(digest, 0, len(data)) == data
    assert stored(tmp_path / "store") == {"complete": [digest], "partial": []}
    with pytest.raises(HashMismatch):
        other = photo(2, seed=6)
        storage.append(sha(other), 0, other[:-1] + b"x", len(other))
    assert storage.state(sha(other)) == (0, None, False)


# -- scope ----------------------------------------------------------------------------------


def test_a_device_of_another_grid_cannot_fetch_upload_or_ask_and_cannot_probe(district, make_device, inproc):
    a = tablet(make_device, "w1")
    data = photo(2)
    held = sha(data)
    a.push("reports", "r1", report("g1", held))
    upload(inproc, a.identity, data)
    partial_data = photo(2, seed=9)
    partial = sha(partial_data)
    a.push("reports", "r2", report("g1", partial))
    put(inproc, a.identity, partial, 0, partial_data[:CHUNK_BYTES], len(partial_data))
    unknown = sha(b"never uploaded, never referred to")

    c = tablet(make_device, "w3")  # grid g2
    c.push("reports", "r3", report("g2"))
    answers = {}
    for digest in (held, partial, unknown):
        got = [status(inproc, c.identity, digest), put(inproc, c.identity, digest, 0, data[:100], len(data)),
               get(inproc, c.identity, digest)]
        assert [r.status for r in got] == [403, 403, 403], digest
        answers[digest] = [json.loads(r.body) for r in got]
    # The same answer whether the server holds the photo, part of it, or nothing: hashes cannot be probed.
    assert answers[held] == answers[partial] == answers[unknown]
    assert answers[held][0]["error"]["code"] == "out_of_scope"
    # One hash out of scope refuses the whole status request.
    assert status(inproc, c.identity, held, unknown).status == 403
    assert status(inproc, a.identity, held, unknown).status == 403
    assert [s["state"] for s in states(inproc, a.identity, held, partial)] == ["complete", "partial"]

    refused = [(act, obj) for actor, act, obj in audit_actions(district) if actor == f"device:{c.identity.device_id}"]
    for digest in (held, partial, unknown):
        assert ("authz.refused_read", f"attachment:{digest}") in refused
        assert ("authz.refused_write", f"attachment:{digest}") in refused
    assert states(inproc, a.identity, partial)[0]["received"] == CHUNK_BYTES  # the refused PUT changed nothing


def test_references_follow_grid_moves_edits_and_deletes(district, make_device, inproc):
    a, c = tablet(make_device, "w1"), tablet(make_device, "w3")
    data = photo(2)
    digest = sha(data)
    a.push("reports", "r1", report("g1", digest, "not-a-hash", digest.upper()))
    assert refs(district) == {(digest, "reports", "r1", "g1")}  # only well-formed hashes count
    upload(inproc, a.identity, data)
    assert get(inproc, c.identity, digest).status == 403

    district.write(COMMAND, "reports", "r1", {"grid_id": "g2"})  # the command centre moves the report
    assert refs(district) == {(digest, "reports", "r1", "g2")}
    assert get(inproc, c.identity, digest).body == data
    assert get(inproc, a.identity, digest).status == 403

    district.write(COMMAND, "reports", "r1", {"attachments": []})  # the photo is taken off the report
    assert refs(district) == set()
    assert get(inproc, c.identity, digest).status == 403

    district.write(COMMAND, "reports", "r1", {"attachments": [digest]})
    assert get(inproc, c.identity, digest).status == 200
    district.write(COMMAND, "reports", "r1", {"_deleted": True})  # a deleted record grants nothing
    assert refs(district) == set()
    assert get(inproc, c.identity, digest).status == 403

    # Any kind with an `attachments` list refers (fields a kind does not declare are kept).
    a.push("visits", "v1", {"grid_id": "g1", "household_id": "h1", "worker_id": "w1",
                            "visited_at": "2026-01-05T10:00:00+08:00", "purpose": "走访", "attachments": [digest]})
    assert refs(district) == {(digest, "visits", "v1", "g1")}
    assert get(inproc, a.identity, digest).status == 200


def test_refs_of_records_written_before_the_table_existed_are_built_once(district, make_device, db_url):
    a = tablet(make_device, "w1")
    digest = sha(b"old photo")
    a.push("reports", "r-old", report("g1", digest))
    with district.db.transaction() as tx:  # as a database from before attachments were served
        tx.execute("DELETE FROM attachment_refs")
        tx.execute("DELETE FROM server_meta WHERE key = 'attachment_refs'")
    again = District(db_url)
    try:
        assert refs(again) == {(digest, "reports", "r-old", "g1")}
    finally:
        again.close()


def test_a_record_referring_to_a_photo_not_yet_uploaded_syncs_and_reads_pending(district, make_device, inproc):
    a, b = tablet(make_device, "w1"), make_device("w2")
    data = photo(3, seed=11)
    digest = sha(data)
    answer = a.push("reports", "r1", report("g1", digest))
    assert answer["acked_seq"] == 1 and answer["applied"] == 1 and answer["rejections"] == []
    b.sync()  # the other tablet of the grid gets the report at once
    assert b.store.get("reports", "r1")["attachments"] == [digest]

    resp = get(inproc, b.identity, digest)
    assert resp.status == 404 and error_of(resp)["code"] == "attachment_pending"
    put(inproc, a.identity, digest, 0, data[:CHUNK_BYTES], len(data))
    assert error_of(get(inproc, b.identity, digest))["code"] == "attachment_pending"  # partial is not served
    upload(inproc, a.identity, data, start=CHUNK_BYTES)
    assert get(inproc, b.identity, digest).body == data


def test_a_revoked_device_may_only_finish_its_uploads(district, make_device, inproc):
    """In the final-push grace a revoked device still uploads the photos of what it pushed
    (protocol §3.4); it may not download anything any more."""
    a = tablet(make_device, "w1")
    digest = sha(b"x")
    a.push("reports", "r1", report("g1", digest))
    district.revoke(a.identity.device_id)
    assert status(inproc, a.identity, digest).status == 200
    assert put(inproc, a.identity, digest, 0, b"x", 1).status == 200
    resp = get(inproc, a.identity, digest)
    assert resp.status == 403 and error_of(resp)["code"] == "device_revoked"


# -- limits and malformed requests --------------------------------------------------------


def test_limits_and_malformed_requests(district, make_device, inproc):
    a = tablet(make_device, "w1")
    data = photo(2)
    digest = sha(data)
    a.push("reports", "r1", report("g1", digest))

    def code(resp: Response) -> tuple[int, str]:
        return resp.status, error_of(resp)["code"]

    assert code(put(inproc, a.identity, digest, 0, data[:10], MAX_ATTACHMENT_BYTES + 1)) == (413, "attachment_too_large")
    assert code(put(inproc, a.identity, digest, 0, b"\0" * (MAX_CHUNK_BYTES + 1), 20 * MAX_CHUNK_BYTES)) == (
        413, "chunk_too_large")
    for bad_hash in (digest.upper(), digest[:63], digest + "0", "g" * 64, "status"):
        assert code(put(inproc, a.identity, bad_hash, 0, data[:10], len(data))) == (400, "bad_request"), bad_hash
        assert code(get(inproc, a.identity, bad_hash)) == (400, "bad_request"), bad_hash
    for query in ("offset=-1", "offset=abc", "offset=", "", "offset=1e3", "offset=0&offset=0", "offset=%200"):
        assert code(put(inproc, a.identity, digest, 0, data[:10], len(data), query=query)) == (400, "bad_request"), query
    for size in (None, "-5", "12.0", "abc"):
        assert code(put(inproc, a.identity, digest, 0, data[:10], size)) == (400, "bad_request"), size
    assert code(put(inproc, a.identity, digest, 0, data[:10], 5)) == (400, "bad_request")  # past the size
    assert code(put(inproc, a.identity, digest, 0, data[:10], len(data), headers={"Content-Encoding": "gzip"})) == (
        415, "unsupported_encoding")
    for query in ("offset=x", "length=-1", "offset=1&offset=2"):
        assert code(get(inproc, a.identity, digest, query)) == (400, "bad_request"), query
    for body in ({"schema_version": 1}, {"schema_version": 1, "hashes": [digest.upper()]},
                 {"schema_version": 1, "hashes": digest}, {"schema_version": 1, "hashes": [digest] * 101},
                 {"hashes": [digest]}):
        assert code(call(inproc, a.identity, "/v1/attachments/status", body)) == (400, "bad_request"), body
    assert states(inproc, a.identity, digest)[0]["state"] == "missing"  # nothing above was kept

    # The announced size binds the upload in progress; the offset and the size header are signed.
    put(inproc, a.identity, digest, 0, data[:CHUNK_BYTES], len(data))
    err = error_of(resp := put(inproc, a.identity, digest, CHUNK_BYTES, data[CHUNK_BYTES:], len(data) + 1))
    assert resp.status == 409 and err["code"] == "size_mismatch" and err["size"] == len(data)
    assert err["received"] == CHUNK_BYTES
    upload(inproc, a.identity, data, start=CHUNK_BYTES)
    assert code(get(inproc, a.identity, digest, f"offset={len(data) + 1}")) == (400, "bad_request")


def test_the_signature_covers_the_offset_and_the_body(district, make_device, inproc):
    a = tablet(make_device, "w1")
    data = photo(2)
    digest = sha(data)
    a.push("reports", "r1", report("g1", digest))
    path = f"/v1/attachments/{digest}"
    headers = {SIZE: str(len(data)), **a.identity.sign("PUT", path, "offset=0", data[:CHUNK_BYTES])}
    moved = inproc.handle(WireRequest("PUT", path, f"offset={CHUNK_BYTES}", headers, data[:CHUNK_BYTES]))
    assert moved.status == 401 and error_of(moved)["code"] == "signature_invalid"
    headers = {SIZE: str(len(data)), **a.identity.sign("PUT", path, "offset=0", data[:CHUNK_BYTES])}
    swapped = inproc.handle(WireRequest("PUT", path, "offset=0", headers, data[CHUNK_BYTES:]))
    assert swapped.status == 401 and error_of(swapped)["code"] == "signature_invalid"
    assert states(inproc, a.identity, digest)[0]["state"] == "missing"


# -- housekeeping and configuration -------------------------------------------------------


def test_stale_partial_uploads_are_removed_on_a_later_upload(district, make_device, inproc, attachments_dir):
    a = tablet(make_device, "w1")
    old_data, fresh_data, new_data = photo(2, seed=20), photo(2, seed=21), photo(2, seed=22)
    for i, d in enumerate((old_data, fresh_data, new_data)):
        a.push("reports", f"r{i}", report("g1", sha(d)))
    put(inproc, a.identity, sha(old_data), 0, old_data[:CHUNK_BYTES], len(old_data))
    put(inproc, a.identity, sha(fresh_data), 0, fresh_data[:CHUNK_BYTES], len(fresh_data))
    eight_days_ago = time.time() - 8 * 24 * 3600
    for name in (f"{sha(old_data)}.part", f"{sha(old_data)}.size"):
        os.utime(attachments_dir / "partial" / name, (eight_days_ago, eight_days_ago))
    district._next_sweep = 0.0  # the sweep runs at most hourly per process; make this PUT the one
    put(inproc, a.identity, sha(new_data), 0, new_data[:CHUNK_BYTES], len(new_data))
    assert [s["state"] for s in states(inproc, a.identity, sha(old_data), sha(fresh_data), sha(new_data))] == [
        "missing", "partial", "partial"]
    assert not any(n.startswith(sha(old_data)) for n in stored(attachments_dir)["partial"])
    assert district.attachments.remove_stale() == 0


def test_where_attachments_are_kept(tmp_path, monkeypatch, db_url, backend):
    monkeypatch.delenv(ATTACHMENTS_ENV)
    d = District(db_url)
    try:
        assert isinstance(d.attachments, DirectoryStorage)
        if backend == "sqlite":
            assert d.attachments.root == Path(f"{tmp_path / 'district.db'}-attachments")
        else:
            assert d.attachments.root == Path("attachments").absolute()
        assert not d.attachments.root.exists() or backend != "sqlite"  # created on first use only
    finally:
        d.close()
    monkeypatch.setenv(ATTACHMENTS_ENV, str(tmp_path / "env-folder"))
    d = District(db_url)
    try:
        assert d.attachments.root == tmp_path / "env-folder"
    finally:
        d.close()
    d = District(db_url, attachments=tmp_path / "given")
    try:
        assert d.attachments.root == tmp_path / "given"
    finally:
        d.close()


def test_serve_keeps_attachments_in_the_folder_it_is_given(district, make_device, db_url, tmp_path):
    folder = tmp_path / "photos"
    port = _free_port()
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != ATTACHMENTS_ENV}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "server_stub.cli", "serve", "--db", db_url, "--port", str(port),
                                 "--attachments", str(folder)], env=env, stdout=out, stderr=out)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(f"{url}/v1/hello", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        a = tablet(make_device, "w1")
        data = photo(2)
        a.push("reports", "r1", report("g1", sha(data)))
        transport = RequestsTransport(url)
        assert upload(transport, a.identity, data)["state"] == "complete"
        transport.close()
        assert stored(folder) == {"complete": [sha(data)], "partial": []}
        assert f"attachments in {folder}" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(10)


def test_serve_refuses_a_folder_it_cannot_use(db_url, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    proc = subprocess.run([sys.executable, "-m", "server_stub.cli", "serve", "--db", db_url, "--attachments",
                           str(blocker / "photos")], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("Error: cannot use the attachments folder")


def test_openapi_describes_the_attachment_endpoints():
    doc = openapi_document()
    ops = doc["paths"]["/v1/attachments/{hash}"]
    assert set(ops) == {"get", "put"} and all(op["security"] for op in ops.values())
    assert set(ops["put"]["requestBody"]["content"]) == {"application/octet-stream"}
    assert {p["name"] for p in ops["put"]["parameters"]} == {"hash", "offset", SIZE}
    assert set(ops["get"]["responses"]["200"]["content"]) == {"application/octet-stream"}
    assert {"409", "413", "422"} <= set(ops["put"]["responses"]) and "404" in ops["get"]["responses"]
    assert doc["paths"]["/v1/attachments/status"]["post"]["security"]
