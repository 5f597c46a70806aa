"""The OpenAPI 3.0 description of the district server's HTTP API (served at /openapi.json)."""

from __future__ import annotations

from typing import Any

from fieldsync.protocol import (
    MAX_ATTACHMENT_BYTES,
    MAX_CHUNK_BYTES,
    MAX_PULL_LIMIT,
    MAX_PUSH_CHANGES,
    N_BUCKETS,
    PROTOCOL_VERSION,
)

__all__ = ["openapi_document"]

_ID = {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,64}$"}
_STAMP = {"type": "string", "pattern": "^[0-9a-f]{12}-[0-9a-f]{6}-[A-Za-z0-9_.:-]{1,64}$"}
_WRITE = {
    "type": "array", "minItems": 3, "maxItems": 3,
    "description": "[value, stamp, base]: the value (any JSON), its HLC stamp, the stamp it overwrote or null",
    "items": {},
}
_FIELDS = {"type": "object", "minProperties": 1, "additionalProperties": {"$ref": "#/components/schemas/FieldWrite"}}
_SIGNED = [{"deviceSignature": [], "deviceId": [], "requestTime": [], "requestNonce": []}]


def _error_responses(*codes: int) -> dict[str, Any]:
    text = {400: "Malformed request", 401: "Authentication failed", 403: "Revoked device or grid out of scope",
            409: "Conflict with the current state", 413: "Too large", 415: "Unsupported Content-Encoding", 426: "Schema version too old",
            429: "Too many attempts", 404: "Not there (yet)", 422: "Content does not match its hash"}
    return {str(c): {"description": text[c], "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            for c in codes}


def _op(summary: str, request: str | None, response: str, errors: tuple[int, ...], signed: bool = True) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{response}"}}}},
                      **_error_responses(*errors)},
    }
    if request:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{request}"}}}}
    if signed:
        op["security"] = _SIGNED
    return op


_HASH = {"type": "string", "pattern": "^[0-9a-f]{64}$", "description": "SHA-256 of the attachment's bytes, lower-case hex"}
_BYTES = {"type": "string", "format": "binary"}
_SIZE_HEADER = "X-Fieldsync-Attachment-Size"


