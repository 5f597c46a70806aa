"""Sync off the UI thread.

A :class:`SyncWorker` owns one background thread.  It syncs when the server
becomes reachable again (probing every ``probe_interval_s`` while offline),
every ``interval_s`` while online, soon after a local save, whenever
:meth:`request` is called (the sync button), and within seconds of a change
on the server: while online a second thread long-polls the server
(``SyncClient.wait_for_changes``) so a dispatched report shows up at once.  It reports through two
callbacks called on the worker thread; the UI wraps them so they run on the
UI thread (Kivy's ``@mainthread``).  The UI thread never waits for a sync.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import fieldsync
from fieldsync.sync import SyncClient, SyncResult, SyncStatus

__all__ = ["SyncWorker"]


class SyncWorker:
    def __init__(
        self,
        client_factory: Callable[[Callable[[SyncStatus], None]], SyncClient | None],
        probe: Callable[[], bool],
        *,
        on_status: Callable[[SyncStatus], None],
        on_done: Callable[[SyncResult | None, Exception | None], None],
        interval_s: float = 300,
        probe_interval_s: float = 20,
        soon_s: float = 5,
    ) -> None:
        self._client_factory = client_factory
        self._probe = probe
        self._on_status = on_status
        self._on_done = on_done
        self.interval_s = interval_s
        self.probe_interval_s = probe_interval_s
        self.soon_s = soon_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._requested = False
        self._due_at = 0.0  # monotonic time of the next scheduled sync
        self.online = False
        self.running = False
        self.long_poll_s = 25.0
        self._thread: threading.Thread | None = None
        self._watcher: threading.Thread | None = None

    def start(self, watch: bool = True) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="fieldsync-sync", daemon=True)
            self._thread.start()
        if watch and self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="fieldsync-watch", daemon=True)
            self._watcher.start()

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._watcher = None  # a long-poll in flight ends by itself; the thread is a daemon

    def _watch(self) -> None:
        """While online, long-poll the server and sync as soon as it reports a change."""
        while not self._stop.is_set():
            if not self.online or self.running:
                self._stop.wait(1.0)
                continue
            client = self._client_factory(lambda status: None)
            if client is None:
                self._stop.wait(1.0)
                continue
            try:
                changed = client.wait_for_changes(self.long_poll_s)
            except Exception:  # noqa: BLE001 - the server went away: let a sync attempt say so
                if not self._stop.is_set():
                    self.request()  # its failure marks the app offline at once
                self._stop.wait(self.probe_interval_s)
                continue
            if changed and not self._stop.is_set():
                self.request()

    def request(self) -> None:
        """Sync as soon as possible (the sync button)."""
        self._requested = True
        self._wake.set()

    def changed(self) -> None:
        """A local save happened: sync soon if online (a few seconds, to batch several saves)."""
        soon = time.monotonic() + self.soon_s
        if self._due_at > soon:
            self._due_at = soon
            self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            if self._requested or (self.online and now >= self._due_at):
                self._requested = False
                self._run()
            elif not self.online:
                reachable = False
                try:
                    reachable = self._probe()
                except Exception:  # noqa: BLE001 - any failure means not reachable
                    reachable = False
                if reachable:
                    self._run()
            wait = (max(0.0, self._due_at - time.monotonic()) if self.online else self.probe_interval_s)
            self._wake.wait(timeout=min(wait, self.probe_interval_s) if self.online else wait)
            self._wake.clear()

    def _run(self) -> None:
        client = self._client_factory(self._on_status)
        if client is None:  # locked: nothing to sync with
            self._due_at = time.monotonic() + self.interval_s
            return
        self.running = True
        try:
            result = client.sync()
        except fieldsync.FieldsyncError as exc:
            self.online = not isinstance(exc, (fieldsync.NetworkError, fieldsync.ServerError))
            self._due_at = time.monotonic() + (self.interval_s if self.online else self.probe_interval_s)
            self.running = False
            self._on_done(None, exc)
            return
        except Exception as exc:  # noqa: BLE001 - reported to the UI, never kills the thread
            self.online = False
            self._due_at = time.monotonic() + self.interval_s
            self.running = False
            self._on_done(None, exc)
            return
        self.online = True
        self._due_at = time.monotonic() + self.interval_s
        self.running = False
        self._on_done(result, None)
