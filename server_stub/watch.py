"""Long-poll support: let an online tablet learn of new changes in its grids within seconds.

One :class:`GridWatch` per server process reads every grid's counter once
per ``interval_s`` (one query, however many devices are waiting) and wakes
the waiting requests whose grids moved past their cursors.  It works across
several server processes because the counters live in the shared database.
"""

from __future__ import annotations

import asyncio
import time
from typing import Mapping

from starlette.concurrency import run_in_threadpool

from .db import Database

__all__ = ["GridWatch", "MAX_WAIT_MS"]

MAX_WAIT_MS = 30_000


class GridWatch:
    def __init__(self, db: Database, interval_s: float = 1.0) -> None:
        self.db = db
        self.interval_s = interval_s
        self._seqs: dict[str, int] = {}
        self._read_at = 0.0
        self._waiters = 0
        self._changed: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def _read(self) -> dict[str, int]:
        with self.db.transaction() as tx:
            return {str(g): int(s) for g, s in tx.all("SELECT grid, seq FROM grid_state")}

    async def _refresh(self) -> None:
        seqs = await run_in_threadpool(self._read)
        self._read_at = time.monotonic()
        if seqs != self._seqs:
            self._seqs = seqs
            if self._changed is not None:
                self._changed.set()
                self._changed = asyncio.Event()

    async def _poll(self) -> None:
        try:
            while self._waiters > 0:
                await asyncio.sleep(self.interval_s)
                await self._refresh()
        finally:
            self._task = None

    def _moved(self, grids: list[str], cursors: Mapping[str, int]) -> list[str]:
        return [g for g in grids if self._seqs.get(g, 0) > int(cursors.get(g, 0))]

    async def wait(self, grids: list[str], cursors: Mapping[str, int], timeout_ms: int) -> list[str]:
        """The grids (of ``grids``) with changes after ``cursors``, waiting up to ``timeout_ms``."""
        if time.monotonic() - self._read_at > self.interval_s:
            await self._refresh()
        deadline = time.monotonic() + min(timeout_ms, MAX_WAIT_MS) / 1000
        self._waiters += 1
        if self._changed is None:
            self._changed = asyncio.Event()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._poll())
        try:
            while True:
                moved = self._moved(grids, cursors)
                remaining = deadline - time.monotonic()
                if moved or remaining <= 0:
                    return moved
                event = self._changed
                try:
                    await asyncio.wait_for(event.wait(), remaining)
                except asyncio.TimeoutError:
                    pass
        finally:
            self._waiters -= 1
