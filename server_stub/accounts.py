"""Console accounts: passwords of command-centre and department staff, and sign-in sessions.

Passwords are stored as ``scrypt$N$r$p$salt$hash`` (``hashlib.scrypt``, N=2^14, r=8, p=1, a
random 16-byte salt, a 32-byte key) in ``workers.password_hash``; only staff (roles ``command``
and ``department``) may sign in to the console.  A session id is 32 random bytes; the server
keeps only its SHA-256, so a copy of the database cannot be used to take over a session.  Each
session has its own CSRF token and an absolute expiry.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from . import audit
from .auth import ApiError
from .db import Database

__all__ = ["STAFF_ROLES", "Staff", "Session", "hash_password", "check_password", "set_password", "sign_in",
           "open_session", "session_of", "close_session", "SESSION_TTL_S", "set_demo_passwords"]

STAFF_ROLES = ("command", "department")
SESSION_TTL_S = 8 * 3600  # one working day
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MIN_PASSWORD = 8
MAX_FAILURES, FAILURE_WINDOW_MS = 10, 15 * 60 * 1000


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, salt: bytes | None = None) -> str:
    """The stored form of ``password`` (a fresh random salt unless one is given)."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def check_password(password: str, stored: str | None) -> bool:
    """True when ``password`` matches ``stored``; False for a missing or malformed hash."""
    try:
        scheme, n, r, p, salt, key = (stored or "").split("$")
        if scheme != "scrypt":
            return False
        want = base64.b64decode(key)
        got = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(want), maxmem=256 * 1024 * 1024)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


@dataclass(frozen=True)
class Staff:
    """A signed-in console user: command centre (``command``) or a department (``department``)."""

    id: str
    name: str
    role: str
    department: str | None


@dataclass(frozen=True)
class Session:
    staff: Staff
    csrf: str
    expires_ms: int


def set_password(db: Database, worker_id: str, password: str, actor: str = "admin") -> None:
    """Set a staff member's console password.  Raises ApiError for unknown users, non-staff, short passwords."""
    if len(password) < MIN_PASSWORD:
        raise ApiError(400, "password_too_short", f"a password needs at least {MIN_PASSWORD} characters")
    stored = hash_password(password)
    with db.transaction() as tx:
        row = tx.one("SELECT role FROM workers WHERE id = ?", (worker_id,))
        if row is None:
            raise ApiError(404, "worker_unknown", f"no user {worker_id!r}")
        if row[0] not in STAFF_ROLES:
            raise ApiError(400, "not_staff", f"{worker_id!r} is a {row[0]}; only command and department staff "
                                             "sign in to the console")
        tx.execute("UPDATE workers SET password_hash = ? WHERE id = ?", (stored, worker_id))
        tx.execute("DELETE FROM console_sessions WHERE worker_id = ?", (worker_id,))
        audit.append(tx, actor, "console.password_set", f"worker:{worker_id}", {})


def sign_in(db: Database, worker_id: str, password: str) -> Staff | None:
    """The staff member if the password is right, else None (audited; throttled after repeated failures)."""
    worker_id = worker_id.strip()[:64]
    now = _now_ms()
    with db.transaction() as tx:
        failures = tx.one("SELECT COUNT(*) FROM signin_failures WHERE worker_id = ? AND at_ms > ?",
                          (worker_id, now - FAILURE_WINDOW_MS))
        row = tx.one("SELECT id, name, role, department, password_hash FROM workers WHERE id = ?", (worker_id,))
    throttled = failures is not None and int(failures[0]) >= MAX_FAILURES
    # The hash runs even for an unknown user, so timing does not tell who exists.
    ok = check_password(password, row[4] if row and row[4] else _dummy_hash())
    good = ok and row is not None and row[2] in STAFF_ROLES and not throttled
    with db.transaction() as tx:
        if good:
            tx.execute("DELETE FROM signin_failures WHERE worker_id = ? OR at_ms < ?", (worker_id, now - FAILURE_WINDOW_MS))
            audit.append(tx, f"console:{worker_id}", "console.sign_in", f"worker:{worker_id}", {})
        else:
            tx.execute("INSERT INTO signin_failures (worker_id, at_ms) VALUES (?, ?)", (worker_id, now))
            # The typed user name is kept only when it is a real id: a password or a person's name typed
            # into the wrong box must not end up in the audit log.
            who = f"worker:{worker_id}" if row is not None else "worker:?"
            audit.append(tx, "console", "console.sign_in_failed", who, {"throttled": throttled})
    if not good:
        return None
    assert row is not None
    return Staff(row[0], row[1], row[2], row[3])


@functools.lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return hash_password(secrets.token_urlsafe(12))


def _sid_hash(sid: str) -> str:
    return hashlib.sha256(sid.encode("ascii", "replace")).hexdigest()


def open_session(db: Database, staff: Staff, ttl_s: int = SESSION_TTL_S) -> tuple[str, Session]:
    """A new session for ``staff``: (the id for the cookie, the session)."""
    sid = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(24)
    now = _now_ms()
    expires = now + ttl_s * 1000
    with db.transaction() as tx:
        tx.execute("DELETE FROM console_sessions WHERE expires_ms < ?", (now,))
        tx.execute("INSERT INTO console_sessions (id_hash, worker_id, csrf, created_ms, expires_ms) VALUES (?, ?, ?, ?, ?)",
                   (_sid_hash(sid), staff.id, csrf, now, expires))
    return sid, Session(staff, csrf, expires)


def session_of(db: Database, sid: str | None) -> Session | None:
    """The live session for a cookie value, or None (unknown, expired, or the user is no longer staff)."""
    if not sid or len(sid) > 100:
        return None
    with db.transaction() as tx:
        row = tx.one("SELECT s.csrf, s.expires_ms, w.id, w.name, w.role, w.department FROM console_sessions s "
                     "JOIN workers w ON w.id = s.worker_id WHERE s.id_hash = ?", (_sid_hash(sid),))
    if row is None or int(row[1]) < _now_ms() or row[4] not in STAFF_ROLES:
        return None
    return Session(Staff(row[2], row[3], row[4], row[5]), row[0], int(row[1]))


def close_session(db: Database, sid: str | None) -> None:
    if not sid:
        return
    with db.transaction() as tx:
        row = tx.one("SELECT worker_id FROM console_sessions WHERE id_hash = ?", (_sid_hash(sid),))
        tx.execute("DELETE FROM console_sessions WHERE id_hash = ?", (_sid_hash(sid),))
        if row is not None:
            audit.append(tx, f"console:{row[0]}", "console.sign_out", f"worker:{row[0]}", {})


def set_demo_passwords(db: Database, staff_ids: list[str]) -> list[tuple[str, str]]:
    """Give each of ``staff_ids`` a fresh random password (for ``init-demo``); returns (id, password)."""
    out = []
    for sid in staff_ids:
        password = "demo-" + secrets.token_urlsafe(6).replace("-", "x").replace("_", "y")
        set_password(db, sid, password, actor="init-demo")
        out.append((sid, password))
    return out
