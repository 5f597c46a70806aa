"""Shared fixtures: store paths, a cheap KDF, an open store, injectable time."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import fieldsync
from fieldsync import Store

PIN = "2580"


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "tablet.fsdb"


@pytest.fixture
def fast_kdf() -> fieldsync.KdfParams:
    # Production is N=2**17 (~0.4 s per unlock); tests that do not check the
    # cost itself use a cheap one.
    return fieldsync.KdfParams(n=2**10, r=8, p=1)


@pytest.fixture(autouse=True)
def _close_every_store(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Store]]:
    """Track every Store a test opens (no behaviour changes) and close them after it."""
    opened: list[Store] = []

    def tracked(orig: Callable[..., Store]) -> Any:
        @functools.wraps(orig)
        def wrapper(*args: Any, **kwargs: Any) -> Store:
            store = orig(*args, **kwargs)
            opened.append(store)
            return store

        return staticmethod(wrapper)

    monkeypatch.setattr(Store, "create", tracked(Store.create))
    monkeypatch.setattr(Store, "open", tracked(Store.open))
    yield opened
    for store in opened:
        store.close()


@pytest.fixture
def store(store_path: Path, fast_kdf: fieldsync.KdfParams) -> Store:
    return Store.create(store_path, PIN, kdf=fast_kdf)


class FakeNow:
    """A controllable clock in seconds: ``now()`` reads it, ``advance()`` moves it."""

    def __init__(self, start: float = 1_750_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def now() -> FakeNow:
    return FakeNow()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """With FIELDSYNC_REQUIRE_PG=1 a skipped ``postgres`` test is a failure, never a skip."""
    report = yield
    if (
        os.environ.get("FIELDSYNC_REQUIRE_PG") == "1"
        and report.skipped
        and item.get_closest_marker("postgres") is not None
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (
            f"FIELDSYNC_REQUIRE_PG=1 but this PostgreSQL test was skipped ({reason}); "
            "set FIELDSYNC_TEST_PG to a reachable server (scripts/test starts one)"
        )
    return report
