"""The worker's session: first-run set-up, unlock, lock, PIN change.

Owns the :class:`fieldsync.Store` while it is unlocked; locking closes it
(the data key leaves memory).  Uses only the public fieldsync API.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Callable

import fieldsync
from fieldsync import Store
from fieldsync.sync import enroll
from fieldsync.transport import RequestsTransport, Transport

from ..config import AppConfig

__all__ = ["Session", "SetupError"]


class SetupError(Exception):
    """First-run set-up failed; ``code`` says why (for the message catalog)."""

    def __init__(self, code: str, detail: str = "") -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"{code}: {detail}" if detail else code)


class Session:
    """The store of this tablet and whether it is unlocked."""

    def __init__(self, config: AppConfig, transport_factory: Callable[[str], Transport] | None = None,
                 kdf: fieldsync.KdfParams | None = None) -> None:
        self.config = config
        self.store: Store | None = None
        self._transport_factory = transport_factory or self._default_transport
        self._kdf = kdf  # None: the library's default (OWASP) cost

    def _default_transport(self, url: str) -> Transport:
        return RequestsTransport(url, ca_bundle=self.config.ca_bundle or None,
                                 allow_insecure_http=self.config.allow_insecure_http)

    def transport(self) -> Transport:
        return self._transport_factory(self.config.server_url)

    # -- state -------------------------------------------------------------
    @property
    def is_set_up(self) -> bool:
        """True once a store exists on this tablet (enrolled at first run)."""
        return self.config.store_path.is_file()

    @property
    def unlocked(self) -> bool:
        return self.store is not None

    def require_store(self) -> Store:
        if self.store is None:
            raise fieldsync.AuthError("the app is locked")
        return self.store

    # -- first run -----------------------------------------------------------
    def check_server(self, url: str) -> None:
        """Raise :class:`SetupError` unless ``url`` answers as a district server."""
        try:
            transport = self._transport_factory(url)
        except ValueError as exc:
            raise SetupError("bad_url", str(exc)) from exc
        from fieldsync.transport import Request

        try:
            resp = transport.handle(Request("GET", "/v1/hello"))
        except fieldsync.NetworkError as exc:
            raise SetupError("unreachable", str(exc)) from exc
        if resp.status != 200 or b"fieldsync-district" not in resp.body:
            raise SetupError("not_a_server", f"status {resp.status}")

    def set_up(self, server_url: str, code: str, pin: str, device_name: str = "") -> None:
        """Create the encrypted store with ``pin`` and enroll it with ``code``.

        If enrollment fails nothing is left behind, so the worker can try again.
        """
        path = self.config.store_path
        path.parent.mkdir(parents=True, exist_ok=True)
        kwargs = {"kdf": self._kdf} if self._kdf else {}
        store = Store.create(path, pin, **kwargs)
        try:
            enroll(store, server_url, code, device_name=device_name or socket.gethostname(),
                   transport=self._transport_factory(server_url), ca_bundle=self.config.ca_bundle or None)
        except fieldsync.RequestRejected as exc:
            store.close()
            _remove_store(path)
            raise SetupError(exc.code, str(exc)) from exc
        except fieldsync.SyncError as exc:
            store.close()
            _remove_store(path)
            raise SetupError("unreachable", str(exc)) from exc
        self.config.server_url = server_url
        self.config.save()
        self.store = store

    # -- unlock / lock ---------------------------------------------------------
    def unlock(self, pin: str) -> Store:
        """Open the store; raises WrongPinError, PinLockedError or StoreErasedError."""
        if self.store is None:
            self.store = Store.open(self.config.store_path, pin)
        return self.store

    def lock(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def change_pin(self, old: str, new: str) -> None:
        self.require_store().change_pin(old, new)


def _remove_store(path: Path) -> None:
    import shutil

    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        p.unlink(missing_ok=True)
    shutil.rmtree(Path(f"{path}-attachments"), ignore_errors=True)
