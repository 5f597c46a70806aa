"""The OpenAPI 3.0 description of the district server's HTTP API (served at /openapi.json)."""

from __future__ import annotations

from typing import Any

from fieldsync.protocol import (
    MAX_ATTACHMENT_BYTES,
    MAX_BODY_BYTES,
    MAX_CHUNK_BYTES,
    MAX_PULL_LIMIT,
    MAX_PUSH_CHANGES,
    MIN_SCHEMA_VERSION,
    N_BUCKETS,
    PROTOCOL_VERSION,
)

from .district import MAX_SCHEMA_VERSION, MAX_SEQ
from .watch import MAX_WAIT_MS

__all__ = ["openapi_document"]

_ID = {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,64}$"}
_STAMP = {"type": "string", "pattern": "^[0-9a-f]{12}-[0-9a-f]{6}-[A-Za-z0-9_.:-]{1,64}$"}
_WRITE = {
    "type": "array", "minItems": 3, "maxItems": 3,
    "description": "[value, stamp, base]: the value (any JSON), its HLC stamp, the stamp it overwrote or null",
    "items": {},
}
_CURSORS = {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0, "maximum": MAX_SEQ},
            "description": "grid id -> the last server_seq the device holds of it"}
_FIELDS = {"type": "object", "minProperties": 1,
           "description": "field name (1-64 characters, no NUL, not id, no leading _ but _deleted) -> [value, stamp, base]",
           "additionalProperties": {"$ref": "#/components/schemas/FieldWrite"}}
_SIGNED: list[dict[str, list[str]]] = [{"deviceSignature": [], "deviceId": [], "requestTime": [], "requestNonce": []}]
# Request examples name a grid of the demo district (`fieldsync-server init-demo`, worker w-lijing).
_EXAMPLE_GRID = "wc-hhl-ply-01"
_EXAMPLE_KEY = "EIWGgfwjEoQju2VZsi077SHjVYmERkiAVqXQPVi3C2Y="


# Every answer of the API carries the server time (docs/protocol.md §1).
_SERVER_TIME = {"X-Fieldsync-Server-Time": {
    "description": "server time, milliseconds since the Unix epoch", "required": True,
    "schema": {"type": "integer", "minimum": 0}}}
_ERROR_TEXT = {
    400: "Malformed request: the body is not a JSON object, a field is missing or malformed, or the gzip stream is corrupt",
    401: "Authentication failed (auth_missing, auth_malformed, device_unknown, signature_invalid, timestamp_stale, "
         "nonce_replayed) or, for enrollment, the code is invalid or expired",
    403: "The device was revoked (device_revoked, with wipe) or the grid or attachment is out of its scope",
    404: "Not there (yet): attachment_pending",
    409: "Conflict with the current state",
    413: f"Too large: a body over {MAX_BODY_BYTES} bytes before or after gunzip (too_large), too many changes, "
         "a chunk or attachment over its limit",
    415: "Unsupported Content-Encoding (use gzip or identity)",
    422: "Content does not match its hash",
    426: f"Schema version too old (below {MIN_SCHEMA_VERSION})",
    429: "Too many attempts (retry_after seconds)",
}


def _error_responses(*codes: int) -> dict[str, Any]:
    return {str(c): {"description": _ERROR_TEXT[c], "headers": _SERVER_TIME,
                     "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            for c in codes}


# The errors of every signed request: the body is read (413), authenticated (401), the device may be
# revoked (403), then the body is decoded (415, 400).
_SIGNED_ERRORS = (400, 401, 403, 413, 415)


def _op(summary: str, request: str | None, response: str, errors: tuple[int, ...], signed: bool = True,
        body_required: bool = True, example: Any = None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {"200": {"description": "OK", "headers": _SERVER_TIME,
                              "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{response}"}}}},
                      **_error_responses(*sorted(set(errors) | (set(_SIGNED_ERRORS) if signed else set())))},
    }
    if request:
        media: dict[str, Any] = {"schema": {"$ref": f"#/components/schemas/{request}"}}
        if example is not None:
            media["example"] = example
        op["requestBody"] = {"required": body_required, "content": {"application/json": media}}
    if signed:
        op["security"] = _SIGNED
    return op


_HASH = {"type": "string", "pattern": "^[0-9a-f]{64}$", "description": "SHA-256 of the attachment's bytes, lower-case hex",
         "example": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}
_BYTES = {"type": "string", "format": "binary"}
_SIZE_HEADER = "X-Fieldsync-Attachment-Size"
_MAX_COUNT = 10**15 - 1


