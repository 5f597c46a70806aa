"""The two-grid world of the security tests: grid A (w1's) and grid B (w3's) data, a device or a
console user in every authorisation role, and the helpers to enroll a raw key."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from fieldsync.identity import Identity, new_key, public_key_b64
from fieldsync.protocol import dumps
from fieldsync.schema import SCHEMA_VERSION
from fieldsync.transport import Request, Transport

# -- the world: grid A (g1, w1's) and grid B (g2, w3's), devices and staff in every role ---------

PHOTO_A = b"\xff\xd8\xff\xe0" + b"grid-A-photo " * 50
PHOTO_B = b"\xff\xd8\xff\xe0" + b"GRID-B-PHOTO-SECRET " * 50
UPLOAD_A = b"\xff\xd8\xff\xe0" + b"grid-A-new-upload " * 40
# Grid B's personal data: none of it may appear in an answer to anyone outside grid B.
B_SECRETS = {"head_name": "欧阳秘户", "phone": "13977770001", "address": "彭刘杨路秘密巷9号",
             "description": "B网格秘密事件：井盖丢失"}
STAFF_PASSWORDS = {"cc": "zhihui-2019!", "dept-cg": "chengguan-2019!", "dept-ga": "gongan-2019!"}


def sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


@dataclass
class World:
    """Everything a matrix row needs; ``ids`` names the records, ``devices`` the identities per role."""

    district: Any
    transport: Transport
    ids: dict[str, str] = field(default_factory=dict)
    devices: dict[str, Identity] = field(default_factory=dict)

    def b_markers(self) -> list[str]:
        """Text that would show grid B leaked: its personal values, record ids, photo hash and bytes."""
        return [*B_SECRETS.values(), self.ids["hB"], self.ids["rB"], self.ids["hashB"], "GRID-B-PHOTO-SECRET"]

    def audit_head(self) -> int:
        with self.district.db.transaction() as tx:
            row = tx.one("SELECT max(n) FROM audit_log")
        return int(row[0] or 0) if row else 0

    def audit_since(self, n: int) -> list[tuple[str, str, str, str]]:
        with self.district.db.transaction() as tx:
            return [tuple(str(v) for v in r) for r in tx.all(
                "SELECT actor, action, object, detail FROM audit_log WHERE n > ? ORDER BY n", (n,))]


def enroll_raw(transport: Transport, code: str, worker: str, node: str) -> Identity:
    """Enroll a fresh Ed25519 key with ``code`` exactly as a tablet does, over the transport."""
    key = new_key()
    body = dumps({"code": code, "public_key": public_key_b64(key), "node_id": node, "device_name": node,
                  "schema_version": SCHEMA_VERSION})
    resp = transport.handle(Request("POST", "/v1/enroll", "", {"Content-Type": "application/json"}, body))
    assert resp.status == 200, resp.body[:300]
    answer = json.loads(resp.body)
    assert answer["worker_id"] == worker
    return Identity(answer["device_id"], worker, "http://in-process", key)


def build_world(district: Any, transport: Transport) -> World:
    """Grid A and grid B records (households, reports with photos, a review task), devices, staff."""
    from server_stub.accounts import set_password
    from server_stub.replica import Actor
    from server_stub.reportflow import dispatch

    w = World(district, transport)
    tag = secrets.token_hex(3)
    w.ids.update(hA=f"hA{tag}", hB=f"hB{tag}", rA=f"rA{tag}", rB=f"rB{tag}", rUp=f"rUp{tag}", rSub=f"rSub{tag}",
                 rRej=f"rRej{tag}", tB=f"tB{tag}", hashA=sha256(PHOTO_A), hashB=sha256(PHOTO_B),
                 hashUp=sha256(UPLOAD_A))
    district.add_worker("dept-ga", "公安联络员", role="department", department="公安")
    for user, password in STAFF_PASSWORDS.items():
        set_password(district.db, user, password)
    seed = Actor("seed", "admin")
    district.write_many(seed, "households", [
        {"id": w.ids["hA"], "grid_id": "g1", "address": "花园山1栋", "head_name": "李甲", "phone": "13800000001"},
        {"id": w.ids["hB"], "grid_id": "g2", "address": B_SECRETS["address"], "head_name": B_SECRETS["head_name"],
         "phone": B_SECRETS["phone"]},
    ])
    report = {"category": "市容环境", "status": "submitted", "reported_at": "2026-11-01T09:00:00+08:00"}
    district.write_many(seed, "reports", [
        {**report, "id": w.ids["rA"], "grid_id": "g1", "description": "A网格：垃圾堆放", "attachments": [w.ids["hashA"]]},
        {**report, "id": w.ids["rB"], "grid_id": "g2", "description": B_SECRETS["description"],
         "attachments": [w.ids["hashB"]]},
        {**report, "id": w.ids["rUp"], "grid_id": "g1", "description": "A网格：新照片", "attachments": [w.ids["hashUp"]]},
        {**report, "id": w.ids["rSub"], "grid_id": "g2", "description": "B网格：待派遣"},
        {**report, "id": w.ids["rRej"], "grid_id": "g2", "description": "B网格：待驳回"},
    ])
    district.write_many(seed, "tasks", [{"id": w.ids["tB"], "grid_id": "g2", "assignee": "command",
                                         "kind": "duplicate_resident", "title": "核查", "status": "open"}])
    command = Actor("cc", "command")
    dispatch(district, command, w.ids["rA"], "城管", "2030-01-01T10:00:00+08:00")
    dispatch(district, command, w.ids["rB"], "公安", "2030-01-01T10:00:00+08:00")
    for data in (PHOTO_A, PHOTO_B):
        district.attachments.append(sha256(data), 0, data, len(data))

    def device(worker: str, node: str) -> Identity:
        code, _ = district.issue_code(worker)
        return enroll_raw(transport, code, worker, node)

    w.devices["worker"] = device("w1", "nworker")
    w.devices["revoked"] = device("w2", "nrevoked")
    w.devices["revoked-expired"] = device("w2", "nexpired")
    w.devices["spare"] = device("w3", "nspare")
    district.revoke(w.devices["revoked"].device_id, wipe=True)
    district.revoke(w.devices["revoked-expired"].device_id, wipe=True)
    with district.db.transaction() as tx:
        tx.execute("UPDATE devices SET revoked_ms = revoked_ms - ? WHERE id = ?",
                   (8 * 24 * 3600 * 1000, w.devices["revoked-expired"].device_id))
    w.devices["unenrolled-key"] = Identity("d" + secrets.token_hex(8), "w1", "http://in-process", new_key())
    w.devices["bad-signature"] = Identity(w.devices["worker"].device_id, "w1", "http://in-process", new_key())
    return w
