"""The public surface: ``fieldsync.__all__`` is exactly the API, and every ``__all__`` is honest."""

from __future__ import annotations

import importlib
import os
import pkgutil
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import fieldsync

EXPECTED_PUBLIC = {
    # the store
    "Store", "StoreStatus", "OutboxEntry",
    # record kinds
    "Kind", "Field", "Registry", "default_registry", "SCHEMA_VERSION",
    # clock and keys
    "HybridClock", "Stamp", "KdfParams",
    # errors
    "FieldsyncError", "ValidationError", "UnknownKindError", "RecordNotFound", "ClockDriftError",
    "StoreError", "IntegrityError", "StoreFullError", "NotAStoreError",
    "AuthError", "WrongPinError", "PinLockedError", "StoreErasedError",
    "SyncError", "NetworkError", "ServerError", "ProtocolError", "RequestRejected", "DeviceRevokedError",
}


def test_all_is_exactly_the_public_api() -> None:
    assert len(fieldsync.__all__) == len(set(fieldsync.__all__)), "duplicates in __all__"
    assert set(fieldsync.__all__) == EXPECTED_PUBLIC


def test_every_public_name_imports() -> None:
    namespace: dict[str, object] = {}
    exec("from fieldsync import *", namespace)
    for name in EXPECTED_PUBLIC:
        assert name in namespace, name
        assert getattr(fieldsync, name) is namespace[name]


def test_errors_form_one_tree() -> None:
    for name in fieldsync.__all__:
        obj = getattr(fieldsync, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, fieldsync.FieldsyncError), name
    assert issubclass(fieldsync.WrongPinError, fieldsync.AuthError)
    assert issubclass(fieldsync.IntegrityError, fieldsync.StoreError)
    assert issubclass(fieldsync.DeviceRevokedError, fieldsync.RequestRejected)


def _modules() -> list[str]:
    return sorted(f"fieldsync.{m.name}" for m in pkgutil.iter_modules(fieldsync.__path__))


def test_every_module_all_names_exist() -> None:
    modules = _modules()
    assert {"fieldsync.store", "fieldsync.crypto", "fieldsync.errors", "fieldsync.schema"} <= set(modules)
    checked = 0
    for name in modules:
        module = importlib.import_module(name)
        exported = getattr(module, "__all__", None)
        if exported is None:
            continue
        checked += 1
        assert len(exported) == len(set(exported)), f"{name}.__all__ has duplicates"
        missing = [n for n in exported if not hasattr(module, n)]
        assert not missing, f"{name}.__all__ names missing attributes: {missing}"
    assert checked >= 8


def test_no_private_names_in_public_all() -> None:
    for name in _modules():
        exported = getattr(importlib.import_module(name), "__all__", [])
        assert not [n for n in exported if n.startswith("_")], name


def test_postgres_tests_fail_instead_of_skipping_when_required(tmp_path: Path) -> None:
    """The conftest hook: with FIELDSYNC_REQUIRE_PG=1 a skipped ``postgres`` test is a failure."""
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    postgres: needs PostgreSQL\n")
    (tmp_path / "test_pg.py").write_text(textwrap.dedent("""
        import pytest

        @pytest.mark.postgres
        def test_needs_pg():
            pytest.skip("FIELDSYNC_TEST_PG is not set")

        @pytest.mark.postgres
        @pytest.mark.skip(reason="no server")
        def test_marked_skip():
            pass

        def test_other_skip():
            pytest.skip("not a postgres test")
    """))

    def run(require: str | None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "FIELDSYNC_REQUIRE_PG"}
        if require is not None:
            env["FIELDSYNC_REQUIRE_PG"] = require
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfs", str(tmp_path)],
                              cwd=tmp_path, env=env, text=True, capture_output=True, timeout=120)

    relaxed = run(None)
    assert relaxed.returncode == 0, relaxed.stdout
    assert "3 skipped" in relaxed.stdout

    strict = run("1")
    assert strict.returncode == 1, strict.stdout
    # a skip raised in the test body fails it; a skip marker (setup phase) becomes an error
    assert "1 failed, 1 skipped, 1 error" in strict.stdout, strict.stdout
    assert "FIELDSYNC_REQUIRE_PG=1" in strict.stdout