def _attachment_ops() -> dict[str, Any]:
    """GET and PUT /v1/attachments/{hash}: raw bytes both ways (docs/protocol.md §16)."""
    hash_param = {"name": "hash", "in": "path", "required": True, "schema": _HASH}
    offset = {"type": "integer", "minimum": 0}
    size_header = {_SIZE_HEADER: {"description": "the whole attachment's size in bytes",
                                  "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ATTACHMENT_BYTES}}}
    state = {"application/json": {"schema": {"$ref": "#/components/schemas/AttachmentUpload"}}}
    return {
        "put": {
            "summary": "Upload one chunk of an attachment at offset (resumable; completes when the SHA-256 matches)",
            "security": _SIGNED,
            "parameters": [
                hash_param,
                {"name": "offset", "in": "query", "required": True, "schema": offset,
                 "description": "where the chunk starts: the bytes the server already holds (see /v1/attachments/status)"},
                {"name": _SIZE_HEADER, "in": "header", "required": True,
                 "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ATTACHMENT_BYTES},
                 "description": "the whole attachment's size in bytes"},
            ],
            "requestBody": {"required": True, "description": f"raw bytes, at most {MAX_CHUNK_BYTES}; never gzip-encoded",
                            "content": {"application/octet-stream": {"schema": {**_BYTES, "maxLength": MAX_CHUNK_BYTES}}}},
            "responses": {"200": {"description": "Chunk kept (partial) or attachment complete", "content": state},
                          **_error_responses(400, 401, 403, 409, 413, 415, 422)},
        },
        "get": {
            "summary": "Download a range of a complete attachment",
            "security": _SIGNED,
            "parameters": [
                hash_param,
                {"name": "offset", "in": "query", "required": False, "schema": {**offset, "default": 0}},
                {"name": "length", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 0, "default": MAX_CHUNK_BYTES},
                 "description": f"at most {MAX_CHUNK_BYTES} bytes are answered whatever is asked"},
            ],
            "responses": {"200": {"description": "The bytes from offset", "headers": size_header,
                                  "content": {"application/octet-stream": {"schema": _BYTES}}},
                          **_error_responses(400, 401, 403, 404)},
        },
    }


def openapi_document() -> dict[str, Any]:
    schema_version = {"type": "integer", "minimum": 1}
    return {
        "openapi": "3.0.3",
        "info": {"title": "fieldsync district server", "version": f"{PROTOCOL_VERSION}.0",
                 "description": "Sync protocol between grid workers' tablets and the district server. See docs/protocol.md."},
        "paths": {
            "/v1/hello": {"get": _op("Server identity, versions and time", None, "Hello", (), signed=False)},
            "/v1/enroll": {"post": _op("Enroll a device with a one-time code", "EnrollRequest", "EnrollResponse",
                                       (400, 401, 409, 413, 415, 426, 429), signed=False)},
            "/v1/me": {"post": _op("The device's identity and grids", "Empty", "Me", (400, 401, 403))},
            "/v1/push": {"post": _op("Send outbox changes (exactly-once by seq)", "PushRequest", "PushResponse",
                                     (400, 401, 403, 413, 415, 426))},
            "/v1/pull": {"post": _op("Fetch the next page of changes after the cursors", "PullRequest", "PullResponse",
                                     (400, 401, 403, 413, 415, 426))},
            "/v1/buckets": {"post": _op("Per-bucket digests of one grid (repair step 1)", "BucketsRequest",
                                        "BucketsResponse", (400, 401, 403, 413, 415))},
            "/v1/repair": {"post": _op("Records of chosen buckets of one grid (repair step 2)", "RepairRequest",
                                       "RepairResponse", (400, 401, 403, 413, 415))},
            "/v1/wait": {"post": _op("Long-poll: wait until the device's grids change after its cursors", "WaitRequest",
                                     "WaitResponse", (400, 401, 403, 413, 415, 426))},
            "/v1/attachments/status": {"post": _op("What the server holds of attachments: missing, partial or complete",
                                                   "AttachmentStatusRequest", "AttachmentStatusResponse",
                                                   (400, 401, 403, 413, 415, 426))},
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
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                                   "wipe": {"type": "boolean"}, "server_time_ms": {"type": "integer"},
                                   "retry_after": {"type": "integer"},
                                   "received": {"type": "integer", "description": "offset_mismatch, size_mismatch"},
                                   "size": {"type": "integer", "description": "size_mismatch"}}}}},
                "FieldWrite": _WRITE,
                "Stamp": _STAMP,
                "Empty": {"type": "object"},
                "Hello": {"type": "object", "required": ["protocol_version", "schema_version", "server_time_ms"],
                          "properties": {"service": {"type": "string"}, "protocol_version": {"type": "integer"},
                                         "schema_version": {"type": "integer"}, "server_time_ms": {"type": "integer"}}},
                "EnrollRequest": {"type": "object", "required": ["code", "public_key", "node_id", "schema_version"],
                                  "properties": {"code": {"type": "string", "minLength": 1, "maxLength": 64},
                                                 "public_key": {"type": "string", "description": "base64 raw Ed25519 public key"},
                                                 "node_id": {"type": "string", "pattern": "^[A-Za-z0-9-]{1,40}$"},
                                                 "device_name": {"type": "string"},
                                                 "schema_version": schema_version}},
                "EnrollResponse": {"type": "object", "required": ["device_id", "worker_id", "grids", "server_time_ms"],
                                   "properties": {"device_id": _ID, "worker_id": _ID, "grids": {"type": "array", "items": _ID},
                                                  "schema_version": {"type": "integer"}, "server_time_ms": {"type": "integer"}}},
                "Me": {"type": "object", "required": ["device_id", "worker_id", "grids"],
                       "properties": {"device_id": _ID, "worker_id": _ID, "grids": {"type": "array", "items": _ID},
                                      "server_time_ms": {"type": "integer"}}},
                "PushChange": {"type": "object", "required": ["seq", "collection", "id", "grid", "fields"],
                               "properties": {"seq": {"type": "integer", "minimum": 1}, "collection": _ID, "id": _ID,
                                              "grid": _ID, "fields": _FIELDS}},
                "PushRequest": {"type": "object", "required": ["schema_version", "changes"],
                                "properties": {"schema_version": schema_version,
                                               "changes": {"type": "array", "maxItems": MAX_PUSH_CHANGES,
                                                           "items": {"$ref": "#/components/schemas/PushChange"}}}},
                "Rejection": {"type": "object", "required": ["seq", "collection", "id", "code", "message"],
                              "properties": {"seq": {"type": "integer"}, "collection": _ID, "id": _ID,
                                             "code": {"type": "string"}, "message": {"type": "string"},
                                             "field": {"type": "string", "nullable": True}}},
                "PushResponse": {"type": "object", "required": ["acked_seq", "rejections", "more_to_pull", "server_time_ms"],
                                 "properties": {"acked_seq": {"type": "integer"}, "applied": {"type": "integer"},
                                                "rejections": {"type": "array", "items": {"$ref": "#/components/schemas/Rejection"}},
                                                "more_to_pull": {"type": "boolean"}, "server_time_ms": {"type": "integer"}}},
                "PullRequest": {"type": "object", "required": ["schema_version"],
                                "properties": {"schema_version": schema_version,
                                               "cursors": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
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
                                               "cursors": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
                                               "timeout_ms": {"type": "integer", "minimum": 0, "maximum": 30000}}},
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
