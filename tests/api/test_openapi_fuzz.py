"""Schemathesis over the victims' public operations: no server error, every answer documented
(status code, content type, body schema — problem+json included), schema-violating requests
refused.

Bounded: a few examples per operation (the whole module stays well under a minute).
``positive_data_acceptance`` also expects 422 for schema-valid data: rules a JSON Schema cannot
state (an IIN's check digit, a TRON address checksum, an existing open case) refuse such data
by name, as documented.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

CONFIG = {
    "generation": {"max-examples": 12, "deterministic": True},
    "checks": {
        "positive_data_acceptance": {"expected-statuses": ["2XX", "404", "409", "422"]},
    },
}


def _load_schema():
    # The app reads its database from the settings at request time, so a schema loaded once
    # here serves every test's own database (the ``db_url`` fixture).
    from api.app import create_app

    schema = schemathesis.openapi.from_asgi(
        "/openapi.json", create_app(), config=SchemathesisConfig.from_dict(CONFIG)
    )
    return schema.include(tag="victims")


schema = _load_schema()


@pytest.fixture
def example_case(db_url, engine):
    """The case the documented example files into (so the example is accepted once)."""
    from api import limits
    from claims.cases import create_case
    from claims.db import session_scope

    limits.reset()
    with session_scope(engine) as s:
        create_case(s, "example-case", "The case of the documented example")
    return "example-case"


@schema.parametrize()
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_victim_operations_conform(case, example_case):
    case.call_and_validate()


def test_every_victim_operation_documents_its_problems(client):
    spec = client.get("/openapi.json").json()
    victims = {(p, m): op for p, ops in spec["paths"].items() for m, op in ops.items()
               if "victims" in op.get("tags", [])}
    assert {(p, m) for p, m in victims} == {
        ("/api/v1/claims", "post"),
        ("/api/v1/claims/token-reset", "post"),
        ("/api/v1/claims/{reference}", "get"),
        ("/api/v1/claims/{reference}/documents", "post"),
        ("/api/v1/claims/{reference}/reply", "post"),
        ("/api/v1/claims/{reference}/dispute", "post"),
        ("/api/v1/claims/{reference}/payout-address", "post"),
        ("/api/v1/claims/{reference}/payout-address/confirm", "post"),
    }
    for (path, method), op in victims.items():
        for code, resp in op["responses"].items():
            if code.startswith("4"):
                assert "application/problem+json" in resp["content"], (path, method, code)
        assert "413" in op["responses"] or method == "get", (path, method)
    filing = victims[("/api/v1/claims", "post")]
    body = filing["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["required"]) == {"case_id", "full_name", "iin", "email", "phone", "language",
                                     "claimed_amount", "payout_network", "payout_address", "consent"}
    assert body["properties"]["claimed_amount"]["type"] == "string"
    assert {"409", "413", "422", "429", "201"} <= set(filing["responses"])


def test_the_documented_example_is_a_valid_filing(client, example_case):
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/api/v1/claims"]["post"]["requestBody"]["content"]["application/json"]
    (example,) = body["schema"]["examples"]
    r = client.post("/api/v1/claims", json=example)
    assert r.status_code == 201, r.text
    assert client.post("/api/v1/claims", json=example).status_code == 409
