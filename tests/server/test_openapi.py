"""The live server's /openapi.json is an OpenAPI 3 document describing every route it serves."""

from __future__ import annotations

from typing import Any, Iterator

import requests
from starlette.routing import Mount

from server_stub.app import create_app

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"only local references are used: {ref}"
    node: Any = doc
    for part in ref[2:].split("/"):
        assert isinstance(node, dict) and part in node, f"dangling $ref {ref}"
        node = node[part]
    return node


def test_openapi_document_lists_every_route(district, live_server):
    resp = requests.get(f"{live_server}/openapi.json", timeout=10)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/json")
    doc = resp.json()

    assert doc["openapi"].startswith("3.")
    assert doc["info"]["title"] and doc["info"]["version"]
    served = {}
    for route in create_app(district).routes:
        if route.path == "/openapi.json":
            continue  # the description does not describe itself (as FastAPI and others do)
        if isinstance(route, Mount):
            continue  # the web console (/console) serves HTML pages to staff, not the device API
        served[route.path] = {m.lower() for m in route.methods or ()} - {"head"}
    assert len(served) >= 7
    assert set(doc["paths"]) == set(served), "documented paths differ from the app's routes"
    for path, methods in served.items():
        documented = set(doc["paths"][path]) & METHODS
        assert documented == methods, f"{path}: documented {documented}, served {methods}"
        for method in methods:
            op = doc["paths"][path][method]
            assert op["summary"] and "200" in op["responses"]
            for status, answer in op["responses"].items():
                assert status == "default" or (status.isdigit() and 100 <= int(status) < 600)
                assert answer["description"]
            for requirement in op.get("security", []):
                for scheme in requirement:
                    assert scheme in doc["components"]["securitySchemes"]

    refs = set(_refs(doc))
    assert refs, "schemas are shared through components"
    for ref in refs:
        _resolve(doc, ref)
    # Every error the server answers with fits the documented Error schema.
    error = doc["components"]["schemas"]["Error"]
    assert error["properties"]["error"]["required"] == ["code", "message"]


def test_signed_operations_are_documented_as_signed(district, live_server):
    doc = requests.get(f"{live_server}/openapi.json", timeout=10).json()
    for path in ("/v1/me", "/v1/push", "/v1/pull", "/v1/buckets", "/v1/repair"):
        assert doc["paths"][path]["post"].get("security"), f"{path} must say it needs a signature"
    for path in ("/v1/hello", "/v1/enroll"):
        op = next(iter(doc["paths"][path].values()))
        assert not op.get("security")
