"""The sync protocol's messages, parsed and built in one place.  No I/O.

Both the device (``fieldsync.sync``) and the district server (``server_stub``)
use these definitions, so they cannot disagree about a message.  Every parse
function validates its input completely and raises :class:`ProtocolError`
(device side) or ``ValueError`` subclasses the server turns into a 400; it
never returns half-checked data.  See docs/protocol.md for the prose spec.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping
from urllib.parse import parse_qsl, quote

from .clock import Stamp, is_stamp
from .errors import ProtocolError
from .merge import DELETED, FieldWrite

__all__ = [
    "PROTOCOL_VERSION",
    "MIN_SCHEMA_VERSION",
    "MAX_PUSH_CHANGES",
    "MAX_PULL_LIMIT",
    "MAX_BODY_BYTES",
    "TIMESTAMP_WINDOW_MS",
    "H_DEVICE",
    "H_TIMESTAMP",
    "H_NONCE",
    "H_SIGNATURE",
    "H_SCHEMA",
    "Change",
    "Rejection",
    "PushResponse",
    "PullResponse",
    "canonical_request",
    "body_hash",
    "record_digest",
    "fold_digests",
    "bucket_of",
    "N_BUCKETS",
    "parse_change",
    "parse_pulled",
    "PulledRecord",
    "parse_push_response",
    "parse_pull_response",
    "dumps",
]

PROTOCOL_VERSION = 1
MIN_SCHEMA_VERSION = 1
MAX_PUSH_CHANGES = 1000
MAX_PULL_LIMIT = 5000
DEFAULT_PULL_LIMIT = 2000
MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_ATTACHMENT_BYTES = 30 * 1024 * 1024
MAX_CHUNK_BYTES = 1024 * 1024
CHUNK_BYTES = 256 * 1024
TIMESTAMP_WINDOW_MS = 5 * 60 * 1000
N_BUCKETS = 64
DIGEST_BITS = 60

H_DEVICE = "X-Fieldsync-Device"
H_TIMESTAMP = "X-Fieldsync-Timestamp"
H_NONCE = "X-Fieldsync-Nonce"
H_SIGNATURE = "X-Fieldsync-Signature"
H_SCHEMA = "X-Fieldsync-Schema"

_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-")


def dumps(obj: Any) -> bytes:
    """The one JSON encoding used on the wire (UTF-8, compact)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _fail(message: str) -> ProtocolError:
    return ProtocolError(message)


