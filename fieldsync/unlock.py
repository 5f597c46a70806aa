"""PIN unlock, wrong-PIN delay and crypto-erase for a store's data key.

The state lives in the store's ``meta`` table: the scrypt salt and cost, the
data key wrapped by the PIN-derived key, the count of consecutive wrong PINs
and the time before which no new attempt is allowed.  After
:data:`MAX_FAILURES` wrong PINs in a row the wrapped key is destroyed: the
data is unreadable for ever (crypto-erase).  ``now`` is injectable so tests
need not wait.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from typing import Callable

from . import crypto
from .errors import AuthError, PinLockedError, StoreErasedError, WrongPinError

__all__ = ["MAX_FAILURES", "delay_after", "PinGuard"]

MAX_FAILURES = 10
_DELAYS = {4: 30, 5: 60, 6: 120, 7: 300, 8: 600, 9: 1800}
_WRAP_CONTEXT = b"dek-v1"


def delay_after(failures: int) -> int:
    """Seconds to wait after ``failures`` consecutive wrong PINs."""
    return _DELAYS.get(failures, 0)


def _check_pin_text(pin: str) -> None:
    if not isinstance(pin, str) or len(pin) < 4:
        raise AuthError("the PIN must have at least 4 characters")


class PinGuard:
    """Reads and writes the key material in ``meta``; one per open store."""

    def __init__(self, conn: sqlite3.Connection, now: Callable[[], float] = time.time) -> None:
        self._conn = conn
        self._now = now

    def _get(self, key: str) -> bytes | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set(self, key: str, value: bytes | str | int | float | None) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def initialise(self, pin: str, params: crypto.KdfParams) -> bytes:
        """Create a new data key wrapped by ``pin``; returns the data key."""
        _check_pin_text(pin)
        dek = os.urandom(crypto.KEY_SIZE)
        self._write_wrap(pin, dek, params)
        self._set("failed_pins", 0)
        self._set("locked_until", 0.0)
        return dek

    def _write_wrap(self, pin: str, dek: bytes, params: crypto.KdfParams) -> None:
        salt = os.urandom(16)
        kek = crypto.derive_kek(pin, salt, params)
        self._set("kdf", json.dumps({"name": "scrypt", **params.to_dict()}))
        self._set("salt", salt)
        self._set("wrapped_dek", crypto.wrap_key(kek, dek, _WRAP_CONTEXT))

    def params(self) -> crypto.KdfParams:
        raw = self._get("kdf")
        data = json.loads(raw) if raw else {}
        return crypto.KdfParams(n=int(data["n"]), r=int(data["r"]), p=int(data["p"]))

    def erased(self) -> bool:
        return self._get("wrapped_dek") is None

    def unlock(self, pin: str) -> bytes:
        """The data key for ``pin``.

        Raises :class:`PinLockedError` while a delay runs, :class:`WrongPinError`
        for a wrong PIN (after recording the failure; the caller must commit),
        and :class:`StoreErasedError` once the key is gone.
        """
        wrapped = self._get("wrapped_dek")
        if wrapped is None:
            raise StoreErasedError("this store was erased; its data cannot be recovered")
        wait = float(self._get("locked_until") or 0) - self._now()
        if wait > 0:
            raise PinLockedError(wait)
        salt = self._get("salt")
        assert salt is not None
        kek = crypto.derive_kek(str(pin), salt, self.params())
        dek = crypto.unwrap_key(kek, wrapped, _WRAP_CONTEXT)
        if dek is not None:
            self._set("failed_pins", 0)
            self._set("locked_until", 0.0)
            return dek
        failures = int(self._get("failed_pins") or 0) + 1
        self._set("failed_pins", failures)
        if failures >= MAX_FAILURES:
            self.erase()
            raise StoreErasedError(
                f"{failures} wrong PINs in a row: the data key was destroyed and the data cannot be recovered"
            )
        delay = delay_after(failures)
        self._set("locked_until", self._now() + delay)
        raise WrongPinError(MAX_FAILURES - failures, delay)

    def failures(self) -> int:
        return int(self._get("failed_pins") or 0)

    def rewrap(self, dek: bytes, new_pin: str) -> None:
        """Wrap the same data key under ``new_pin`` (data is not re-encrypted)."""
        _check_pin_text(new_pin)
        self._write_wrap(new_pin, dek, self.params())

    def erase(self) -> None:
        """Destroy the wrapped data key (and its salt).  Irreversible."""
        self._conn.execute("DELETE FROM meta WHERE key IN ('wrapped_dek', 'salt')")
