"""Hybrid logical clock (HLC).

A :class:`Stamp` orders every write in the system: wall-clock milliseconds,
a logical counter for writes within the same millisecond (or while the wall
clock is behind), and the id of the node that made the write as the final
tie break.  Stamps encode to fixed-width strings whose lexicographic order is
the stamp order, so they can be compared in SQL and travel in JSON.

The clock never goes backwards, whatever the wall clock does, and it refuses
(or clamps, at the server) a received stamp that leads local wall time by more
than ``max_drift_ms``: a tablet with a clock a year fast must not win every
conflict forever.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable

from .errors import ClockDriftError

__all__ = ["Stamp", "HybridClock", "DEFAULT_MAX_DRIFT_MS", "is_stamp"]

DEFAULT_MAX_DRIFT_MS = 5 * 60 * 1000
_WALL_DIGITS = 12  # hex digits for milliseconds: good until the year 10889
_COUNTER_DIGITS = 6
_MAX_COUNTER = 16**_COUNTER_DIGITS - 1
_STAMP_RE = re.compile(r"^([0-9a-f]{12})-([0-9a-f]{6})-([A-Za-z0-9_.:\-]{1,64})\Z")


@dataclass(frozen=True, order=True)
class Stamp:
    """One HLC reading; ordered by (wall_ms, counter, node)."""

    wall_ms: int
    counter: int
    node: str

    def encode(self) -> str:
        """Fixed-width text form; string order equals stamp order."""
        return _encode(self.wall_ms, self.counter, self.node)

    @classmethod
    def decode(cls, text: str) -> "Stamp":
        """Parse :meth:`encode` output; raises ``ValueError`` on anything else."""
        if not isinstance(text, str):
            raise ValueError(f"not a clock stamp: {text!r}")
        return _decode(text)

    def __str__(self) -> str:
        return self.encode()


@functools.lru_cache(maxsize=8192)
def _encode(wall_ms: int, counter: int, node: str) -> str:
    return f"{wall_ms:0{_WALL_DIGITS}x}-{counter:0{_COUNTER_DIGITS}x}-{node}"


@functools.lru_cache(maxsize=8192)
def _decode(text: str) -> Stamp:
    # Cached: the writes of one record usually share a stamp, and a stamp is
    # decoded again on every merge of the record.
    m = _STAMP_RE.match(text)
    if not m:
        raise ValueError(f"not a clock stamp: {text!r}")
    return Stamp(int(m.group(1), 16), int(m.group(2), 16), m.group(3))


def is_stamp(text: object) -> bool:
    """True for a well-formed encoded stamp (cheap; no object is built)."""
    return isinstance(text, str) and _STAMP_RE.match(text) is not None


def _system_ms() -> int:
    return time.time_ns() // 1_000_000


class HybridClock:
    """A thread-safe hybrid logical clock for one node.

    ``wall`` returns milliseconds since the epoch and is injectable so tests
    can make time jump.  ``last`` restores the clock after a restart (pass
    the highest stamp the node ever issued or received).
    """

    def __init__(
        self,
        node: str,
        wall: Callable[[], int] = _system_ms,
        max_drift_ms: int = DEFAULT_MAX_DRIFT_MS,
        last: Stamp | None = None,
    ) -> None:
        if not _STAMP_RE.match(f"{0:012x}-{0:06x}-{node}"):
            raise ValueError(f"node id must be 1-64 characters of [A-Za-z0-9_.:-]: {node!r}")
        self.node = node
        self._wall = wall
        self.max_drift_ms = max_drift_ms
        self._lock = threading.Lock()
        self._wall_ms = last.wall_ms if last else 0
        self._counter = last.counter if last else 0

    def wall(self) -> int:
        """The wall clock this clock reads (milliseconds)."""
        return self._wall()

    @property
    def last(self) -> Stamp:
        """The latest stamp issued or observed (to persist across restarts)."""
        return Stamp(self._wall_ms, self._counter, self.node)

    def now(self) -> Stamp:
        """A new stamp, strictly greater than every stamp issued or observed."""
        with self._lock:
            wall = self._wall()
            if wall > self._wall_ms:
                self._wall_ms, self._counter = wall, 0
            else:
                self._bump()
            return Stamp(self._wall_ms, self._counter, self.node)

    def observe(self, remote: Stamp, clamp: bool = False) -> Stamp:
        """Advance past a received stamp, so later local stamps order after it.

        A stamp that leads local wall time by more than ``max_drift_ms`` raises
        :class:`ClockDriftError`, or with ``clamp=True`` is moved back to the
        bound (the server uses this).  Returns the stamp to keep: ``remote``
        itself, or the clamped stamp.

        A clamped stamp is this clock's next tick at or after the bound, with
        ``remote``'s node: clamped stamps strictly increase in the order they
        are clamped, so one writer's later write never gets an equal or older
        stamp than its earlier one (the writer's own counter cannot keep that
        order once the wall part is replaced).
        """
        with self._lock:
            wall = self._wall()
            limit = wall + self.max_drift_ms
            kept = remote
            if remote.wall_ms > limit:
                if not clamp:
                    raise ClockDriftError(
                        f"received clock stamp leads local time by "
                        f"{remote.wall_ms - wall} ms (limit {self.max_drift_ms} ms)"
                    )
                if self._wall_ms >= limit:
                    self._bump()
                else:
                    self._wall_ms, self._counter = limit, 0
                return Stamp(self._wall_ms, self._counter, remote.node)
            if wall > self._wall_ms and wall > kept.wall_ms:
                self._wall_ms, self._counter = wall, 0
            elif kept.wall_ms > self._wall_ms:
                self._wall_ms, self._counter = kept.wall_ms, kept.counter
                self._bump()
            elif kept.wall_ms == self._wall_ms:
                self._counter = max(self._counter, kept.counter)
                self._bump()
            else:
                self._bump()
            return kept

    def _bump(self) -> None:
        if self._counter >= _MAX_COUNTER:
            # The counter is exhausted within one millisecond: borrow the
            # next millisecond rather than overflow the fixed-width encoding.
            self._wall_ms += 1
            self._counter = 0
        else:
            self._counter += 1
