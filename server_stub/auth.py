"""Device identity on the server: enrollment codes, request signatures, nonces, revocation.

A device enrolls once with a one-time, short-lived code issued for a worker
and its Ed25519 public key.  Every later request carries the device id, a
timestamp, a random nonce and an Ed25519 signature over
:func:`fieldsync.protocol.canonical_request`.  Checks run in this order and
each failure has its own error code: unknown device, bad signature, stale
timestamp, replayed nonce, revoked device.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fieldsync.protocol import TIMESTAMP_WINDOW_MS, canonical_request, unb64

from . import audit
from .db import Database, Tx

__all__ = ["ApiError", "Device", "issue_code", "enroll", "verify_request", "scope_of",
           "CODE_TTL_S", "FINAL_PUSH_GRACE_MS", "ENROLL_ATTEMPTS", "ENROLL_WINDOW_S"]

CODE_TTL_S = 15 * 60
# A revoked device may still push (only push) for this long, so the work on it
# is not lost before the wipe; every other endpoint refuses it at once.
FINAL_PUSH_GRACE_MS = 7 * 24 * 3600 * 1000
ENROLL_ATTEMPTS = 10  # per source per window, successful or not
ENROLL_WINDOW_S = 10 * 60
_DEVICE_ID_RE = re.compile(r"d[0-9a-f]{16}")
_CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I/L: read aloud and typed on a tablet


class ApiError(Exception):
    """An error answer: HTTP ``status``, protocol ``code``, a clear ``message``."""

    def __init__(self, status: int, code: str, message: str, **extra: object) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra
        super().__init__(f"{status} {code}: {message}")


@dataclass(frozen=True)
class Device:
    id: str
    worker_id: str
    node_id: str
    revoked: bool = False
    wipe: bool = False

    def refuse_if_revoked(self) -> None:
        if self.revoked:
            raise ApiError(403, "device_revoked", "this device was revoked by the command centre", wipe=self.wipe)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _hash_code(code: str) -> str:
    normal = "".join(ch for ch in code.upper() if ch.isalnum())
    return hashlib.sha256(normal.encode()).hexdigest()


def issue_code(db: Database, worker_id: str, ttl_s: int = CODE_TTL_S, actor: str = "admin") -> tuple[str, int]:
    """A new one-time enrollment code for ``worker_id``; returns (code, expires_ms)."""
    raw = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(12))
    code = f"{raw[:4]}-{raw[4:8]}-{raw[8:]}"
    now = _now_ms()
    expires = now + ttl_s * 1000
    with db.transaction() as tx:
        if tx.one("SELECT 1 FROM workers WHERE id = ?", (worker_id,)) is None:
            raise ApiError(404, "worker_unknown", f"no worker {worker_id!r}")
        tx.execute("INSERT INTO enroll_codes (code_hash, worker_id, expires_ms, used_ms, created_ms) VALUES (?, ?, ?, NULL, ?)",
                   (_hash_code(code), worker_id, expires, now))
        audit.append(tx, actor, "enroll_code.issue", f"worker:{worker_id}", {"expires_ms": expires})
    return code, expires


def enroll(db: Database, code: str, public_key_b64: str, node_id: str, name: str,
           schema_version: int, source: str) -> tuple[Device, list[str]]:
    """Bind a new device key to the code's worker.  Failed attempts are rate-limited per ``source``."""
    try:
        key = unb64(public_key_b64, "public_key")
        Ed25519PublicKey.from_public_bytes(key)
    except Exception as exc:  # noqa: BLE001 - any malformed key is the caller's error
        raise ApiError(400, "bad_request", "public_key must be a base64 raw 32-byte Ed25519 public key") from exc
    now = _now_ms()
    limited: ApiError | None = None
    with db.transaction() as tx:
        tx.execute("DELETE FROM enroll_attempts WHERE at_ms < ?", (now - ENROLL_WINDOW_S * 1000,))
        (attempts,) = tx.one("SELECT count(*) FROM enroll_attempts WHERE source = ?", (source,)) or (0,)
        if int(attempts) >= ENROLL_ATTEMPTS:
            oldest = tx.one("SELECT min(at_ms) FROM enroll_attempts WHERE source = ?", (source,))
            retry = max(1, (int(oldest[0]) + ENROLL_WINDOW_S * 1000 - now) // 1000) if oldest else ENROLL_WINDOW_S
            audit.append(tx, f"source:{source}", "enroll.rate_limited", "-", {})
            limited = ApiError(429, "too_many_attempts",
                               f"too many enrollment attempts from this address; try again in {retry} s",
                               retry_after=retry)
        else:
            tx.execute("INSERT INTO enroll_attempts (source, at_ms) VALUES (?, ?)", (source, now))
    if limited is not None:
        raise limited
    # The attempt is recorded in its own transaction so a failure below still counts.
    with db.transaction() as tx:
        row = tx.one(f"SELECT worker_id, expires_ms, used_ms FROM enroll_codes WHERE code_hash = ?{tx.for_update()}",
                     (_hash_code(code),))
        if row is None or row[2] is not None:
            audit.append(tx, f"source:{source}", "enroll.refused", "-", {"reason": "invalid"})
            raise_after = ApiError(401, "enrollment_code_invalid", "this enrollment code is not valid or was already used")
        elif int(row[1]) < now:
            audit.append(tx, f"source:{source}", "enroll.refused", f"worker:{row[0]}", {"reason": "expired"})
            raise_after = ApiError(401, "enrollment_code_expired", "this enrollment code has expired; ask for a new one")
        elif tx.one("SELECT 1 FROM devices WHERE public_key = ?", (public_key_b64,)):
            raise_after = ApiError(409, "key_already_enrolled", "this device key is already enrolled")
        else:
            raise_after = None
            worker_id = str(row[0])
            device_id = "d" + secrets.token_hex(8)
            tx.execute("UPDATE enroll_codes SET used_ms = ? WHERE code_hash = ?", (now, _hash_code(code)))
            # Only failed attempts count: a training day enrolls dozens of tablets behind one NAT address.
            tx.execute("DELETE FROM enroll_attempts WHERE source = ? AND at_ms = ?", (source, now))
            tx.execute(
                "INSERT INTO devices (id, worker_id, public_key, node_id, name, schema_version, enrolled_ms, last_seq) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
                (device_id, worker_id, public_key_b64, node_id, name[:100], schema_version, now),
            )
            audit.append(tx, f"worker:{worker_id}", "device.enroll", f"device:{device_id}", {"source": source})
            grids = scope_of(tx, worker_id)
    if raise_after is not None:
        raise raise_after
    return Device(device_id, worker_id, node_id), grids


def scope_of(tx: Tx, worker_id: str) -> list[str]:
    """The grids a worker is assigned to: the one scope rule for reads and writes."""
    return [r[0] for r in tx.all("SELECT grid_id FROM assignments WHERE worker_id = ? ORDER BY grid_id", (worker_id,))]


def verify_request(db: Database, method: str, path: str, query: str, body: bytes, headers: dict[str, str],
                   now_ms: int | None = None) -> Device:
    """Authenticate a signed request or raise :class:`ApiError` naming what failed."""
    from fieldsync.protocol import H_DEVICE, H_NONCE, H_SIGNATURE, H_TIMESTAMP

    now = _now_ms() if now_ms is None else now_ms
    device_id = headers.get(H_DEVICE.lower())
    ts_text = headers.get(H_TIMESTAMP.lower())
    nonce = headers.get(H_NONCE.lower())
    sig_text = headers.get(H_SIGNATURE.lower())
    if not (device_id and ts_text and nonce and sig_text):
        raise ApiError(401, "auth_missing", "signed request headers are missing")
    if not ts_text.isdigit() or len(nonce) > 64 or len(device_id) > 64:
        raise ApiError(401, "auth_malformed", "signed request headers are malformed")
    timestamp = int(ts_text)
    # Failures are audited and committed before the error is raised.
    with db.transaction() as tx:
        outcome = _check_signed(tx, method, path, query, body, timestamp, nonce, sig_text, device_id, now)
    if isinstance(outcome, ApiError):
        raise outcome
    return outcome


def _check_signed(tx: Tx, method: str, path: str, query: str, body: bytes, timestamp: int, nonce: str,
                  sig_text: str, device_id: str, now: int) -> "Device | ApiError":
    row = tx.one("SELECT worker_id, public_key, node_id, revoked_ms, wipe FROM devices WHERE id = ?", (device_id,))
    signed_path = path
    path = path.replace("\x00", "\ufffd")  # as audited: a text column cannot hold NUL (PostgreSQL)
    if row is None:
        # The header is the caller's text: only something shaped like a device id goes in the log.
        shown = device_id if _DEVICE_ID_RE.fullmatch(device_id) else "?"
        audit.append(tx, f"device:{shown}", "auth.device_unknown", path[:120], {})
        return ApiError(401, "device_unknown", "this device is not enrolled here")
    worker_id, public_key, node_id, revoked_ms, wipe = row
    try:
        signature = unb64(sig_text, "signature")
        Ed25519PublicKey.from_public_bytes(unb64(public_key, "key")).verify(
            signature, canonical_request(method, signed_path, query, body, timestamp, nonce, device_id))
    except (InvalidSignature, Exception):  # noqa: BLE001 - every failure is a bad signature
        audit.append(tx, f"device:{device_id}", "auth.signature_invalid", path, {})
        return ApiError(401, "signature_invalid", "the request signature does not verify")
    if abs(now - timestamp) > TIMESTAMP_WINDOW_MS:
        return ApiError(401, "timestamp_stale",
                        f"request time is {(timestamp - now) // 1000} s off server time (window "
                        f"{TIMESTAMP_WINDOW_MS // 1000} s)", server_time_ms=now)
    tx.execute("INSERT INTO nonces (device_id, nonce, at_ms) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
               (device_id, nonce, now))
    if tx.rowcount != 1:
        audit.append(tx, f"device:{device_id}", "auth.nonce_replayed", path, {})
        return ApiError(401, "nonce_replayed", "this request was already received (replayed nonce)")
    if secrets.randbelow(100) == 0:
        tx.execute("DELETE FROM nonces WHERE at_ms < ?", (now - 2 * TIMESTAMP_WINDOW_MS,))
    revoked = revoked_ms is not None
    if revoked:
        if now - int(revoked_ms) > FINAL_PUSH_GRACE_MS:
            audit.append(tx, f"device:{device_id}", "auth.revoked_device", path, {})
            return ApiError(403, "device_revoked", "this device was revoked by the command centre", wipe=bool(wipe))
        audit.append(tx, f"device:{device_id}", "auth.revoked_device_contact", path, {})
    tx.execute("UPDATE devices SET last_seen_ms = ? WHERE id = ?", (now, device_id))
    return Device(device_id, str(worker_id), str(node_id), revoked, bool(wipe))
