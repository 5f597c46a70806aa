"""API fuzzing: schemathesis against the server's own OpenAPI description, on a real uvicorn server.

Each backend (SQLite, PostgreSQL) gets a demo-sized district (``init-demo``: four grids, ~5 800
records, plus a report with one complete and one pending photo) served by a real uvicorn process
on 127.0.0.1 (a socket, headers and bodies exactly as a tablet sends them, the server's own process
and error handling).  Schemathesis generates valid and invalid requests for every operation of
``/openapi.json`` (its examples, coverage and fuzzing phases) three ways:

- **signed**: every request is signed by an enrolled device of worker w-lijing, exactly as the
  client signs (``fuzz_support.DeviceSignature``, a requests auth that signs the bytes on the wire),
  so the fuzzed bodies, queries and headers reach the handlers;
- **impostor**: the enrolled device id with a signature from another key;
- **anonymous**: no credentials, or the generated (garbage) values of the security headers.

Every answer must: never be a 5xx; conform to the schema (documented status code, content type,
headers, body); carry ``X-Fieldsync-Server-Time``; and every error must be ``{"error": {"code",
"message"}}``.  Invalid data must be rejected with a 4xx; a request without valid credentials must
never get past authentication.

CI runs a few examples per operation and phase.  A longer run (documented in docs/security.md)::

    FIELDSYNC_FUZZ_EXAMPLES=2000 .venv/bin/python -m pytest tests/security/test_fuzz_api.py

The seed is printed with every test (shown on failure); ``FIELDSYNC_FUZZ_SEED=<seed>`` with the same
``FIELDSYNC_FUZZ_EXAMPLES`` replays the run exactly.
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest
import requests
import schemathesis
from fuzz_support import (
    AUTH_CODES,
    BACKENDS,
    EXAMPLES,
    GRID,
    OTHER_GRID,
    PENDING_HASH,
    PHASES,
    PHOTO,
    PHOTO_HASH,
    SEED,
    DeviceSignature,
    FuzzServer,
    GarbageSignature,
    answer_problems,
    error_of,
    serve_demo,
)
from hypothesis import HealthCheck
from schemathesis import CheckContext, Response

from server_stub.openapi import openapi_document

UNSIGNED = {("GET", "/v1/hello"), ("POST", "/v1/enroll")}
SHORT_WAIT_MS = 500


# Rules of the protocol that an OpenAPI 3.0 schema cannot express; a schema-valid request that breaks
# one is refused with 400 (docs/protocol.md): seq strictly increasing and field names 1-64 characters,
# not "id", no "_" but "_deleted" (push); offset + chunk length within the announced size (PUT); an
# offset past the end of the attachment (GET).
SEMANTIC_400 = (("/v1/push", "POST"), ("/v1/attachments/{hash}", "PUT"), ("/v1/attachments/{hash}", "GET"))
POSITIVE_STATUSES = ["2xx", "401", "403", "404", "409", "429"]


def _config(*, security_parameters: bool) -> schemathesis.Config:
    return schemathesis.Config.from_dict({
        "seed": SEED,
        "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large"],
        "request-timeout": 60,
        # Without security parameters the auth below supplies the headers; with them, schemathesis
        # generates (garbage) values for them and drops them in negative cases.
        "generation": {"mode": "all", "max-examples": EXAMPLES, "database": "none",
                       "with-security-parameters": security_parameters},
        "phases": {"stateful": {"enabled": False},
                   **{phase: {"enabled": phase in PHASES} for phase in ("examples", "coverage", "fuzzing")}},
        "checks": {
            # Invalid data may also be refused as too large (413) or from too old a schema (426), never 5xx.
            "negative_data_rejection": {"expected-statuses": [
                "400", "401", "403", "404", "405", "409", "413", "415", "422", "426", "429"]},
            "positive_data_acceptance": {"expected-statuses": POSITIVE_STATUSES},
        },
        "operations": [
            {"include-path": path, "include-method": method,
             "checks": {"positive_data_acceptance": {"expected-statuses": [*POSITIVE_STATUSES, "400"]}}}
            for path, method in SEMANTIC_400
        ] + [
            # PUT/GET /v1/attachments/status are PUT/GET /v1/attachments/{hash} with the malformed hash
            # "status" (400), not undeclared methods.
            {"include-path": "/v1/attachments/status", "checks": {"unsupported_method": {"enabled": False}}},
        ],
    })


# The auths of the schemas below, bound to the current backend's devices by the _bind fixture.
SIGNER = DeviceSignature(None)
IMPOSTOR = DeviceSignature(None)


def map_body(context: schemathesis.HookContext, body: Any) -> Any:
    """Long-polls of a valid length are shortened to SHORT_WAIT_MS so a run stays bounded."""
    if context.operation is not None and context.operation.path == "/v1/wait" and isinstance(body, dict):
        timeout = body.get("timeout_ms")
        if type(timeout) is int and SHORT_WAIT_MS < timeout <= 30_000:
            body = {**body, "timeout_ms": SHORT_WAIT_MS}
    return body


def _schema(*, security_parameters: bool = False) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_dict(openapi_document(), config=_config(security_parameters=security_parameters))
    schema.hook(map_body)
    return schema


signed_schema = _schema()
signed_schema.auth.set_from_requests(SIGNER)
impostor_schema = _schema().exclude(path=["/v1/hello", "/v1/enroll"])
impostor_schema.auth.set_from_requests(IMPOSTOR)
anonymous_schema = _schema(security_parameters=True)


@pytest.fixture(scope="module", params=BACKENDS)
def fuzz_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzServer]:
    """One demo district and uvicorn per backend, shared by the module's tests."""
    yield from serve_demo(str(request.param), tmp_path_factory)


