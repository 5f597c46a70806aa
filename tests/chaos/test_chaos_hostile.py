"""Hostile or broken server answers never change the device store (DESIGN §7, bad input).

A transport between the device and the real (in-process) server rewrites one answer: cut JSON,
wrong types, a page larger than asked, a cursor that goes backwards, records of a grid the
device does not hold, a repair answer with records outside the asked buckets, impossible
acknowledgements.  The device must raise ProtocolError naming the problem, and its store must be
exactly as it was when the hostile exchange began (every collection, cursors, scope, outbox,
rejections, checksums), pass ``PRAGMA integrity_check``, reopen, and sync honestly afterwards.
A fake HTTP server covers what only exists on the wire (corrupt gzip, a gzip bomb, a body
shorter than its Content-Length).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Callable

import pytest
from chaos_faults import LoopTransport
from chaos_servers import RawServer
from serverkit import PIN, assert_matches_server, household

from fieldsync import KdfParams, Store
from fieldsync.errors import NetworkError, ProtocolError
from fieldsync.protocol import N_BUCKETS, bucket_of
from fieldsync.sync import SyncClient, enroll
from fieldsync.transport import Request, RequestsTransport, Response
from server_stub.district import District
from server_stub.replica import Actor

PAGE = 5


@pytest.fixture
def backend() -> str:
    """The server only supplies the honest answers that get rewritten: one backend is enough."""
    return "sqlite"

Rewrite = Callable[[Any, Any], Any]  # (answer JSON, request JSON) -> hostile answer JSON (or bytes)


def snapshot(store: Store) -> dict[str, Any]:
    """Everything a hostile answer could damage, in comparable form."""
    return {
        "records": {c: store.list(c) for c in store.registry.names()},
        "cursors": store.cursors(),
        "grids": store.grids(),
        "outbox": [(e.seq, e.collection, e.id, {k: w.to_wire() for k, w in e.fields.items()})
                   for e in store.outbox(limit=10**6)],
        "rejections": [(r.seq, r.code, r.values) for r in store.rejections(include_dismissed=True)],
        "checksums": {g: store.grid_checksum(g) for g in store.grids()},
    }


class Hostile:
    """Rewrites the first answer on each of ``rewrites``' paths; snapshots the store just before
    the first of them is sent (what the store held when the hostile exchange began)."""

    def __init__(self, inner: LoopTransport, rewrites: dict[str, Rewrite], store: Store) -> None:
        self.inner = inner
        self.rewrites = dict(rewrites)
        self.store = store
        self.before: dict[str, Any] | None = None
        self.fired: list[str] = []

    def handle(self, request: Request) -> Response:
        rewrite = self.rewrites.pop(request.path, None)
        if rewrite is None:
            return self.inner.handle(request)
        if self.before is None:
            self.before = snapshot(self.store)
        self.fired.append(request.path)
        response = self.inner.handle(request)
        body = gzip.decompress(request.body) if request.headers.get("Content-Encoding") == "gzip" else request.body
        out = rewrite(json.loads(response.body), json.loads(body or b"{}"))
        raw = out if isinstance(out, bytes) else json.dumps(out, ensure_ascii=False).encode()
        return Response(200, {"content-type": "application/json"}, raw)


@pytest.fixture
def tablet(district: District, inproc: LoopTransport, tmp_path: Path) -> tuple[Store, str]:
    """w1's tablet (grid g1), synced, holding records; the server then has 8 more households."""
    store = Store.create(tmp_path / "tablet.fsdb", PIN, kdf=KdfParams(n=2**10))
    enroll(store, "http://in-process", district.issue_code("w1")[0], transport=inproc)
    for n in range(4):
        store.put("households", household("g1", n))
    SyncClient(store, inproc, retries=0, page_limit=PAGE).sync()
    district.write_many(Actor("cc", "command"), "households",
                        [{"id": f"h-new-{n}", **household("g1", 100 + n)} for n in range(8)])
    return store, str(tmp_path / "tablet.fsdb")


def _first_change(data: dict[str, Any]) -> dict[str, Any]:
    assert data["changes"], "the honest page was expected to carry changes"
    return data["changes"][0]  # type: ignore[no-any-return]


def _set(path: list[Any], value: Any) -> Rewrite:
    def rewrite(data: Any, sent: Any) -> Any:
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return data
    return rewrite


def _huge(data: Any, sent: Any) -> Any:
    data["changes"] = data["changes"] * 3
    return data


def _backwards(data: Any, sent: Any) -> Any:
    data["cursors"]["g1"] = sent["cursors"]["g1"] - 1
    return data


def _foreign_grid(data: Any, sent: Any) -> Any:
    data["changes"][-1] = dict(_first_change(data), grid="g9", id="h-stolen")
    return data


def _seq_outside(data: Any, sent: Any) -> Any:
    _first_change(data)["server_seq"] = data["cursors"]["g1"] + 100
    return data


