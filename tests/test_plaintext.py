"""No personal data in clear on disk: the database, its WAL and shm, the attachment folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlite_utils import Database

import fieldsync
from fieldsync import Store

PIN = "2580"
GRID = "wc-lds-hys-01"
NAME = "欧阳娜娜"
HEAD = "司马光明"
ID_NUMBER = "420106195203150020"
PHONE = "13912345678"
ADDRESS = "花园山社区7栋3单元502"
NOTES = "老人腿脚不便,需要每周送菜上门"
MARKER = b"FIELDSYNC-PHOTO-MARKER-7f3a9c"

TEXT_SECRETS = [NAME, HEAD, ID_NUMBER, PHONE, ADDRESS, NOTES, "每周送菜上门"]


def needles() -> dict[str, bytes]:
    out = {f"utf8:{s}": s.encode("utf-8") for s in TEXT_SECRETS}
    for s in (ID_NUMBER, PHONE, NAME):
        out[f"utf16le:{s}"] = s.encode("utf-16-le")
    out["ascii:id-number-tail"] = ID_NUMBER[6:].encode("ascii")  # birth date + sequence
    out["ascii:phone-tail"] = PHONE[3:].encode("ascii")
    out["photo-marker"] = MARKER
    return out


def scan(paths: list[Path]) -> list[str]:
    """Names of the needles found in any of ``paths`` (files, or every file under folders)."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files.extend(q for q in sorted(p.rglob("*")) if q.is_file())
        elif p.exists():
            files.append(p)
    found = []
    for f in files:
        data = f.read_bytes()
        found += [f"{label} in {f.name}" for label, needle in needles().items() if needle in data]
    return found


def records() -> tuple[dict[str, object], dict[str, object], dict[str, object]]:
    hh = {"id": "h-0702", "grid_id": GRID, "address": f"武昌区粮道街{ADDRESS}", "head_name": HEAD,
          "phone": PHONE, "members": 2, "tags": ["独居老人"], "notes": NOTES}
    res = {"id": "r-0702-1", "grid_id": GRID, "household_id": "h-0702", "name": NAME, "id_number": ID_NUMBER,
           "birth_date": "1952-03-15", "gender": "女", "phone": PHONE, "relation": "户主"}
    visit = {"id": "v-0001", "grid_id": GRID, "household_id": "h-0702", "worker_id": "w-lijing",
             "visited_at": "2026-11-28T09:30:00+08:00", "purpose": "探访", "notes": NOTES}
    return hh, res, visit


def store_files(path: Path) -> list[Path]:
    return [path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-attachments")]


def test_no_plaintext_on_disk(store_path: Path, fast_kdf: fieldsync.KdfParams, tmp_path: Path) -> None:
    store = Store.create(store_path, PIN, kdf=fast_kdf)
    hh, res, visit = records()
    store.put("households", hh)
    store.put("residents", res)
    store.put("visits", visit)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0" + MARKER * 50 + bytes(200_000) + MARKER)
    photo_hash = store.attachments.add(photo).hash
    # updates and deletes leave old versions behind in pages and WAL frames
    store.put("residents", {"id": "r-0702-1", "relation": "本人", "tags": ["独居老人"]})
    store.put("households", {"id": "h-0702", "notes": NOTES + "(已安排志愿者)"})
    extra = store.put("residents", {**res, "id": "r-0702-2", "name": NAME + "的女儿", "relation": "女儿",
                                    "id_number": None})
    store.delete("residents", extra)
    store.delete("visits", "v-0001")
    store.put("visits", {**visit, "id": "v-0002"})
    assert [r["id"] for r in store.find("residents", "name", NAME)] == ["r-0702-1"]

    wal = Path(f"{store_path}-wal")
    assert wal.exists() and wal.stat().st_size > 0, "the scan must cover a live WAL"
    assert Path(f"{store_path}-shm").exists()
    assert len(list(Path(f"{store_path}-attachments").iterdir())) == 1
    assert scan(store_files(store_path)) == []

    # The photo's content hash is not stored in clear either: a copy of the
    # files must not prove that the tablet holds a given (known) photo.
    raw = b"".join(f.read_bytes() for f in store_files(store_path) if f.is_file())
    assert photo_hash.encode() not in raw and bytes.fromhex(photo_hash) not in raw

    store.close()
    assert scan(store_files(store_path)) == []
    with Store.open(store_path, PIN) as again:  # the data is really there, just sealed
        assert again.get("residents", "r-0702-1")["id_number"] == ID_NUMBER


def test_scan_finds_plaintext_in_a_plain_database(tmp_path: Path) -> None:
    """Positive control: the same scan over an unencrypted sqlite-utils file finds every value."""
    path = tmp_path / "plain.db"
    db = Database(path)
    db.execute("PRAGMA journal_mode=WAL")
    hh, res, visit = records()
    db["households"].insert(hh | {"tags": "独居老人"}, pk="id")
    db["residents"].insert(res, pk="id")
    db["visits"].insert(visit, pk="id")
    db["residents_utf16"].insert({"id_number": ID_NUMBER.encode("utf-16-le"), "phone": PHONE.encode("utf-16-le"),
                                  "name": NAME.encode("utf-16-le")})
    folder = tmp_path / "plain-attachments"
    folder.mkdir()
    (folder / "photo.jpg").write_bytes(b"\xff\xd8" + MARKER)
    found = scan([path, Path(f"{path}-wal"), folder])
    db.close()
    labels = {f.split(" in ")[0] for f in found}
    assert labels == set(needles())


@pytest.mark.parametrize("needle", [NAME, ID_NUMBER, PHONE])
def test_search_index_holds_no_plaintext(store: Store, needle: str) -> None:
    hh, res, _ = records()
    store.put("households", hh)
    store.put("residents", res)
    rows = store.db.execute("SELECT collection, field, token, id FROM search").fetchall()
    assert rows, "the blind index must have tokens"
    for row in rows:
        for cell in row:
            blob = cell if isinstance(cell, bytes) else str(cell).encode()
            assert needle.encode() not in blob
