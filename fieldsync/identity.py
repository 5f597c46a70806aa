"""The device's identity: its Ed25519 key, its enrollment, request signing.

The private key is generated on the device at enrollment and kept only in the
store, sealed with the data key like any personal data.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .protocol import H_DEVICE, H_NONCE, H_SIGNATURE, H_TIMESTAMP, b64, canonical_request, unb64

if TYPE_CHECKING:
    from .store import Store

__all__ = ["Identity", "new_key", "public_key_b64", "load_identity", "save_identity"]


def new_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_key_b64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return b64(raw)


@dataclass(frozen=True)
class Identity:
    """What a device needs to talk to its server."""

    device_id: str
    worker_id: str
    server_url: str
    key: Ed25519PrivateKey
    ca_bundle: str | None = None

    def sign(self, method: str, path: str, query: str, body: bytes, now_ms: int | None = None) -> dict[str, str]:
        """Headers that authenticate one request (fresh timestamp and nonce each time)."""
        ts = int(time.time() * 1000) if now_ms is None else now_ms
        nonce = os.urandom(16).hex()
        sig = self.key.sign(canonical_request(method, path, query, body, ts, nonce, self.device_id))
        return {H_DEVICE: self.device_id, H_TIMESTAMP: str(ts), H_NONCE: nonce, H_SIGNATURE: b64(sig)}


def save_identity(store: "Store", identity: Identity) -> None:
    raw = identity.key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                     serialization.NoEncryption())
    data = {"device_id": identity.device_id, "worker_id": identity.worker_id, "server_url": identity.server_url,
            "key": b64(raw), "ca_bundle": identity.ca_bundle}
    store._set_secret("identity", json.dumps(data).encode())


def load_identity(store: "Store") -> Identity | None:
    raw = store._get_secret("identity")
    if raw is None:
        return None
    d = json.loads(raw)
    key = Ed25519PrivateKey.from_private_bytes(unb64(d["key"], "key"))
    return Identity(d["device_id"], d["worker_id"], d["server_url"], key, d.get("ca_bundle"))