def _bad_stamp(data: Any, sent: Any) -> Any:
    fields = _first_change(data)["fields"]
    name = sorted(fields)[0]
    fields[name] = [fields[name][0], "yesterday", None]
    return data


def _not_a_triple(data: Any, sent: Any) -> Any:
    fields = _first_change(data)["fields"]
    name = sorted(fields)[0]
    fields[name] = [fields[name][0]]
    return data


def _reserved(data: Any, sent: Any) -> Any:
    fields = _first_change(data)["fields"]
    fields["_owner"] = ["x", next(iter(fields.values()))[1], None]
    return data


def _bad_id(data: Any, sent: Any) -> Any:
    _first_change(data)["id"] = "../../etc/passwd"
    return data


PULL_CASES: dict[str, tuple[Rewrite, str]] = {
    "truncated JSON": (lambda data, sent: json.dumps(data).encode()[:200], "not valid JSON"),
    "captive portal page": (lambda data, sent: b"<html><body>Login to hotel wifi</body></html>", "not valid JSON"),
    "answer is a list": (lambda data, sent: [data], "must be an object"),
    "changes not a list": (_set(["changes"], {"0": "x"}), "changes must be a list"),
    "cursor is text": (lambda data, sent: _set(["cursors", "g1"], str(data["cursors"]["g1"]))(data, sent), "cursors.g1"),
    "cursor negative": (_set(["cursors", "g1"], -5), "cursors.g1"),
    "more is text": (_set(["more"], "yes"), "more must be true or false"),
    "grids not a list": (_set(["grids"], "g1"), "grids must be a list"),
    "huge page": (_huge, "for a page of at most"),
    "cursor goes backwards": (_backwards, "went backwards"),
    "records of a grid not held": (_foreign_grid, "not in this device's scope"),
    "checksum of a grid not held": (_set(["checksums", "g9"], 1), "not in this device's scope"),
    "server_seq outside the page": (_seq_outside, "outside this page"),
    "malformed stamp": (_bad_stamp, "stamp"),
    "field write not a triple": (_not_a_triple, "[value, stamp, base]"),
    "reserved field name": (_reserved, "_owner"),
    "record id not an id": (_bad_id, "must be an id"),
}


def _expect_refusal(store: Store, path: str, hostile: Hostile, client: SyncClient, needle: str,
                    error: type[Exception] = ProtocolError) -> None:
    with pytest.raises(error) as info:
        client.sync()
    assert hostile.fired, "the hostile answer was never sent"
    message = str(info.value)
    print(f"refused: {type(info.value).__name__}: {message}")
    assert needle.lower() in message.lower(), f"unclear message: {message!r}"
    assert hostile.before is not None
    assert snapshot(store) == hostile.before, "the hostile answer changed the store"
    assert store.integrity_check() == "ok"
    store.close()
    again = Store.open(path, PIN)
    try:
        assert snapshot(again) == hostile.before, "the store changed across a reopen"
    finally:
        again.close()


def _honest_sync_after(path: str, inproc: LoopTransport, district: District) -> None:
    store = Store.open(path, PIN)
    try:
        SyncClient(store, inproc, retries=0).sync()
        assert_matches_server(store, district)
        assert store.outbox_size() == 0
    finally:
        store.close()


@pytest.mark.parametrize("case", sorted(PULL_CASES))
def test_hostile_pull_answer_changes_nothing(case: str, tablet: tuple[Store, str], inproc: LoopTransport,
                                            district: District) -> None:
    store, path = tablet
    rewrite, needle = PULL_CASES[case]
    hostile = Hostile(inproc, {"/v1/pull": rewrite}, store)
    client = SyncClient(store, hostile, retries=0, page_limit=PAGE)
    _expect_refusal(store, path, hostile, client, needle)
    _honest_sync_after(path, inproc, district)


def _push_case(name: str) -> Rewrite:
    def rewrite(data: Any, sent: Any) -> Any:
        seqs = [c["seq"] for c in sent["changes"]]
        if name == "ack beyond what was sent":
            data["acked_seq"] = seqs[-1] + 10
        elif name == "ack before what was sent":
            data["acked_seq"] = seqs[0] - 1
        elif name == "rejection beyond the ack":
            data["acked_seq"] = seqs[0]
            data["rejections"] = [{"seq": seqs[-1], "collection": "households", "id": "x", "code": "out_of_scope",
                                   "message": "no", "field": None}]
        elif name == "ack is text":
            data["acked_seq"] = str(seqs[-1])
        elif name == "truncated":
            return json.dumps(data).encode()[:15]
        return data
    return rewrite


PUSH_CASES = {"ack beyond what was sent": "acknowledged seq", "ack before what was sent": "acknowledged nothing",
              "rejection beyond the ack": "rejection", "ack is text": "acked_seq", "truncated": "not valid JSON"}