def _ident(value: Any, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 64 or not set(value) <= _ID_CHARS:
        raise _fail(f"{what} must be an id of 1-64 characters [A-Za-z0-9_.:-]")
    return value


def _int(value: Any, what: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(f"{what} must be an integer >= {minimum}")
    return value


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(f"{what} must be an object")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(f"{what} must be a list")
    return value


# -- request signing ---------------------------------------------------------

def body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def canonical_query(query: str) -> str:
    """Query parameters sorted by name then value, percent-encoded the same way on both sides."""
    pairs = sorted(parse_qsl(query, keep_blank_values=True))
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs)


def canonical_request(method: str, path: str, query: str, body: bytes, timestamp_ms: int, nonce: str, device_id: str) -> bytes:
    """The exact bytes a device signs with its Ed25519 key for one request."""
    return "\n".join([
        f"FIELDSYNC-V{PROTOCOL_VERSION}",
        method.upper(),
        path,
        canonical_query(query),
        body_hash(body),
        str(timestamp_ms),
        nonce,
        device_id,
    ]).encode("utf-8")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise _fail(f"{what} must be base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as exc:
        raise _fail(f"{what} is not valid base64") from exc


# -- integrity digests ----------------------------------------------------------

def record_digest(collection: str, rid: str, stamps: Mapping[str, str]) -> int:
    """A 60-bit digest of one record's version: its fields and their stamps (no values).

    The grid checksum is the XOR of the digests of its records, so the server
    can keep it up to date in O(1) per change and a device can compute the
    same from the stamps it holds.
    """
    text = "\x00".join([collection, rid, *(f"{name}={stamps[name]}" for name in sorted(stamps))]) + "\x00"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> (64 - DIGEST_BITS)


def fold_digests(digests: Iterable[int]) -> int:
    out = 0
    for d in digests:
        out ^= d
    return out


def bucket_of(collection: str, rid: str) -> int:
    """The repair bucket (0..N_BUCKETS-1) a record belongs to."""
    return hashlib.sha256(f"{collection}\x00{rid}".encode()).digest()[0] % N_BUCKETS


# -- messages -------------------------------------------------------------------

def _check_writes(state: Any, where: str) -> dict[str, list[Any]]:
    """Check a map field -> [value, stamp, base] cheaply (no objects built per field)."""
    if not isinstance(state, dict) or not state:
        raise _fail(f"{where}: fields must be a non-empty object")
    checked: set[str] = set()  # stamps seen well-formed (the fields of one write share a stamp)
    for name, w in state.items():
        if not name or len(name) > 64 or (name[0] == "_" and name != DELETED) or name == "id" or "\x00" in name:
            raise _fail(f"{where}: bad field name {name!r}")
        if type(w) is not list or len(w) != 3 or type(w[1]) is not str or (w[2] is not None and type(w[2]) is not str):
            raise _fail(f"{where}.{name}: a field write is [value, stamp, base]")
        for stamp in (w[1], w[2]):
            if stamp is not None and stamp not in checked:
                if not is_stamp(stamp):
                    raise _fail(f"{where}.{name}: a field write is [value, stamp, base]")
                checked.add(stamp)
    return state


@dataclass(frozen=True)
class Change:
    """A set of field writes to one record, as pushed: the outbox entry ``seq``.

    ``fields`` maps field -> ``[value, stamp, base]`` as sent (already checked).
    """

    collection: str
    id: str
    grid: str
    fields: dict[str, list[Any]]
    seq: int


def parse_change(data: Any) -> Change:
    """Validate one pushed change (the server's side of /v1/push)."""
    d = _obj(data, "change")
    collection = _ident(d.get("collection"), "change.collection")
    rid = _ident(d.get("id"), "change.id")
    grid = _ident(d.get("grid"), "change.grid")
    fields = _check_writes(d.get("fields"), f"change {collection}/{rid}")
    return Change(collection, rid, grid, fields, _int(d.get("seq"), "change.seq", 1))


@dataclass(frozen=True)
class PulledRecord:
    """The server's whole current version of one record, as pulled (or repaired).

    ``state`` maps field -> ``[value, stamp, base]`` exactly as sent (already
    checked: stamps well-formed, no reserved names); ``None`` means the record
    left this grid (moved away or out of scope) and should be dropped.
    """

    collection: str
    id: str
    grid: str
    server_seq: int
    state: dict[str, list[Any]] | None

    @property
    def left(self) -> bool:
        return self.state is None

    def stamps(self) -> dict[str, str]:
        return {k: w[1] for k, w in (self.state or {}).items()}


def parse_pulled(data: Any) -> PulledRecord:
    """Validate one pulled record without building per-field objects (this is the hot path)."""
    d = _obj(data, "change")
    collection = _ident(d.get("collection"), "change.collection")
    rid = _ident(d.get("id"), "change.id")
    grid = _ident(d.get("grid"), "change.grid")
    server_seq = _int(d.get("server_seq"), "change.server_seq", 1)
    if d.get("left") is True:
        return PulledRecord(collection, rid, grid, server_seq, None)
    state = _check_writes(d.get("fields"), f"change {collection}/{rid}")
    return PulledRecord(collection, rid, grid, server_seq, state)


@dataclass(frozen=True)
class Rejection:
    """A pushed change the server refused; the seq still advanced."""

    seq: int
    collection: str
    id: str
    code: str
    message: str
    field: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"seq": self.seq, "collection": self.collection, "id": self.id,
                "code": self.code, "message": self.message, "field": self.field}


def _parse_rejection(data: Any) -> Rejection:
    d = _obj(data, "rejection")
    fld = d.get("field")
    if fld is not None and not isinstance(fld, str):
        raise _fail("rejection.field must be text or null")
    code, message = d.get("code"), d.get("message")
    if not isinstance(code, str) or not isinstance(message, str):
        raise _fail("rejection.code and rejection.message must be text")
    return Rejection(_int(d.get("seq"), "rejection.seq", 1), _ident(d.get("collection"), "rejection.collection"),
                     _ident(d.get("id"), "rejection.id"), code, message, fld)


@dataclass(frozen=True)
class PushResponse:
    acked_seq: int
    rejections: list[Rejection]
    server_time_ms: int
    more_to_pull: bool


def parse_push_response(data: Any, sent_upto: int) -> PushResponse:
    d = _obj(data, "push response")
    acked = _int(d.get("acked_seq"), "acked_seq")
    if acked > sent_upto:
        raise _fail(f"server acknowledged seq {acked} but only {sent_upto} was sent")
    rejections = [_parse_rejection(r) for r in _list(d.get("rejections", []), "rejections")]
    if any(r.seq > acked for r in rejections):
        raise _fail("a rejection names a seq beyond the acknowledged one")
    more = d.get("more_to_pull", False)
    if not isinstance(more, bool):
        raise _fail("more_to_pull must be true or false")
    return PushResponse(acked, rejections, _int(d.get("server_time_ms"), "server_time_ms"), more)


@dataclass(frozen=True)
class PullResponse:
    changes: list[PulledRecord]
    cursors: dict[str, int]
    checksums: dict[str, int]  # only for grids this page caught up on
    grids: list[str]  # the device's scope now
    more: bool
    server_time_ms: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def parse_pull_response(data: Any, sent_cursors: Mapping[str, int], limit: int) -> PullResponse:
    """Validate a pull page against what was asked; hostile answers raise ProtocolError."""
    d = _obj(data, "pull response")
    grids = [_ident(g, "grids[]") for g in _list(d.get("grids"), "grids")]
    scope = set(grids)
    raw_changes = _list(d.get("changes"), "changes")
    if len(raw_changes) > limit:
        raise _fail(f"the server sent {len(raw_changes)} changes for a page of at most {limit}")
    changes = [parse_pulled(c) for c in raw_changes]
    cursors = {_ident(g, "cursors key"): _int(v, f"cursors.{g}") for g, v in _obj(d.get("cursors"), "cursors").items()}
    # A grid answered as a snapshot (its cursor was below the compaction mark, §11.5) starts again from 0.
    snapshot = {_ident(g, "snapshot[]") for g in _list(d.get("snapshot", []), "snapshot")}
    if not snapshot <= scope:
        raise _fail("a snapshot for a grid which is not in this device's scope")
    start = {g: (0 if g in snapshot else v) for g, v in sent_cursors.items()}
    for g, v in cursors.items():
        if g not in scope:
            raise _fail(f"cursor for grid {g!r} which is not in this device's scope")
        if v < start.get(g, 0):
            raise _fail(f"cursor for grid {g!r} went backwards ({sent_cursors.get(g, 0)} -> {v})")
    for c in changes:
        if c.grid not in scope:
            raise _fail(f"a change for grid {c.grid!r} which is not in this device's scope")
        if not start.get(c.grid, 0) < c.server_seq <= cursors.get(c.grid, -1):
            raise _fail(f"change {c.collection}/{c.id} has server_seq {c.server_seq} outside this page")
    checksums = {}
    for g, v in _obj(d.get("checksums", {}), "checksums").items():
        if g not in scope:
            raise _fail(f"checksum for grid {g!r} which is not in this device's scope")
        checksums[g] = _int(v, f"checksums.{g}")
    more = d.get("more")
    if not isinstance(more, bool):
        raise _fail("more must be true or false")
    return PullResponse(changes, cursors, checksums, grids, more, _int(d.get("server_time_ms", 0), "server_time_ms"))


def stamps_of(fields: Mapping[str, FieldWrite]) -> dict[str, str]:
    return {k: w.stamp.encode() for k, w in fields.items()}


def parse_stamp(text: Any, what: str) -> Stamp:
    try:
        return Stamp.decode(text)
    except ValueError as exc:
        raise _fail(f"{what}: {exc}") from exc
