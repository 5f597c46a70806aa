"""PouchDB for :mod:`bench.peers`: node packages in a cache folder, an express-pouchdb server, a PouchDB client.

``bench/pouch/package.json`` is copied to ``$FIELDSYNC_BENCH_CACHE/pouch`` (default
``~/.cache/fieldsync-bench``) and ``npm install`` runs there the first time (and again when the
package.json changes); the node scripts in ``bench/pouch/`` find the modules through ``NODE_PATH``.
The server is express 4 + express-pouchdb (``minimumForPouchDB`` mode: the CouchDB replication
API with gzip compression) on PouchDB's in-memory adapter; the client replicates in-memory
PouchDB databases with it over HTTP.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from .peers_common import CACHE, HERE, LineClient, stop

SRC = HERE / "pouch"
DIR = CACHE / "pouch"


def _env() -> dict[str, str]:
    return {"NODE_PATH": str(DIR / "node_modules"), "NODE_ENV": "production"}


def ensure_installed(log: Path) -> dict[str, Any]:
    """``npm install`` bench/pouch/package.json into the cache folder unless it is already there."""
    DIR.mkdir(parents=True, exist_ok=True)
    wanted = (SRC / "package.json").read_text()
    have = (DIR / "package.json").read_text() if (DIR / "package.json").exists() else None
    if have == wanted and (DIR / "node_modules" / "express-pouchdb").is_dir():
        return {"installed": False, "seconds": 0.0, "versions": versions()}
    t0 = time.perf_counter()
    shutil.copy(SRC / "package.json", DIR / "package.json")
    with open(log, "ab") as out:
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--omit=dev"], cwd=DIR, check=True,
                       stdout=out, stderr=subprocess.STDOUT, timeout=900)
    return {"installed": True, "seconds": round(time.perf_counter() - t0, 1), "versions": versions()}


def versions() -> dict[str, str]:
    out = {"node": subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()}
    for name in ("pouchdb-core", "pouchdb-adapter-memory", "express-pouchdb", "express"):
        try:
            out[name] = json.loads((DIR / "node_modules" / name / "package.json").read_text())["version"]
        except (OSError, ValueError, KeyError):
            out[name] = "?"
    return out


class PouchServer:
    """``node bench/pouch/server.js`` on 127.0.0.1."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.log = folder / "pouch-server.log"
        self._err = open(self.log, "wb")
        # cwd: express-pouchdb may leave files (config, log) in its working directory.
        self.proc = subprocess.Popen(["node", str(SRC / "server.js"), "0"], stdout=subprocess.PIPE,
                                     stderr=self._err, text=True, cwd=folder, env={**_os_env(), **_env()})
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "listening":
            stop(self.proc)
            raise RuntimeError(f"the PouchDB server did not start:\n{self.log.read_text()[-4000:]}")
        self.port = int(line[1])
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        stop(self.proc)
        self._err.close()


def _os_env() -> dict[str, str]:
    import os

    return dict(os.environ)


def client(db_url: str, data_file: Path, batch_size: int, log: Path) -> LineClient:
    """``node bench/pouch/client.js`` replicating with ``db_url`` (the proxy's)."""
    return LineClient(["node", str(SRC / "client.js"), db_url, str(data_file), str(batch_size)], log, env=_env())
