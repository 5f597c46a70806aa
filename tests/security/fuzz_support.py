"""Helpers for the API fuzzing tests (tests/security/test_fuzz_api.py).

A demo-sized district (``fieldsync-server init-demo``: four grids, about 5 800 records) on SQLite or
PostgreSQL, served by a real uvicorn process on 127.0.0.1; a device enrolled over HTTP like a tablet;
a ``requests`` auth object that signs every request exactly as the client does (docs/protocol.md
§3.2); and the extra response checks the fuzzer runs on every answer.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote, urlsplit

import pytest
import requests
import requests.auth
from serverkit import database

from fieldsync.identity import Identity, new_key, public_key_b64
from fieldsync.protocol import H_DEVICE, H_NONCE, H_SIGNATURE, H_TIMESTAMP, dumps
from fieldsync.schema import SCHEMA_VERSION
from server_stub.demo import build_demo
from server_stub.district import District
from server_stub.replica import Actor

REPO = Path(__file__).resolve().parents[2]

#: Examples per operation and generation phase.  CI keeps the default; a long run sets more, e.g.
#: ``FIELDSYNC_FUZZ_EXAMPLES=2000 .venv/bin/python -m pytest tests/security/test_fuzz_api.py``.
EXAMPLES = int(os.environ.get("FIELDSYNC_FUZZ_EXAMPLES", "5"))
#: Schemathesis phases to run (comma-separated): the schema's examples, boundary values ("coverage",
#: a few hundred deterministic cases per operation), random fuzzing.  CI skips coverage for time.
PHASES = tuple(os.environ.get("FIELDSYNC_FUZZ_PHASES",
                              "examples,coverage,fuzzing" if EXAMPLES >= 100 else "examples,fuzzing").split(","))
#: The run's seed: printed with every test, and ``FIELDSYNC_FUZZ_SEED=<seed>`` replays the run.
SEED = int(os.environ.get("FIELDSYNC_FUZZ_SEED") or random.SystemRandom().getrandbits(32))

#: The fuzzing device belongs to this demo worker (李璟, grid wc-hhl-ply-01).
WORKER = "w-lijing"
GRID = "wc-hhl-ply-01"
OTHER_GRID = "wc-ldj-hys-03"  # 小张's grid: out of the fuzzing device's scope
#: A photo a report of GRID refers to, uploaded complete; and one referred to but never uploaded.
PHOTO = b"test"
PHOTO_HASH = hashlib.sha256(PHOTO).hexdigest()  # the example hash of docs/protocol.md §16.3
PENDING_HASH = hashlib.sha256(b"pending photo").hexdigest()
SIGNED_HEADERS = (H_DEVICE, H_TIMESTAMP, H_NONCE, H_SIGNATURE)
START_TIMEOUT_S = 30.0


@dataclass
class FuzzServer:
    """A live server on a demo district, and the identity of a device enrolled on it."""

    backend: str
    url: str
    district: District
    identity: Identity
    log: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_fuzz_district(district: District) -> None:
    """The demo district, plus a report of GRID with one complete and one pending photo."""
    build_demo(district)
    district.write(Actor("cc-wangcc", "command"), "reports", "r-fuzz-photos", {
        "grid_id": GRID, "category": "市容环境", "description": "井盖缺失", "status": "submitted",
        "reporter_id": WORKER, "attachments": [PHOTO_HASH, PENDING_HASH]})
    assert district.attachments.append(PHOTO_HASH, 0, PHOTO, len(PHOTO)).complete


def start_uvicorn(db_url: str, folder: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    """A real uvicorn process serving ``db_url`` on a free port of 127.0.0.1."""
    port = _free_port()
    log = folder / f"uvicorn-{port}.log"
    env = {**os.environ, "FIELDSYNC_DB": db_url, "FIELDSYNC_ATTACHMENTS": str(folder / "attachments")}
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "server_stub.asgi:app", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "warning"],
            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"uvicorn exited with {proc.returncode}:\n{log.read_text()}", pytrace=False)
        try:
            if requests.get(f"{url}/v1/hello", timeout=1).status_code == 200:
                return proc, url, log
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"uvicorn did not answer within {START_TIMEOUT_S:.0f} s:\n{log.read_text()}", pytrace=False)
        time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def enroll_over_http(url: str, district: District, worker: str) -> Identity:
    """Enroll a new device for ``worker`` through POST /v1/enroll, as a tablet does."""
    key = new_key()
    code, _ = district.issue_code(worker)
    resp = requests.post(f"{url}/v1/enroll", data=dumps({
        "code": code, "public_key": public_key_b64(key), "node_id": f"n{secrets.token_hex(7)}",
        "device_name": "fuzz", "schema_version": SCHEMA_VERSION}), timeout=10)
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["worker_id"] == worker
    return Identity(answer["device_id"], worker, url, key)


#: Both backends; PostgreSQL fails (never skips) without FIELDSYNC_TEST_PG.
BACKENDS = [pytest.param("sqlite", id="sqlite"), pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres)]


def serve_demo(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzServer]:
    """A demo district on ``backend`` served by uvicorn, with the fuzzing device enrolled (a fixture body)."""
    folder = tmp_path_factory.mktemp(f"fuzz-{backend}")
    with database(backend, folder) as db_url:
        district = District(db_url, attachments=folder / "attachments")
        try:
            build_fuzz_district(district)
            proc, url, log = start_uvicorn(db_url, folder)
            try:
                yield FuzzServer(backend, url, district, enroll_over_http(url, district, WORKER), log)
            finally:
                stop(proc)
        finally:
            district.close()


# -- signing ----------------------------------------------------------------------------


class DeviceSignature(requests.auth.AuthBase):
    """Sign a prepared request with a device's key: the exact bytes on the wire, as the client does.

    Runs after ``requests`` has built the URL and the body, so the signature covers what is sent:
    the method, the path (percent-decoded, as the server reads it), the raw query, the SHA-256 of
    the body, a fresh timestamp and a fresh nonce (``Identity.sign``, the client's own code).
    """

    def __init__(self, identity: Identity | None) -> None:
        self.identity = identity

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        assert self.identity is not None, "no device to sign with"
        parts = urlsplit(r.url or "")
        body = r.body if isinstance(r.body, bytes) else (r.body or "").encode("utf-8")
        for name, value in self.identity.sign(r.method or "GET", unquote(parts.path), parts.query, body).items():
            r.headers[name] = value
        return r


class GarbageSignature(DeviceSignature):
    """Well-formed but wrong credentials: an enrolled device id with another key's signature."""

    def __init__(self, device_id: str) -> None:
        super().__init__(Identity(device_id, WORKER, "", new_key()))


# -- checks run on every answer -----------------------------------------------------------

_CODE = re.compile(r"^[a-z][a-z_]*$")
AUTH_CODES = {"auth_missing", "auth_malformed", "device_unknown", "signature_invalid", "timestamp_stale",
              "nonce_replayed"}


def error_of(content: bytes) -> dict[str, Any]:
    """The ``error`` object of an error answer; fails (AssertionError) unless it is ``{"error": {code, message}}``."""
    try:
        data = json.loads(content)
    except ValueError:
        raise AssertionError(f"an error answer must be JSON, got {content[:200]!r}") from None
    assert isinstance(data, dict) and isinstance(data.get("error"), dict), f"not an error object: {data!r:.300}"
    err: dict[str, Any] = data["error"]
    assert isinstance(err.get("code"), str) and _CODE.match(err["code"]), f"error code {err.get('code')!r}"
    assert isinstance(err.get("message"), str) and err["message"].strip(), "an error needs a clear message"
    return err


def answer_problems(status: int, headers: dict[str, list[str]], content: bytes) -> list[str]:
    """What is wrong with one answer of the API (empty when nothing is)."""
    problems = []
    if status >= 500:
        problems.append(f"server error {status}")
    server_time = (headers.get("x-fieldsync-server-time") or [""])[0]
    if not server_time.isdigit():
        problems.append(f"X-Fieldsync-Server-Time missing or not digits: {server_time!r}")
    if status >= 400:
        try:
            error_of(content)
        except AssertionError as exc:
            problems.append(str(exc))
    return problems
