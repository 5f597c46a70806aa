"""Encrypted, chunked attachment files: round trip, dedup, tamper detection, flat memory."""

from __future__ import annotations

import hashlib
import io
import os
import random
import struct
import tracemalloc
from pathlib import Path

import pytest

from fieldsync import IntegrityError, RecordNotFound, Store
from fieldsync.crypto import CHUNK_SIZE

PIN = "2580"
JPEG_HEADER = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    rng = random.Random(20261128)
    path = tmp_path / "patrol-photo.jpg"
    path.write_bytes(JPEG_HEADER + rng.randbytes(300 * 1024) + b"\xff\xd9")
    return path


def _file_of(store: Store, content_hash: str) -> Path:
    files = [p for p in store.attachments.folder.iterdir() if not p.name.startswith(".")]
    assert len(files) == 1
    return files[0]


def test_add_and_read_back(store: Store, photo: Path) -> None:
    data = photo.read_bytes()
    assert len(data) > 4 * CHUNK_SIZE  # several chunks
    att = store.attachments.add(photo)
    assert att.hash == hashlib.sha256(data).hexdigest()
    assert att.size == len(data)
    assert store.attachments.exists(att.hash)
    assert store.attachments.size(att.hash) == len(data)
    assert store.attachments.read(att.hash) == data
    chunks = list(store.attachments.chunks(att.hash))
    assert len(chunks) > 1 and b"".join(chunks) == data
    out = io.BytesIO()
    assert store.attachments.export(att.hash, out) == len(data)
    assert out.getvalue() == data
    stored = _file_of(store, att.hash).read_bytes()
    assert JPEG_HEADER not in stored and data[1000:1064] not in stored


def test_add_from_open_file_and_reopen(store: Store, store_path: Path, photo: Path) -> None:
    with open(photo, "rb") as fh:
        fh.seek(0)
        att = store.attachments.add(fh)
    store.close()
    with Store.open(store_path, PIN) as again:
        assert again.attachments.read(att.hash) == photo.read_bytes()


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE])
def test_chunk_boundaries(store: Store, size: int) -> None:
    data = os.urandom(size)
    att = store.attachments.add(io.BytesIO(data))
    assert att.size == size
    assert store.attachments.read(att.hash) == data


def test_adding_twice_keeps_one_file(store: Store, photo: Path, tmp_path: Path) -> None:
    first = store.attachments.add(photo)
    copy = tmp_path / "same-photo-again.jpg"
    copy.write_bytes(photo.read_bytes())
    second = store.attachments.add(copy)
    assert first == second
    assert len([p for p in store.attachments.folder.iterdir()]) == 1
    assert store.status().attachments == 1


def test_file_names_do_not_reveal_the_hash(store: Store, photo: Path) -> None:
    att = store.attachments.add(photo)
    other = store.attachments.add(io.BytesIO(b"second file"))
    names = [p.name for p in store.attachments.folder.iterdir()]
    assert len(names) == 2
    for name in names:
        for h in (att.hash, other.hash):
            assert h[:16] not in name and h[-16:] not in name


def test_missing_attachment(store: Store) -> None:
    with pytest.raises(RecordNotFound):
        store.attachments.read("0" * 64)
    with pytest.raises(RecordNotFound):
        store.attachments.size("0" * 64)
    assert not store.attachments.exists("0" * 64)


def test_remove(store: Store, photo: Path) -> None:
    att = store.attachments.add(photo)
    store.attachments.remove(att.hash)
    assert not store.attachments.exists(att.hash)
    assert list(store.attachments.folder.iterdir()) == []
    store.attachments.remove(att.hash)  # removing twice is harmless
    assert store.attachments.add(photo) == att
    assert store.attachments.read(att.hash) == photo.read_bytes()


def test_deleted_file_is_an_integrity_error(store: Store, photo: Path) -> None:
    att = store.attachments.add(photo)
    _file_of(store, att.hash).unlink()
    with pytest.raises(IntegrityError):
        store.attachments.read(att.hash)


# -- tampering ------------------------------------------------------------------

HEADER = 4 + 16  # magic + per-file key salt