def _attachment_ops() -> dict[str, Any]:
    """GET and PUT /v1/attachments/{hash}: raw bytes both ways (docs/protocol.md §16)."""
    hash_param = {"name": "hash", "in": "path", "required": True, "schema": _HASH,
                  "example": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}
    # Byte counts travel as decimal digits, at most 15 of them.
    offset = {"type": "integer", "minimum": 0, "maximum": _MAX_COUNT}
    size = {"type": "integer", "minimum": 0, "maximum": MAX_ATTACHMENT_BYTES}
    size_header = {_SIZE_HEADER: {"description": "the whole attachment's size in bytes", "required": True,
                                  "schema": size}, **_SERVER_TIME}
    state = {"application/json": {"schema": {"$ref": "#/components/schemas/AttachmentUpload"}}}
    return {
        "put": {
            "summary": "Upload one chunk of an attachment at offset (resumable; completes when the SHA-256 matches)",
            "security": _SIGNED,
            "parameters": [
                hash_param,
                {"name": "offset", "in": "query", "required": True, "schema": offset, "example": 0,
                 "description": "where the chunk starts: the bytes the server already holds (see /v1/attachments/status)"},
                {"name": _SIZE_HEADER, "in": "header", "required": True, "schema": size, "example": 4,
                 "description": f"the whole attachment's size in bytes (over {MAX_ATTACHMENT_BYTES}: 413)"},
            ],
            "requestBody": {"required": False,
                            "description": f"raw bytes, at most {MAX_CHUNK_BYTES} (413 chunk_too_large), possibly none; never "
                                           "gzip-encoded; offset + its length must not pass the size (400)",
                            "content": {"application/octet-stream": {"schema": {**_BYTES, "maxLength": MAX_CHUNK_BYTES},
                                                                     "example": "test"}}},
            "responses": {"200": {"description": "Chunk kept (partial) or attachment complete", "headers": _SERVER_TIME,
                                  "content": state},
                          **_error_responses(400, 401, 403, 409, 413, 415, 422)},
        },
        "get": {
            "summary": "Download a range of a complete attachment",
            "security": _SIGNED,
            "parameters": [
                hash_param,
                {"name": "offset", "in": "query", "required": False, "schema": {**offset, "default": 0},
                 "description": "the first byte to answer; past the end of the attachment: 400"},
                {"name": "length", "in": "query", "required": False,
                 "schema": {**offset, "default": MAX_CHUNK_BYTES},
                 "description": f"at most {MAX_CHUNK_BYTES} bytes are answered whatever is asked"},
            ],
            "responses": {"200": {"description": "The bytes from offset", "headers": size_header,
                                  "content": {"application/octet-stream": {"schema": _BYTES}}},
                          **_error_responses(400, 401, 403, 404, 413)},
        },
    }


