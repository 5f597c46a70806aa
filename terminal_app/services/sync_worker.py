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

import logging
import threading
import time
from typing import Callable

import fieldsync
from fieldsync.sync import SyncClient, SyncResult, SyncStatus

__all__ = ["SyncWorker", "missing_report_photos", "prefetch_missing_photos", "network_is_metered"]

log = logging.getLogger("terminal_app.sync")


def missing_report_photos(store: fieldsync.Store) -> list[str]:
    """Content hashes the reports in this store refer to that the store does not hold (first seen first)."""
    wanted: dict[str, None] = {}
    for report in store.list("reports"):
        for h in report.get("attachments") or ():
            if isinstance(h, str) and h and not store.attachments.exists(h):
                wanted[h] = None
    return list(wanted)


def prefetch_missing_photos(client: SyncClient) -> int:
    """Download the report photos this device lacks; returns how many arrived.  Errors are
    skipped (a photo not uploaded yet, out of scope, a network failure: the next sync tries again)."""
    got = 0
    for content_hash in missing_report_photos(client.store):
        try:
            client.download_attachment(content_hash)
        except fieldsync.NetworkError:
            break  # offline again: the rest would fail too
        except Exception as exc:  # noqa: BLE001 - a prefetch never disturbs the sync
            log.info("photo prefetch skipped %s: %s", content_hash[:12], type(exc).__name__)
            continue
        got += 1
    return got


def network_is_metered(platform: str) -> bool:
    """True when the active network is metered (mobile data).  Only Android can tell; elsewhere
    (desktop, tests) the network is taken as not metered.  When asking fails, assume metered."""
    if platform != "android":
        return False
    try:
        from jnius import autoclass  # type: ignore[import-not-found]

        activity = autoclass("org.kivy.android.PythonActivity").mActivity
        context = autoclass("android.content.Context")
        manager = activity.getSystemService(context.CONNECTIVITY_SERVICE)
        return bool(manager.isActiveNetworkMetered())
    except Exception:  # noqa: BLE001 - no permission, no jnius: do not spend the worker's data
        return True


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
        prefetch: Callable[[SyncClient], object] | None = None,
    ) -> None:
        self._client_factory = client_factory
        self._prefetch = prefetch
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
        if self._prefetch is not None:
            try:
                self._prefetch(client)
            except Exception:  # noqa: BLE001 - a failed prefetch is never the sync's problem
                log.info("photo prefetch failed", exc_info=True)
