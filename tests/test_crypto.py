"""PIN unlock, lockout, crypto-erase, PIN change and ciphertext integrity."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

import fieldsync
from fieldsync import (
    IntegrityError,
    PinLockedError,
    Store,
    StoreErasedError,
    WrongPinError,
    unlock,
)
from fieldsync.crypto import Keyring

PIN = "2580"
WRONG = "0000"
GRID = "wc-lds-hys-01"


def household(**over: object) -> dict[str, object]:
    return {"grid_id": GRID, "address": "武昌区粮道街花园山社区5栋1单元202", "head_name": "王建华",
            "phone": "13907130001", **over}


def raw_meta(path: Path, key: str) -> object:
    with sqlite3.connect(path) as raw:
        row = raw.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    raw.close()
    return row[0] if row else None


def files_bytes(path: Path) -> bytes:
    out = b""
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        if p.exists():
            out += p.read_bytes()
    return out


@pytest.fixture
def closed_store(store: Store, store_path: Path) -> Path:
    store.put("households", household())
    store.close()
    return store_path


# -- wrong PIN, delay, erase ------------------------------------------------

def test_wrong_pin_counts_down_and_delays(closed_store: Path, now) -> None:
    seen = []
    for failures in range(1, 5):
        with pytest.raises(WrongPinError) as err:
            Store.open(closed_store, WRONG, now=now)
        assert err.value.attempts_left == unlock.MAX_FAILURES - failures
        assert err.value.retry_after == unlock.delay_after(failures)
        assert "PIN" in str(err.value) and WRONG not in str(err.value)
        seen.append(err.value.retry_after)
    assert seen[:3] == [0, 0, 0] and seen[3] > 0  # the delay starts after the 4th failure
    assert raw_meta(closed_store, "failed_pins") == 4


def test_locked_during_delay_then_right_pin_resets(closed_store: Path, now) -> None:
    for _ in range(4):
        with pytest.raises(WrongPinError):
            Store.open(closed_store, WRONG, now=now)
    delay = unlock.delay_after(4)
    assert delay > 0
    now.advance(delay / 2)
    # Even the right PIN is refused while the delay runs, and the refusal is not a failure.
    with pytest.raises(PinLockedError) as err:
        Store.open(closed_store, PIN, now=now)
    assert 0 < err.value.retry_after <= delay / 2 + 0.001
    with pytest.raises(PinLockedError):
        Store.open(closed_store, WRONG, now=now)
    assert raw_meta(closed_store, "failed_pins") == 4
    now.advance(delay / 2 + 1)
    store = Store.open(closed_store, PIN, now=now)
    assert store.count("households") == 1
    store.close()
    assert raw_meta(closed_store, "failed_pins") == 0
    with pytest.raises(WrongPinError) as again:
        Store.open(closed_store, WRONG, now=now)
    assert again.value.attempts_left == unlock.MAX_FAILURES - 1 and again.value.retry_after == 0


def test_ten_wrong_pins_crypto_erase(closed_store: Path, now) -> None:
    wrapped = raw_meta(closed_store, "wrapped_dek")
    salt = raw_meta(closed_store, "salt")
    assert isinstance(wrapped, bytes) and len(wrapped) >= 48 and isinstance(salt, bytes)
    assert wrapped in files_bytes(closed_store)  # the scan below can find it
    for failures in range(1, unlock.MAX_FAILURES):
        with pytest.raises(WrongPinError) as err:
            Store.open(closed_store, WRONG, now=now)
        assert err.value.attempts_left == unlock.MAX_FAILURES - failures
        now.advance(err.value.retry_after + 1)
    with pytest.raises(StoreErasedError):
        Store.open(closed_store, WRONG, now=now)
    with pytest.raises(StoreErasedError):
        Store.open(closed_store, PIN, now=now)
    now.advance(86_400)
    with pytest.raises(StoreErasedError):
        Store.open(closed_store, PIN, now=now)
    assert raw_meta(closed_store, "wrapped_dek") is None
    everything = files_bytes(closed_store)
    assert wrapped not in everything
    assert wrapped[12:28] not in everything  # no fragment of the wrapped key's ciphertext either
    assert salt not in everything


def test_erase_while_other_connection_reads(closed_store: Path, now) -> None:
    """A reader holding the WAL open must not leave the wrapped key behind once it lets go."""
    wrapped = raw_meta(closed_store, "wrapped_dek")
    reader = Store.open(closed_store, PIN, now=now)
    for _ in range(unlock.MAX_FAILURES - 1):
        with pytest.raises(WrongPinError) as err:
            Store.open(closed_store, WRONG, now=now)
        now.advance(err.value.retry_after + 1)
    with pytest.raises(StoreErasedError):
        Store.open(closed_store, WRONG, now=now)
    reader.close()
    with pytest.raises(StoreErasedError):
        Store.open(closed_store, PIN, now=now)
    assert wrapped not in files_bytes(closed_store)


def test_store_erase(store: Store, store_path: Path) -> None:
    store.put("households", household())
    wrapped = raw_meta(store_path, "wrapped_dek")
    store.erase()
    with pytest.raises(fieldsync.StoreError):
        store.put("households", household())
    with pytest.raises(StoreErasedError):
        Store.open(store_path, PIN)
    assert wrapped not in files_bytes(store_path)


# -- PIN change ---------------------------------------------------------------

def test_change_pin(store: Store, store_path: Path) -> None:
    hid = store.put("households", household())
    wrapped_before = raw_meta(store_path, "wrapped_dek")
    body_before = _body(store_path, hid)
    store.change_pin(PIN, "731946")
    store.close()
    with pytest.raises(WrongPinError):
        Store.open(store_path, PIN)
    again = Store.open(store_path, "731946")
    assert again.get("households", hid)["head_name"] == "王建华"
    assert [r["id"] for r in again.find("households", "head_name", "王建华")] == [hid]
    # the data key was re-wrapped, the data itself was not re-encrypted
    assert raw_meta(store_path, "wrapped_dek") != wrapped_before
    assert _body(store_path, hid) == body_before
    assert json.loads(raw_meta(store_path, "kdf"))["n"] == 2**10  # cost kept
    assert raw_meta(store_path, "failed_pins") == 0


def test_change_pin_leaves_no_old_wrapped_key_on_disk(store: Store, store_path: Path) -> None:
    """A PIN changed because it leaked must not still unlock a copy of the files taken later."""
    store.put("households", household())
    old_wrapped = raw_meta(store_path, "wrapped_dek")
    old_salt = raw_meta(store_path, "salt")
    assert old_wrapped in files_bytes(store_path)
    store.change_pin(PIN, "731946")
    store.put("households", household(room="203"))  # the store stays open and in use
    everything = files_bytes(store_path)
    assert old_wrapped not in everything and old_salt not in everything


def test_change_pin_with_wrong_old_pin(store: Store, store_path: Path) -> None:
    with pytest.raises(WrongPinError) as err:
        store.change_pin(WRONG, "731946")
    assert err.value.attempts_left == unlock.MAX_FAILURES - 1
    with pytest.raises(fieldsync.AuthError):
        store.change_pin(PIN, "12")  # too short
    store.close()
    with pytest.raises(WrongPinError):
        Store.open(store_path, "731946")
    assert Store.open(store_path, PIN).count("households") == 0


def test_change_pin_cannot_bypass_the_lockout(store: Store, store_path: Path) -> None:
    """Guessing through change_pin on an unlocked store counts like guessing at open."""
    wrapped = raw_meta(store_path, "wrapped_dek")
    failures = 0
    erased = False
    for _ in range(unlock.MAX_FAILURES + 2):
        # Skip the waiting: put the lock time in the past, as if the delay had run.
        with sqlite3.connect(store_path) as raw:
            raw.execute("UPDATE meta SET value = 0 WHERE key = 'locked_until'")
        raw.close()
        try:
            store.change_pin(f"{1000 + failures}", "731946")
        except WrongPinError:
            failures += 1
        except StoreErasedError:
            erased = True
            break
    assert erased, "10 wrong PINs through change_pin must crypto-erase the store"
    assert raw_meta(store_path, "wrapped_dek") is None
    store.close()
    with pytest.raises(StoreErasedError):
        Store.open(store_path, PIN)
    assert wrapped not in files_bytes(store_path)


# -- integrity of stored ciphertext --------------------------------------------

def _body(path: Path, rid: str) -> bytes:
    with sqlite3.connect(path) as raw:
        (body,) = raw.execute("SELECT body FROM records WHERE id = ?", (rid,)).fetchone()
    raw.close()
    return bytes(body)


def _set_body(path: Path, rid: str, body: bytes) -> None:
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE records SET body = ? WHERE id = ?", (body, rid))
    raw.close()


@pytest.mark.parametrize("position", [0, 12, 30, -1])
def test_flipped_bit_in_body_is_detected(store: Store, store_path: Path, position: int) -> None:
    hid = store.put("households", household())
    other = store.put("households", household(room="203"))
    store.close()
    body = bytearray(_body(store_path, hid))
    body[position] ^= 0x01
    _set_body(store_path, hid, bytes(body))
    again = Store.open(store_path, PIN)
    with pytest.raises(IntegrityError) as err:
        again.get("households", hid)
    assert "households" in str(err.value) and hid in str(err.value)
    assert "integrity" in str(err.value)
    assert "王建华" not in str(err.value)
    assert again.get("households", other)["room"] == "203"  # the rest is still readable
    with pytest.raises(IntegrityError):
        again.list("households")


def test_body_copied_to_another_row_is_detected(store: Store, store_path: Path) -> None:
    a = store.put("households", household(head_name="王建华"))
    b = store.put("households", household(head_name="刘芳"))
    store.close()
    _set_body(store_path, b, _body(store_path, a))
    again = Store.open(store_path, PIN)
    with pytest.raises(IntegrityError) as err:
        again.get("households", b)
    assert b in str(err.value) and "households" in str(err.value)
    assert again.get("households", a)["head_name"] == "王建华"


def test_body_moved_to_another_collection_is_detected(store: Store, store_path: Path) -> None:
    rid = store.put("households", household(id="x-1"))
    store.close()
    with sqlite3.connect(store_path) as raw:
        raw.execute("UPDATE records SET collection = 'tasks' WHERE id = ?", (rid,))
    raw.close()
    again = Store.open(store_path, PIN)
    with pytest.raises(IntegrityError):
        again.get("tasks", rid)


def test_truncated_body_is_detected(store: Store, store_path: Path) -> None:
    hid = store.put("households", household())
    store.close()
    _set_body(store_path, hid, _body(store_path, hid)[:8])
    with pytest.raises(IntegrityError):
        Store.open(store_path, PIN).get("households", hid)


# -- Keyring --------------------------------------------------------------------

def test_keyring_seal_open_round_trip_and_wrong_place() -> None:
    keys = Keyring(os.urandom(32))
    plain = json.dumps({"name": "欧阳娜娜"}, ensure_ascii=False).encode()
    sealed = keys.seal(plain, "residents", "r1")
    assert plain not in sealed and keys.open(sealed, "residents", "r1") == plain
    assert keys.seal(plain, "residents", "r1") != sealed  # random nonce
    for place in (("residents", "r2"), ("households", "r1"), ("residentsr1",), ("resident", "sr1")):
        with pytest.raises(IntegrityError):
            keys.open(sealed, *place)
    with pytest.raises(IntegrityError):
        Keyring(os.urandom(32)).open(sealed, "residents", "r1")
    with pytest.raises(ValueError):
        Keyring(b"short")


def test_blind_tokens_deterministic_per_key() -> None:
    dek = os.urandom(32)
    a, b, other = Keyring(dek), Keyring(dek), Keyring(os.urandom(32))
    t = a.blind_token("residents", "name", "欧阳娜娜")
    assert t == b.blind_token("residents", "name", "欧阳娜娜")
    assert t != other.blind_token("residents", "name", "欧阳娜娜")
    assert t != a.blind_token("residents", "name", "欧阳娜")
    assert t != a.blind_token("households", "name", "欧阳娜娜")
    assert "欧阳娜娜".encode() not in t


def test_blind_tokens_differ_across_stores(tmp_path: Path, fast_kdf: fieldsync.KdfParams) -> None:
    tokens = []
    for name in ("a.fsdb", "b.fsdb"):
        s = Store.create(tmp_path / name, PIN, kdf=fast_kdf)
        h1 = s.put("households", household(head_name="欧阳娜娜", room="101"))
        h2 = s.put("households", household(head_name="欧阳 娜娜", room="102"))
        with sqlite3.connect(tmp_path / name) as raw:
            rows = dict(raw.execute("SELECT id, token FROM search WHERE field = 'head_name'").fetchall())
        raw.close()
        assert rows[h1] == rows[h2]  # same normalised name, same token within one store
        tokens.append(rows[h1])
    assert tokens[0] != tokens[1]


# -- the production KDF ---------------------------------------------------------

def test_default_kdf_is_owasp_scrypt(store_path: Path) -> None:
    store = Store.create(store_path, PIN)
    hid = store.put("households", household())
    store.close()
    assert json.loads(raw_meta(store_path, "kdf")) == {"name": "scrypt", "n": 131072, "r": 8, "p": 1}
    assert len(raw_meta(store_path, "salt")) >= 16
    with Store.open(store_path, PIN) as again:
        assert again.get("households", hid)["head_name"] == "王建华"
