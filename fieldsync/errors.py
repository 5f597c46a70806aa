"""Every error fieldsync raises, in one tree.

::

    FieldsyncError
    ├── ValidationError            a record broke its kind's schema (names the field)
    ├── UnknownKindError           no record kind registered under that name
    ├── RecordNotFound             no such record in the store
    ├── ClockDriftError            a received clock stamp is too far in the future
    ├── StoreError                 the local store cannot do what was asked
    │   ├── IntegrityError         a ciphertext or file failed authentication
    │   ├── StoreFullError         the disk is full or the write failed; nothing was saved
    │   └── NotAStoreError         the path holds no fieldsync store (or a newer one)
    ├── AuthError                  the PIN / keys side
    │   ├── WrongPinError          the PIN did not unlock the store (``attempts_left``)
    │   ├── PinLockedError         too many wrong PINs; wait ``retry_after`` seconds
    │   └── StoreErasedError       the data key was destroyed (lockout or remote wipe)
    └── SyncError                  talking to the district server
        ├── NetworkError           no answer, timeout, connection cut (retried)
        ├── ServerError            5xx (retried)
        ├── ProtocolError          the server's answer is malformed or hostile
        └── RequestRejected        a 4xx answer; ``code`` is the protocol error code
            └── DeviceRevokedError the device was revoked (``wipe`` says whether to erase)

Library errors are raised ``from`` the underlying exception so the cause is
never lost.  Messages never contain personal data: they name collections,
record ids and fields, never values.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "FieldsyncError",
    "ValidationError",
    "UnknownKindError",
    "RecordNotFound",
    "ClockDriftError",
    "StoreError",
    "IntegrityError",
    "StoreFullError",
    "NotAStoreError",
    "AuthError",
    "WrongPinError",
    "PinLockedError",
    "StoreErasedError",
    "SyncError",
    "NetworkError",
    "ServerError",
    "ProtocolError",
    "RequestRejected",
    "DeviceRevokedError",
]


class FieldsyncError(Exception):
    """Base of every fieldsync error."""


class ValidationError(FieldsyncError):
    """A record failed validation.  ``field`` and ``problem`` say where and why."""

    def __init__(self, kind: str, field: str, problem: str) -> None:
        self.kind = kind
        self.field = field
        self.problem = problem
        super().__init__(f"{kind}.{field}: {problem}")


class UnknownKindError(FieldsyncError):
    """No record kind is registered under this name."""


class RecordNotFound(FieldsyncError):
    """The record does not exist (or was deleted)."""


class ClockDriftError(FieldsyncError):
    """A received clock stamp leads local time by more than allowed."""


class StoreError(FieldsyncError):
    """The local store cannot do what was asked."""


class IntegrityError(StoreError):
    """Stored ciphertext failed authentication: tampered, corrupted or misplaced."""


class StoreFullError(StoreError):
    """The disk is full or an I/O error stopped a write; nothing was saved."""


class NotAStoreError(StoreError):
    """The path does not hold a fieldsync store this version can open."""


class AuthError(FieldsyncError):
    """Unlocking the store failed."""


class WrongPinError(AuthError):
    """The PIN is wrong.  ``attempts_left`` counts down to crypto-erase."""

    def __init__(self, attempts_left: int, retry_after: float) -> None:
        self.attempts_left = attempts_left
        self.retry_after = retry_after
        wait = f"; wait {retry_after:.0f} s before the next try" if retry_after else ""
        super().__init__(f"wrong PIN: {attempts_left} attempts left before the data is erased{wait}")


class PinLockedError(AuthError):
    """Too many wrong PINs in a row: no attempt is allowed for ``retry_after`` seconds."""

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(f"too many wrong PINs: try again in {retry_after:.0f} s")


class StoreErasedError(AuthError):
    """The store's data key was destroyed; its data can never be read again."""


class SyncError(FieldsyncError):
    """Talking to the district server failed."""


class NetworkError(SyncError):
    """The server could not be reached or the connection broke."""


class ServerError(SyncError):
    """The server answered with a 5xx status."""


class ProtocolError(SyncError):
    """The server's answer does not follow the protocol; nothing from it was applied."""


class RequestRejected(SyncError):
    """The server refused the request (4xx); ``code`` is the protocol error code."""

    def __init__(self, code: str, message: str, status: int = 400, detail: dict[str, Any] | None = None) -> None:
        self.code = code
        self.status = status
        self.detail = detail or {}  # the error object's other members, as the server sent them
        super().__init__(f"{code}: {message}")


class DeviceRevokedError(RequestRejected):
    """This device was revoked; ``wipe`` says whether the server asked for erase."""

    def __init__(self, message: str, wipe: bool) -> None:
        self.wipe = wipe
        super().__init__("device_revoked", message, 403)
