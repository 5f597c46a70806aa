"""Kinto for :mod:`bench.peers`: a virtualenv of its own, a server on 127.0.0.1, a kinto-http client.

The virtualenv is ``$FIELDSYNC_BENCH_CACHE/kinto-venv`` (default ``~/.cache/fieldsync-bench``),
made with ``python -m venv`` and ``pip install kinto kinto-http psycopg2-binary SQLAlchemy
zope.sqlalchemy`` from the package index the first time, reused afterwards.  The server is
configured with ``kinto init`` (memory or PostgreSQL storage and permissions, memory cache), then
edited: Basic authentication (``multiauth.policies = basicauth``: any user/password pair is an
account, hashed with HMAC, the cheapest of Kinto's policies), authenticated users may create
buckets, and logging at WARNING.  ``kinto migrate`` creates the schema, ``kinto start`` serves it
with waitress (Kinto's default server, 4 threads) on 127.0.0.1.
"""

from __future__ import annotations

import configparser
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .peers_common import CACHE, HERE, LineClient, stop, wait_http
from .procs import free_port

VENV = CACHE / "kinto-venv"
PACKAGES = ("kinto", "kinto-http", "psycopg2-binary", "SQLAlchemy", "zope.sqlalchemy")


def _bin(name: str) -> Path:
    return VENV / "bin" / name


def ensure_installed(log: Path) -> dict[str, Any]:
    """Create the virtualenv and install Kinto into it unless it is there; returns what was done."""
    if _bin("kinto").exists() and _bin("python").exists():
        return {"installed": False, "seconds": 0.0, "versions": versions()}
    t0 = time.perf_counter()
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, stdout=out, stderr=subprocess.STDOUT)
        subprocess.run([str(_bin("python")), "-m", "pip", "install", "--quiet", *PACKAGES], check=True,
                       stdout=out, stderr=subprocess.STDOUT, timeout=900)
    return {"installed": True, "seconds": round(time.perf_counter() - t0, 1), "versions": versions()}


def versions() -> dict[str, str]:
    code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "('kinto', 'kinto-http', 'waitress', 'psycopg2-binary', 'SQLAlchemy')}))")
    out = subprocess.run([str(_bin("python")), "-c", code], capture_output=True, text=True, check=True)
    import json

    return dict(json.loads(out.stdout))


def sqlalchemy_url(pg_url: str, app_name: str) -> str:
    """A libpq URL (``postgresql://user@/db?host=/socket/dir&port=N``) as SQLAlchemy/psycopg2 takes it."""
    sep = "&" if "?" in pg_url else "?"
    return f"{pg_url}{sep}application_name={app_name}"


class KintoServer:
    """``kinto start`` on 127.0.0.1 with the memory backend or PostgreSQL (``pg_url``)."""

    def __init__(self, folder: Path, backend: str, pg_url: str | None = None, app_name: str = "kinto-bench") -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.ini = folder / "kinto.ini"
        self.log = folder / "kinto.log"
        self.port = free_port()
        with open(self.log, "ab") as out:
            subprocess.run([str(_bin("kinto")), "init", "--ini", str(self.ini), "--backend", backend,
                            "--cache-backend", "memory", "--host", "127.0.0.1"], check=True, stdout=out,
                           stderr=subprocess.STDOUT)
        cfg = configparser.RawConfigParser()
        cfg.read(self.ini)
        app = cfg["app:main"]
        app["multiauth.policies"] = "basicauth"
        app["kinto.bucket_create_principals"] = "system.Authenticated"
        if backend == "postgresql":
            if pg_url is None:
                raise ValueError("the PostgreSQL backend needs a database URL")
            url = sqlalchemy_url(pg_url, app_name)
            app["kinto.storage_url"] = url
            app["kinto.permission_url"] = url
        for section in ("logger_root", "logger_kinto"):
            if section in cfg:
                cfg[section]["level"] = "WARNING"
        with open(self.ini, "w") as fh:
            cfg.write(fh)
        with open(self.log, "ab") as out:
            subprocess.run([str(_bin("kinto")), "migrate", "--ini", str(self.ini)], check=True, stdout=out,
                           stderr=subprocess.STDOUT, timeout=120)
        self.url = f"http://127.0.0.1:{self.port}/v1"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([str(_bin("kinto")), "start", "--ini", str(self.ini), "--port",
                                          str(self.port)], stdout=out, stderr=subprocess.STDOUT, cwd=folder)
        try:
            wait_http(f"{self.url}/", self.proc, self.log)
        except BaseException:
            stop(self.proc)
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        stop(self.proc)


def client(server_url: str, data_file: Path, log: Path) -> LineClient:
    """A kinto-http client process (bench/peers_kinto_client.py) for ``server_url`` (the proxy's)."""
    return LineClient([str(_bin("python")), str(HERE / "peers_kinto_client.py"), server_url, str(data_file)], log)
