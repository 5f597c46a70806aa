"""Helpers shared by the server tests: transport taps, signed raw requests, state comparison.

Imported by the test modules of this folder (pytest puts the folder on ``sys.path``).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from fieldsync import Store
from fieldsync.identity import Identity
from fieldsync.merge import values_of
from fieldsync.protocol import H_SCHEMA, dumps
from fieldsync.schema import SCHEMA_VERSION
from fieldsync.sync import SyncClient
from fieldsync.transport import Request, Response, Transport
from server_stub.district import District
from server_stub.replica import load_state

PIN = "2580"
SIGNED_HEADERS = ("x-fieldsync-device", "x-fieldsync-timestamp", "x-fieldsync-nonce", "x-fieldsync-signature")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Exchange:
    """One request a :class:`Tap` saw, with the answer (or None when the tap dropped it)."""

    request: Request
    response: Response | None

    def payload(self) -> Any:
        """The request body as JSON (un-gzipped when it was sent compressed)."""
        body = self.request.body
        if self.request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        return json.loads(body) if body else {}

    def answer(self) -> Any:
        assert self.response is not None
        return json.loads(self.response.body)


@dataclass
class Tap:
    """Wraps a real transport: records every exchange, and lets a test act before or after one.

    ``before(request, n)`` runs before the request is forwarded (``n`` counts requests to the
    same path, from 1) and may raise (the request is then never sent); ``after(request,
    response, n)`` runs once the server answered and may raise instead of returning the answer.
    """

    inner: Transport
    before: Callable[[Request, int], None] | None = None
    after: Callable[[Request, Response, int], None] | None = None
    exchanges: list[Exchange] = field(default_factory=list)

    def handle(self, request: Request) -> Response:
        n = 1 + sum(1 for e in self.exchanges if e.request.path == request.path)
        exchange = Exchange(request, None)
        self.exchanges.append(exchange)
        if self.before is not None:
            self.before(request, n)
        response = self.inner.handle(request)
        exchange.response = response
        if self.after is not None:
            self.after(request, response, n)
        return response

    def to(self, path: str) -> list[Exchange]:
        return [e for e in self.exchanges if e.request.path == path]

    def clear(self) -> None:
        self.exchanges.clear()


@dataclass
class Device:
    """A grid worker's enrolled tablet in a test."""

    worker: str
    store: Store
    client: SyncClient
    path: Any
    transport: Transport
    identity: Identity

    @property
    def device_id(self) -> str:
        return self.identity.device_id

    def sync(self, **kwargs: Any) -> Any:
        return self.client.sync(**kwargs)


def signed_request(identity: Identity, path: str, payload: dict[str, Any] | bytes, *, at_ms: int | None = None,
                   headers: dict[str, str] | None = None) -> Request:
    """A POST exactly as a device would sign it (``at_ms`` overrides the signing time)."""
    body = payload if isinstance(payload, bytes) else dumps(payload)
    base = {"Content-Type": "application/json", H_SCHEMA: str(SCHEMA_VERSION), **(headers or {})}
    base.update(identity.sign("POST", path, "", body, now_ms() if at_ms is None else at_ms))
    return Request("POST", path, "", base, body)


def call(transport: Transport, identity: Identity, path: str, payload: dict[str, Any] | bytes, **kwargs: Any) -> Response:
    return transport.handle(signed_request(identity, path, payload, **kwargs))


def resign(identity: Identity, request: Request) -> Request:
    """The same request (same body and content headers) with a fresh signature and nonce."""
    kept = {k: v for k, v in request.headers.items() if k.lower() not in SIGNED_HEADERS}
    return signed_request(identity, request.path, request.body, headers=kept)


def error_of(resp: Response) -> dict[str, Any]:
    data = json.loads(resp.body)
    assert "error" in data, f"expected an error answer, got {resp.status} {data}"
    err: dict[str, Any] = data["error"]
    return err


def json_of(resp: Response) -> Any:
    assert resp.status == 200, f"{resp.status}: {resp.body[:300]!r}"
    return json.loads(resp.body)


# -- server state -------------------------------------------------------------------

