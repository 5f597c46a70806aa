"""fieldsync: an encrypted offline store of typed records, with sync to a district server."""

from .clock import HybridClock, Stamp
from .crypto import KdfParams
from .errors import (
    AuthError,
    ClockDriftError,
    DeviceRevokedError,
    FieldsyncError,
    IntegrityError,
    NetworkError,
    NotAStoreError,
    PinLockedError,
    ProtocolError,
    RecordNotFound,
    RequestRejected,
    ServerError,
    StoreErasedError,
    StoreError,
    StoreFullError,
    SyncError,
    UnknownKindError,
    ValidationError,
    WrongPinError,
)
from .schema import SCHEMA_VERSION, Field, Kind, Registry, default_registry
from .store import OutboxEntry, Store, StoreStatus

__version__ = "0.1.0"

__all__ = [
    "Store",
    "StoreStatus",
    "OutboxEntry",
    "Kind",
    "Field",
    "Registry",
    "default_registry",
    "SCHEMA_VERSION",
    "HybridClock",
    "Stamp",
    "KdfParams",
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