@pytest.fixture(autouse=True)
def _bind(fuzz_server: FuzzServer) -> Iterator[None]:
    print(f"fuzz seed {SEED}, {EXAMPLES} examples per operation, phases {','.join(PHASES)}, backend "
          f"{fuzz_server.backend}: replay with FIELDSYNC_FUZZ_SEED={SEED} FIELDSYNC_FUZZ_EXAMPLES={EXAMPLES} "
          f"FIELDSYNC_FUZZ_PHASES={','.join(PHASES)}")
    SIGNER.identity = fuzz_server.identity
    IMPOSTOR.identity = GarbageSignature(fuzz_server.identity.device_id).identity
    yield
    SIGNER.identity = IMPOSTOR.identity = None


def _label(case: schemathesis.Case) -> tuple[str, str]:
    return case.method.upper(), case.operation.path


def well_formed_answer(ctx: CheckContext, response: Response, case: schemathesis.Case) -> bool | None:
    """No 5xx; the server time on every answer; every error a JSON {"error": {code, message}}."""
    problems = answer_problems(response.status_code, response.headers, response.content)
    assert not problems, "; ".join(problems)
    return None


def credentials_required(ctx: CheckContext, response: Response, case: schemathesis.Case) -> bool | None:
    """Without a valid signature a signed operation answers 401 (or a size error read before it), nothing else."""
    if _label(case) in UNSIGNED:
        return None
    status = response.status_code
    if status == 405 and case.method.upper() not in case.operation.schema.raw_schema["paths"][case.operation.path]:
        return None  # an undeclared method (schemathesis tries TRACE etc.): refused before authentication
    if status == 401:
        assert error_of(response.content)["code"] in AUTH_CODES
    else:
        # Only the body size is checked before authentication (docs/protocol.md §3.3).
        assert status in (400, 413), f"{_label(case)} without valid credentials answered {status}"
        assert error_of(response.content)["code"] in ("too_large", "chunk_too_large", "bad_request")
    return None


@signed_schema.parametrize()
def test_fuzz_signed(case: schemathesis.Case, fuzz_server: FuzzServer) -> None:
    response = case.call_and_validate(base_url=fuzz_server.url, additional_checks=[well_formed_answer])
    assert response.status_code < 500


@impostor_schema.parametrize()
def test_fuzz_impostor_signature(case: schemathesis.Case, fuzz_server: FuzzServer) -> None:
    response = case.call_and_validate(base_url=fuzz_server.url,
                                      additional_checks=[well_formed_answer, credentials_required])
    if response.status_code == 401:
        assert error_of(response.content)["code"] in ("signature_invalid", "auth_missing", "auth_malformed",
                                                      "device_unknown")


@anonymous_schema.parametrize()
def test_fuzz_without_credentials(case: schemathesis.Case, fuzz_server: FuzzServer) -> None:
    case.call_and_validate(base_url=fuzz_server.url, additional_checks=[well_formed_answer, credentials_required])


# -- the set-up the fuzzing relies on ------------------------------------------------------------


def test_served_description_is_the_fuzzed_one(fuzz_server: FuzzServer) -> None:
    """The fuzzer's schema is the server's own /openapi.json, and it is a valid OpenAPI 3 document."""
    resp = requests.get(f"{fuzz_server.url}/openapi.json", timeout=10)
    assert resp.status_code == 200
    assert resp.json() == openapi_document()
    operations = {(m.upper(), p) for p, item in resp.json()["paths"].items() for m in item}
    fuzzed = {(r.ok().method.upper(), r.ok().path) for r in signed_schema.get_all_operations()}
    assert fuzzed == operations and len(operations) == 11


def test_signing_auth_gets_past_authentication(fuzz_server: FuzzServer) -> None:
    """The fuzzer's signing reaches the handlers (signed JSON, signed query); the impostor's does not."""
    session = requests.Session()
    me = session.post(f"{fuzz_server.url}/v1/me", data=b"{}", auth=DeviceSignature(fuzz_server.identity), timeout=10)
    assert me.status_code == 200, me.text
    assert me.json()["grids"] == [GRID]
    buckets = session.post(f"{fuzz_server.url}/v1/buckets", json={"grid": OTHER_GRID},
                           auth=DeviceSignature(fuzz_server.identity), timeout=10)
    assert buckets.status_code == 403 and error_of(buckets.content)["code"] == "out_of_scope"
    photo = session.get(f"{fuzz_server.url}/v1/attachments/{PHOTO_HASH}", params={"offset": 1, "length": 2},
                        auth=DeviceSignature(fuzz_server.identity), timeout=10)
    assert photo.status_code == 200 and photo.content == PHOTO[1:3]
    pending = session.get(f"{fuzz_server.url}/v1/attachments/{PENDING_HASH}",
                          auth=DeviceSignature(fuzz_server.identity), timeout=10)
    assert pending.status_code == 404 and error_of(pending.content)["code"] == "attachment_pending"
    impostor = session.post(f"{fuzz_server.url}/v1/me", data=b"{}",
                            auth=GarbageSignature(fuzz_server.identity.device_id), timeout=10)
    assert impostor.status_code == 401 and error_of(impostor.content)["code"] == "signature_invalid"


def test_fuzz_settings_are_bounded() -> None:
    assert 1 <= EXAMPLES and isinstance(SEED, int)
    assert signed_schema.config.seed == SEED
    assert HealthCheck.too_slow.name in {h.name for h in signed_schema.config.suppress_health_check}