def _frames(blob: bytes) -> tuple[bytes, list[bytes]]:
    """Split an encrypted stream into its header and length-prefixed chunk frames."""
    header, pos, frames = blob[:HEADER], HEADER, []
    while pos < len(blob):
        (size,) = struct.unpack(">I", blob[pos:pos + 4])
        frames.append(blob[pos:pos + 4 + size])
        pos += 4 + size
    return header, frames


def _truncate_at_frame(blob: bytes) -> bytes:
    header, frames = _frames(blob)
    return header + b"".join(frames[:-1])  # a whole final chunk dropped


def _swap_chunks(blob: bytes) -> bytes:
    header, frames = _frames(blob)
    frames[0], frames[1] = frames[1], frames[0]
    return header + b"".join(frames)


def _flip_byte(blob: bytes) -> bytes:
    b = bytearray(blob)
    b[len(b) // 2] ^= 0x40
    return bytes(b)


TAMPERS = {
    "truncated-mid-chunk": lambda b: b[: len(b) - 100],
    "truncated-at-chunk-boundary": _truncate_at_frame,
    "truncated-to-header": lambda b: b[:HEADER],
    "flipped-byte": _flip_byte,
    "flipped-header": lambda b: bytes([b[0] ^ 1]) + b[1:],
    "swapped-chunks": _swap_chunks,
    "appended-bytes": lambda b: b + b"\x00" * 16,
    "appended-chunk": lambda b: b + _frames(b)[1][0],
    "empty": lambda b: b"",
}


@pytest.mark.parametrize("tamper", sorted(TAMPERS))
def test_tampered_file_is_an_integrity_error(store: Store, photo: Path, tamper: str) -> None:
    att = store.attachments.add(photo)
    path = _file_of(store, att.hash)
    blob = path.read_bytes()
    assert len(_frames(blob)[1]) >= 5
    changed = TAMPERS[tamper](blob)
    assert changed != blob
    path.write_bytes(changed)
    with pytest.raises(IntegrityError) as err:
        store.attachments.read(att.hash)
    assert att.hash[:12] in str(err.value)
    with pytest.raises(IntegrityError):
        store.attachments.export(att.hash, io.BytesIO())


def test_file_swapped_with_another_attachment_is_detected(store: Store, photo: Path) -> None:
    a = store.attachments.add(photo)
    (pa,) = store.attachments.folder.iterdir()
    b = store.attachments.add(io.BytesIO(os.urandom(3 * CHUNK_SIZE)))
    (pb,) = set(store.attachments.folder.iterdir()) - {pa}
    blob_a, blob_b = pa.read_bytes(), pb.read_bytes()
    pa.write_bytes(blob_b)
    pb.write_bytes(blob_a)
    for h in (a.hash, b.hash):
        with pytest.raises(IntegrityError):
            store.attachments.read(h)


# -- crash leftovers and memory -----------------------------------------------------

def test_leftover_tmp_files_are_cleaned_on_open(store: Store, store_path: Path, photo: Path) -> None:
    att = store.attachments.add(photo)
    folder = store.attachments.folder
    store.close()
    for i in range(3):
        (folder / f".tmp-{i:016x}").write_bytes(os.urandom(5000))  # half-written by a killed process
    assert len(list(folder.glob(".tmp-*"))) == 3
    with Store.open(store_path, PIN) as again:
        assert list(folder.glob(".tmp-*")) == []
        assert again.attachments.read(att.hash) == photo.read_bytes()
        assert len(list(folder.iterdir())) == 1


def test_memory_stays_flat_for_big_files(store: Store, tmp_path: Path) -> None:
    big = tmp_path / "video.mp4"
    block = os.urandom(1024 * 1024)
    with open(big, "wb") as fh:
        for i in range(20):
            fh.write(bytes([i]) + block[1:])
    size = big.stat().st_size
    limit = 4 * 1024 * 1024

    tracemalloc.start()
    try:
        att = store.attachments.add(big)
        _, peak_add = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        out_path = tmp_path / "exported.mp4"
        with open(out_path, "wb") as out:
            n = store.attachments.export(att.hash, out)
        _, peak_export = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == size == att.size == 20 * 1024 * 1024
    assert peak_add < limit, f"add() peaked at {peak_add} bytes"
    assert peak_export < limit, f"export() peaked at {peak_export} bytes"
    digest = hashlib.sha256()
    with open(out_path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    assert digest.hexdigest() == att.hash
