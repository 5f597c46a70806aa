"""Encryption at rest: the key hierarchy, record sealing, blind indexes, streams.

Key hierarchy (DESIGN §3)::

    PIN --scrypt(salt, N, r, p)--> KEK --AES-GCM wrap--> DEK (random, 256 bit)
    DEK --HKDF "record"-------> record key      (AES-256-GCM, record bodies)
    DEK --HKDF "blind-index"--> index key       (HMAC-SHA256, search tokens)
    DEK --HKDF "attachment"---> attachment key  (AES-256-GCM, chunked streams)

Every decryption failure becomes :class:`IntegrityError` (or, for the key
wrap, a wrong PIN); nothing here logs or returns plaintext in an error.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import asdict, dataclass
from typing import BinaryIO, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .errors import IntegrityError

__all__ = [
    "KdfParams",
    "OWASP_SCRYPT",
    "derive_kek",
    "wrap_key",
    "unwrap_key",
    "Keyring",
    "CHUNK_SIZE",
]

NONCE_SIZE = 12
KEY_SIZE = 32
CHUNK_SIZE = 64 * 1024
_STREAM_MAGIC = b"FSA2"
_SALT_SIZE = 16


@dataclass(frozen=True)
class KdfParams:
    """scrypt cost parameters; stored beside the wrapped key so they can grow later."""

    n: int = 2**17
    r: int = 8
    p: int = 1

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


OWASP_SCRYPT = KdfParams()  # OWASP Password Storage Cheat Sheet: N=2^17, r=8, p=1


def derive_kek(pin: str, salt: bytes, params: KdfParams) -> bytes:
    """The key-encryption key for ``pin`` (memory-hard; about 128 MiB at OWASP cost)."""
    kdf = Scrypt(salt=salt, length=KEY_SIZE, n=params.n, r=params.r, p=params.p)
    return kdf.derive(pin.encode("utf-8"))


def wrap_key(kek: bytes, dek: bytes, context: bytes) -> bytes:
    nonce = os.urandom(NONCE_SIZE)
    return nonce + AESGCM(kek).encrypt(nonce, dek, b"fieldsync-wrap:" + context)


def unwrap_key(kek: bytes, wrapped: bytes, context: bytes) -> bytes | None:
    """The data key, or None when ``kek`` is wrong (the PIN did not match)."""
    try:
        return AESGCM(kek).decrypt(wrapped[:NONCE_SIZE], wrapped[NONCE_SIZE:], b"fieldsync-wrap:" + context)
    except InvalidTag:
        return None


def _subkey(dek: bytes, purpose: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=b"fieldsync/" + purpose.encode()).derive(dek)


def _place(*parts: str) -> bytes:
    # Unambiguous associated data: each part prefixed with its 2-byte length.
    out = bytearray()
    for part in parts:
        raw = part.encode()
        out += len(raw).to_bytes(2, "big")
        out += raw
    return bytes(out)


class Keyring:
    """The keys derived from one unlocked data key."""

    def __init__(self, dek: bytes) -> None:
        if len(dek) != KEY_SIZE:
            raise ValueError("data key must be 32 bytes")
        self._records = AESGCM(_subkey(dek, "record"))
        self._index_key = _subkey(dek, "blind-index")
        self._attachment_key = _subkey(dek, "attachment")
        self._names_key = _subkey(dek, "attachment-name")

    # -- records ---------------------------------------------------------
    def seal(self, plaintext: bytes, *place: str) -> bytes:
        """Encrypt ``plaintext`` bound to ``place`` (e.g. collection, record id)."""
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._records.encrypt(nonce, plaintext, _place(*place))

    def open(self, sealed: bytes, *place: str) -> bytes:
        """Decrypt what :meth:`seal` made for the same ``place``; IntegrityError otherwise."""
        try:
            return self._records.decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], _place(*place))
        except (InvalidTag, ValueError, TypeError) as exc:
            raise IntegrityError(f"stored data for {'/'.join(place)} failed its integrity check") from exc

    # -- blind indexes ---------------------------------------------------
    def blind_token(self, collection: str, field: str, normalised: str) -> bytes:
        """A keyed, deterministic search token; reveals nothing without the key."""
        msg = _place(collection, field, normalised)
        return hmac.digest(self._index_key, msg, "sha256")[:16]

    # -- attachments -----------------------------------------------------
    def attachment_name(self, content_hash: str) -> str:
        """The on-disk file name for a content hash (so names do not reveal the hash)."""
        return hmac.new(self._names_key, content_hash.encode(), hashlib.sha256).hexdigest()[:40]

    def _file_cipher(self, salt: bytes) -> AESGCM:
        # Each file has its own key (HKDF of the attachment key with a random
        # 16-byte salt kept in the file header), so nonces never repeat across
        # files however many photos a tablet holds.
        key = HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt, info=b"fieldsync/attachment-file").derive(
            self._attachment_key)
        return AESGCM(key)

    def encrypt_stream(self, src: BinaryIO, dst: BinaryIO, content_hash: str) -> int:
        """Encrypt ``src`` into ``dst`` in chunks; returns plaintext bytes written.

        The file starts with a magic and a random salt that derives this
        file's own key.  Each chunk is its own AES-GCM message (nonce = chunk
        index) whose associated data binds the content hash, the index and
        whether it is the final chunk, so a reordered, dropped or truncated
        chunk fails to decrypt.
        """
        salt = os.urandom(_SALT_SIZE)
        cipher = self._file_cipher(salt)
        dst.write(_STREAM_MAGIC + salt)
        total = 0
        index = 0
        chunk = src.read(CHUNK_SIZE)
        while True:
            nxt = src.read(CHUNK_SIZE) if chunk else b""
            final = not nxt
            nonce = struct.pack(">4xQ", index)
            aad = _place(content_hash, str(index), "final" if final else "more")
            sealed = cipher.encrypt(nonce, chunk, aad)
            dst.write(struct.pack(">I", len(sealed)) + sealed)
            total += len(chunk)
            if final:
                return total
            chunk, index = nxt, index + 1

    def decrypt_stream(self, src: BinaryIO, content_hash: str) -> Iterator[bytes]:
        """Yield plaintext chunks; raises IntegrityError on any tampering or truncation."""
        header = src.read(len(_STREAM_MAGIC) + _SALT_SIZE)
        if len(header) != len(_STREAM_MAGIC) + _SALT_SIZE or not header.startswith(_STREAM_MAGIC):
            raise IntegrityError(f"attachment {content_hash[:12]} is not an encrypted stream")
        cipher = self._file_cipher(header[len(_STREAM_MAGIC):])
        index = 0
        while True:
            size_bytes = src.read(4)
            if len(size_bytes) != 4:
                raise IntegrityError(f"attachment {content_hash[:12]} is truncated")
            (size,) = struct.unpack(">I", size_bytes)
            if size > CHUNK_SIZE + 16:
                raise IntegrityError(f"attachment {content_hash[:12]} has a malformed chunk")
            sealed = src.read(size)
            nonce = struct.pack(">4xQ", index)
            for final in (False, True):
                aad = _place(content_hash, str(index), "final" if final else "more")
                try:
                    chunk = cipher.decrypt(nonce, sealed, aad)
                    break
                except InvalidTag:
                    continue
            else:
                raise IntegrityError(f"attachment {content_hash[:12]} failed its integrity check at chunk {index}")
            yield chunk
            if final:
                if src.read(1):
                    raise IntegrityError(f"attachment {content_hash[:12]} has data after its final chunk")
                return
            index += 1