@pytest.mark.parametrize("case", sorted(PUSH_CASES))
def test_hostile_push_answer_keeps_the_outbox(case: str, tablet: tuple[Store, str], inproc: LoopTransport,
                                              district: District) -> None:
    store, path = tablet
    for n in range(3):
        store.put("households", household("g1", 200 + n))
    hostile = Hostile(inproc, {"/v1/push": _push_case(case)}, store)
    client = SyncClient(store, hostile, retries=0, push_batch=2)
    _expect_refusal(store, path, hostile, client, PUSH_CASES[case])
    _honest_sync_after(path, inproc, district)


def _wrong_checksum(data: Any, sent: Any) -> Any:
    data["checksums"]["g1"] = (data["checksums"].get("g1", 0) ^ 1)
    return data


def _buckets_disagree(data: Any, sent: Any) -> Any:
    data["buckets"][7] ^= 1
    return data


def _repair_case(name: str, store: Store) -> Rewrite:
    def rewrite(data: Any, sent: Any) -> Any:
        asked = set(sent["buckets"])
        theirs = [r for r in store.list("households") if bucket_of("households", r["id"]) not in asked]
        outside = {"collection": "households", "id": theirs[0]["id"], "grid": "g1", "server_seq": 1,
                   "fields": {"address": ["伪造", "01a2212f375e-000000-nfake", None],
                              "grid_id": ["g1", "01a2212f375e-000000-nfake", None]}}
        if name == "record outside the asked buckets":
            data["records"].append(outside)
        elif name == "record of another grid":
            inside = [r for r in range(1000) if bucket_of("households", f"h-in-{r}") in asked][0]
            data["records"].append(dict(outside, id=f"h-in-{inside}", grid="g2"))
        elif name == "departure in a repair":
            inside = [r for r in range(1000) if bucket_of("households", f"h-in-{r}") in asked][0]
            data["records"].append({"collection": "households", "id": f"h-in-{inside}", "grid": "g1",
                                    "server_seq": 1, "left": True})
        elif name == "records not a list":
            data["records"] = {"a": 1}
        return data
    return rewrite


REPAIR_CASES = {"record outside the asked buckets": "outside the asked buckets",
                "record of another grid": "outside the asked buckets",
                "departure in a repair": "outside the asked buckets",
                "records not a list": "records"}


@pytest.mark.parametrize("case", sorted(REPAIR_CASES))
def test_hostile_repair_answer_changes_nothing(case: str, tablet: tuple[Store, str], inproc: LoopTransport,
                                              district: District) -> None:
    store, path = tablet
    SyncClient(store, inproc, retries=0).sync()  # caught up: the next pull page is empty
    rewrites = {"/v1/pull": _wrong_checksum, "/v1/buckets": _buckets_disagree,
                "/v1/repair": _repair_case(case, store)}
    hostile = Hostile(inproc, rewrites, store)
    _expect_refusal(store, path, hostile, SyncClient(store, hostile, retries=0), REPAIR_CASES[case])
    assert hostile.fired == ["/v1/pull", "/v1/buckets", "/v1/repair"]
    _honest_sync_after(path, inproc, district)


def test_bucket_list_of_the_wrong_length_changes_nothing(tablet: tuple[Store, str], inproc: LoopTransport,
                                                         district: District) -> None:
    store, path = tablet
    SyncClient(store, inproc, retries=0).sync()
    hostile = Hostile(inproc, {"/v1/pull": _wrong_checksum,
                               "/v1/buckets": _set(["buckets"], list(range(N_BUCKETS - 1)))}, store)
    _expect_refusal(store, path, hostile, SyncClient(store, hostile, retries=0), "bucket digests")
    _honest_sync_after(path, inproc, district)


# -- on the wire -------------------------------------------------------------------------

def _http(body: bytes, *, length: int | None = None, gz: bool = False) -> bytes:
    head = ["HTTP/1.1 200 OK", "Content-Type: application/json", "Connection: close",
            f"Content-Length: {len(body) if length is None else length}"]
    if gz:
        head.append("Content-Encoding: gzip")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


WIRE_CASES = {
    "corrupt gzip": (_http(b"\x1f\x8b\x08\x00garbage-not-deflate", gz=True), "corrupt"),
    "gzip bomb": (_http(gzip.compress(b" " * (3 * 1024 * 1024)), gz=True), "larger than"),
    "body shorter than Content-Length": (_http(b'{"cursors":{}', length=400), "could not reach"),
}


@pytest.mark.parametrize("case", sorted(WIRE_CASES))
def test_broken_answer_on_the_wire_changes_nothing(case: str, tablet: tuple[Store, str]) -> None:
    store, path = tablet
    answer, needle = WIRE_CASES[case]
    server = RawServer(answer)
    try:
        before = snapshot(store)
        client = SyncClient(store, RequestsTransport(server.url, max_response_bytes=1024 * 1024), retries=1,
                            sleep=lambda s: None)
        with pytest.raises(NetworkError) as info:
            client.sync()
        print(f"refused: {info.value}")
        assert needle in str(info.value)
        assert server.requests == 2, "a network failure is retried"
        assert snapshot(store) == before
        assert store.integrity_check() == "ok"
    finally:
        server.close()