def openapi_document() -> dict[str, Any]:
    schema_version = {"type": "integer", "minimum": MIN_SCHEMA_VERSION, "maximum": MAX_SCHEMA_VERSION,
                      "description": f"below {MIN_SCHEMA_VERSION}: 426 schema_unsupported"}
    return {
        "openapi": "3.0.3",
        "info": {"title": "fieldsync district server", "version": f"{PROTOCOL_VERSION}.0",
                 "description": "Sync protocol between grid workers' tablets and the district server. See docs/protocol.md."},
        "paths": {
            "/v1/hello": {"get": _op("Server identity, versions and time", None, "Hello", (), signed=False)},
            "/v1/enroll": {"post": _op("Enroll a device with a one-time code", "EnrollRequest", "EnrollResponse",
                                       (400, 401, 409, 413, 415, 426, 429), signed=False, example={
                                           "code": "AG7K-RW42-BZH6", "public_key": _EXAMPLE_KEY,
                                           "node_id": "nc869a20fd73a4fb", "device_name": "李璟的平板",
                                           "schema_version": 1})},
            "/v1/me": {"post": _op("The device's identity and grids", "Empty", "Me", (), body_required=False)},
            "/v1/push": {"post": _op("Send outbox changes (exactly-once by seq)", "PushRequest", "PushResponse",
                                     (409, 426), example={"schema_version": 1, "confirmed_seq": 0, "changes": [
                                         {"seq": 1, "collection": "households", "id": "h-example-0001",
                                          "grid": _EXAMPLE_GRID, "fields": {
                                              "grid_id": [_EXAMPLE_GRID, "01a2212f375e-000000-ne563acc58d944b8", None],
                                              "address": ["花园山3栋2单元301", "01a2212f375e-000001-ne563acc58d944b8", None],
                                              "members": [3, "01a2212f375e-000002-ne563acc58d944b8", None]}}]})},
            "/v1/pull": {"post": _op("Fetch the next page of changes after the cursors", "PullRequest", "PullResponse",
                                     (426,), example={"schema_version": 1, "cursors": {_EXAMPLE_GRID: 2}, "limit": 50})},
            "/v1/buckets": {"post": _op("Per-bucket digests of one grid (repair step 1)", "BucketsRequest",
                                        "BucketsResponse", (), example={"grid": _EXAMPLE_GRID})},
            "/v1/repair": {"post": _op("Records of chosen buckets of one grid (repair step 2)", "RepairRequest",
                                       "RepairResponse", (), example={"grid": _EXAMPLE_GRID, "buckets": [8, 41]})},
            "/v1/wait": {"post": _op("Long-poll: wait until the device's grids change after its cursors", "WaitRequest",
                                     "WaitResponse", (426,), example={"schema_version": 1, "cursors": {_EXAMPLE_GRID: 0},
                                                                      "timeout_ms": 1000})},
            "/v1/attachments/status": {"post": _op("What the server holds of attachments: missing, partial or complete",
                                                   "AttachmentStatusRequest", "AttachmentStatusResponse", (426,),
                                                   example={"schema_version": 1, "hashes": [_HASH["example"]]})},
            "/v1/attachments/{hash}": _attachment_ops(),
        },
        "components": {
            "securitySchemes": {
                "deviceId": {"type": "apiKey", "in": "header", "name": "X-Fieldsync-Device"},
                "requestTime": {"type": "apiKey", "in": "header", "name": "X-Fieldsync-Timestamp"},
                "requestNonce": {"type": "apiKey", "in": "header", "name": "X-Fieldsync-Nonce"},
                "deviceSignature": {"type": "apiKey", "in": "header", "name": "X-Fieldsync-Signature",
                                    "description": "base64 Ed25519 signature of the canonical request (docs/protocol.md)"},
            },
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                    "type": "object", "required": ["code", "message"],
                    "properties": {"code": {"type": "string", "pattern": "^[a-z][a-z_]*$",
                                            "description": "what went wrong, for programs (docs/protocol.md §7.1)"},
                                   "message": {"type": "string", "minLength": 1, "description": "the same, for people"},
                                   "wipe": {"type": "boolean"}, "server_time_ms": {"type": "integer"},
                                   "retry_after": {"type": "integer"},
                                   "received": {"type": "integer", "description": "offset_mismatch, size_mismatch"},
                                   "size": {"type": "integer", "description": "size_mismatch"}}}}},
                "FieldWrite": _WRITE,
                "Stamp": _STAMP,
                "Empty": {"type": "object"},
                "Hello": {"type": "object", "required": ["service", "protocol_version", "schema_version", "server_time_ms"],
                          "properties": {"service": {"type": "string"}, "protocol_version": {"type": "integer"},
                                         "schema_version": {"type": "integer"}, "server_time_ms": {"type": "integer"}}},
                "EnrollRequest": {"type": "object", "required": ["code", "public_key", "node_id", "schema_version"],
                                  "properties": {"code": {"type": "string", "minLength": 1, "maxLength": 64},
                                                 "public_key": {"type": "string", "pattern": "^[A-Za-z0-9+/]{43}=$",
                                                                "description": "standard base64 of the raw 32-byte Ed25519 "
                                                                               "public key (44 characters)"},
                                                 "node_id": {"type": "string", "pattern": "^[A-Za-z0-9-]{1,40}$"},
                                                 "device_name": {"type": "string", "pattern": "^[^\\x00]*$",
                                                                 "description": "stored truncated to 100 characters"},
                                                 "schema_version": schema_version}},
                "EnrollResponse": {"type": "object", "required": ["device_id", "worker_id", "grids", "server_time_ms"],
                                   "properties": {"device_id": _ID, "worker_id": _ID, "grids": {"type": "array", "items": _ID},
                                                  "schema_version": {"type": "integer"}, "server_time_ms": {"type": "integer"}}},
                "Me": {"type": "object", "required": ["device_id", "worker_id", "grids", "server_time_ms"],
                       "properties": {"device_id": _ID, "worker_id": _ID, "grids": {"type": "array", "items": _ID},
                                      "server_time_ms": {"type": "integer"}}},
                "PushChange": {"type": "object", "required": ["seq", "collection", "id", "grid", "fields"],
                               "properties": {"seq": {"type": "integer", "minimum": 1, "maximum": MAX_SEQ,
                                                      "description": "strictly increasing within a push (else 400)"},
                                              "collection": _ID, "id": _ID,
                                              "grid": _ID, "fields": _FIELDS}},
                "PushRequest": {"type": "object", "required": ["schema_version", "changes"],
                                "properties": {"schema_version": schema_version,
                                               "confirmed_seq": {
                                                   "type": "integer", "minimum": 0, "maximum": MAX_SEQ,
                                                   "description": "the highest seq whose push answer the device has "
                                                                  "recorded; less than it sent before, or a different "
                                                                  "change under a seq already used: 409 outbox_behind"},
                                               "changes": {"type": "array", "maxItems": MAX_PUSH_CHANGES,
                                                           "items": {"$ref": "#/components/schemas/PushChange"}}}},
                "Rejection": {"type": "object", "required": ["seq", "collection", "id", "code", "message"],
                              "properties": {"seq": {"type": "integer"}, "collection": _ID, "id": _ID,
                                             "code": {"type": "string"}, "message": {"type": "string"},
                                             "field": {"type": "string", "nullable": True}}},
                "PushResponse": {"type": "object", "required": ["acked_seq", "rejections", "applied", "more_to_pull",
                                                              "server_time_ms"],
                                 "properties": {"acked_seq": {"type": "integer"}, "applied": {"type": "integer"},
                                                "rejections": {"type": "array", "items": {"$ref": "#/components/schemas/Rejection"}},
                                                "more_to_pull": {"type": "boolean"}, "server_time_ms": {"type": "integer"},
                                                "revoked": {"type": "object", "required": ["wipe"],
                                                            "properties": {"wipe": {"type": "boolean"}},
                                                            "description": "only for a revoked device in its grace period"}}},
                "PullRequest": {"type": "object", "required": ["schema_version"],
                                "properties": {"schema_version": schema_version,
                                               "cursors": _CURSORS,
                                               "limit": {"type": "integer", "minimum": 1, "maximum": MAX_PULL_LIMIT},
                                               "snapshots": {"type": "boolean"}}},
                "PulledChange": {"type": "object", "required": ["server_seq", "collection", "id", "grid"],
                                 "properties": {"server_seq": {"type": "integer"}, "collection": _ID, "id": _ID, "grid": _ID,
                                                "fields": _FIELDS, "left": {"type": "boolean"}}},
                "PullResponse": {"type": "object", "required": ["changes", "cursors", "checksums", "grids", "more"],
                                 "properties": {"changes": {"type": "array", "items": {"$ref": "#/components/schemas/PulledChange"}},
                                                "cursors": {"type": "object", "additionalProperties": {"type": "integer"}},
                                                "checksums": {"type": "object", "additionalProperties": {"type": "integer"}},
                                                "grids": {"type": "array", "items": _ID}, "more": {"type": "boolean"},
                                                "snapshot": {"type": "array", "items": _ID},
                                                "server_time_ms": {"type": "integer"}}},
                "WaitRequest": {"type": "object", "required": ["schema_version"],
                                "properties": {"schema_version": schema_version,
                                               "cursors": _CURSORS,
                                               "timeout_ms": {"type": "integer", "minimum": 0, "maximum": MAX_WAIT_MS,
                                                              "default": 25000}}},
                "WaitResponse": {"type": "object", "required": ["changed", "server_time_ms"],
                                 "properties": {"changed": {"type": "array", "items": _ID},
                                                "server_time_ms": {"type": "integer"}}},
                "AttachmentStatusRequest": {
                    "type": "object", "required": ["schema_version", "hashes"],
                    "properties": {"schema_version": schema_version,
                                   "hashes": {"type": "array", "maxItems": 100, "items": _HASH}}},
                "AttachmentUpload": {
                    "type": "object", "required": ["state", "received", "size"],
                    "properties": {"state": {"type": "string", "enum": ["missing", "partial", "complete"]},
                                   "received": {"type": "integer", "minimum": 0},
                                   "size": {"type": "integer", "minimum": 0, "nullable": True}}},
                "AttachmentStatusResponse": {
                    "type": "object", "required": ["attachments"],
                    "properties": {"attachments": {"type": "array", "items": {
                        "allOf": [{"$ref": "#/components/schemas/AttachmentUpload"},
                                  {"type": "object", "required": ["hash"], "properties": {"hash": _HASH}}]}},
                        "server_time_ms": {"type": "integer"}}},
                "BucketsRequest": {"type": "object", "required": ["grid"], "properties": {"grid": _ID}},
                "BucketsResponse": {"type": "object", "required": ["grid", "seq", "buckets"],
                                    "properties": {"grid": _ID, "seq": {"type": "integer"},
                                                   "buckets": {"type": "array", "minItems": N_BUCKETS, "maxItems": N_BUCKETS,
                                                               "items": {"type": "integer"}},
                                                   "server_time_ms": {"type": "integer"}}},
                "RepairRequest": {"type": "object", "required": ["grid", "buckets"],
                                  "properties": {"grid": _ID, "buckets": {"type": "array", "items": {
                                      "type": "integer", "minimum": 0, "maximum": N_BUCKETS - 1}}}},
                "RepairResponse": {"type": "object", "required": ["grid", "seq", "buckets", "records"],
                                   "properties": {"grid": _ID, "seq": {"type": "integer"},
                                                  "buckets": {"type": "array", "items": {"type": "integer"}},
                                                  "records": {"type": "array", "items": {"$ref": "#/components/schemas/PulledChange"}},
                                                  "server_time_ms": {"type": "integer"}}},
            },
        },
    }