def rows(district: District, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with district.db.transaction() as tx:
        return tx.all(sql, params)


def grid_state(district: District, grid: str) -> tuple[int, int]:
    found = rows(district, "SELECT seq, checksum FROM grid_state WHERE grid = ?", (grid,))
    return (int(found[0][0]), int(found[0][1])) if found else (0, 0)


def server_records(district: District, grids: list[str] | None = None) -> dict[tuple[str, str], dict[str, Any]]:
    """Live (not deleted) records on the server, optionally only of ``grids``: (collection, id) -> values."""
    out = {}
    for collection, rid, grid, deleted, body in rows(district, "SELECT collection, id, grid, deleted, body FROM records"):
        if deleted or (grids is not None and grid not in grids):
            continue
        out[(collection, rid)] = {"id": rid, **values_of(load_state(body))}
    return out


def device_records(store: Store) -> dict[tuple[str, str], dict[str, Any]]:
    return {(name, r["id"]): r for name in store.registry.names() for r in store.list(name)}


def assert_matches_server(store: Store, district: District) -> None:
    """The device holds exactly the server's live records of the device's grids, field by field."""
    mine = device_records(store)
    theirs = server_records(district, store.grids())
    assert set(mine) == set(theirs), (
        f"only on device: {sorted(set(mine) - set(theirs))[:5]}, only on server: {sorted(set(theirs) - set(mine))[:5]}")
    for key, values in theirs.items():
        assert mine[key] == values, f"{key}: device {mine[key]} != server {values}"
    for grid in store.grids():
        assert store.grid_checksum(grid) == grid_state(district, grid)[1], f"checksum of {grid} differs"


def audit_actions(district: District) -> list[tuple[str, str, str]]:
    return [(a, act, o) for a, act, o in rows(district, "SELECT actor, action, object FROM audit_log ORDER BY n")]


def household(grid: str, n: int = 0, **extra: Any) -> dict[str, Any]:
    return {"grid_id": grid, "address": f"花园山{n}栋{n % 7 + 1}单元", "head_name": f"张{n}",
            "phone": f"1380013{n:04d}", **extra}


@contextmanager
def pg_schema(base: str, prefix: str = "t") -> Iterator[str]:
    """A fresh schema in the PostgreSQL database at ``base`` (dropped afterwards): the URL that uses it."""
    import psycopg

    schema = f"{prefix}_{secrets.token_hex(6)}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            # A connection left open by a test must not hang the whole run.
            conn.execute("SET lock_timeout = '20s'")
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


PG_ENV = "FIELDSYNC_TEST_PG"


class MissingPostgres(RuntimeError):
    """A PostgreSQL test without a cluster: it fails, never skips (scripts/test starts one)."""


@contextmanager
def database(backend: str, folder: Path, name: str = "district") -> Iterator[str]:
    """A new, empty district database URL on ``backend``: a SQLite file in ``folder``, or a fresh
    schema in the cluster at $FIELDSYNC_TEST_PG, dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{folder / (name + '.db')}"
        return
    if backend != "postgresql":
        raise ValueError(f"unknown backend {backend!r}; use sqlite or postgresql")
    base = os.environ.get(PG_ENV)
    if not base:
        raise MissingPostgres(f"{PG_ENV} is not set: run scripts/test (it starts a throwaway PostgreSQL), "
                              f"or export {PG_ENV}=$(cat /tmp/fieldsync-pg-url)")
    with pg_schema(base) as url:
        yield url


@pytest.fixture(autouse=True)
def attachments_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Server processes and the test's District keep attachments in the same temporary folder."""
    folder = tmp_path / "server-attachments"
    monkeypatch.setenv("FIELDSYNC_ATTACHMENTS", str(folder))
    return folder


SERVER_FIXTURES = ("backend", "db_url", "district", "inproc", "make_device", "server_factory", "live_server", "live")


def share_server_fixtures(namespace: dict[str, Any], module_name: str) -> Any:
    """Give another test folder's conftest (``namespace``: its globals) the server tests' fixtures
    (tests/server/conftest.py, loaded as ``module_name``) and :func:`attachments_folder`; returns
    that conftest as a module."""
    spec = importlib.util.spec_from_file_location(module_name, Path(__file__).with_name("conftest.py"))
    assert spec is not None and spec.loader is not None
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    namespace.update({name: getattr(fixtures, name) for name in SERVER_FIXTURES})
    namespace["attachments_folder"] = attachments_folder
    return fixtures
