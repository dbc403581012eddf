"""Schemathesis against the live server: every documented operation, generated
valid and invalid inputs; never a 5xx, and every response conforms to the
OpenAPI document (status, content type, headers, body schema).

The schema is built from :func:`d2.server.openapi.openapi_document` at collection
(schemathesis' lazy ``from_fixture`` loader does not work with pytest 9), and a
test checks that the live server serves exactly that document.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from d2.server.openapi import openapi_document
from d2.server.testing import D2Server, start_server
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

schema = schemathesis.openapi.from_dict(openapi_document())


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[D2Server]:
    with start_server(tmp_path_factory.mktemp("fuzz"), ingest_burst=20) as server:
        server.register_key()
        server.publish(server.policy())
        yield server


def test_the_live_server_serves_the_document_under_test(fuzz_server: D2Server) -> None:
    served = fuzz_server.client("").get("/openapi.json")
    assert served.status_code == 200
    assert served.json() == openapi_document()


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_and_never_fails(case: schemathesis.Case[Any], fuzz_server: D2Server) -> None:
    # A policy document's validity (regexes, groups, operators) is more than a
    # JSON schema can say, so a schema-valid draft may rightly get a 422.
    policy_body = case.operation.path == "/v1/policy/draft"
    case.call_and_validate(
        base_url=fuzz_server.base_url,
        headers={"Authorization": f"Bearer {fuzz_server.developer_token}"},
        excluded_checks=[positive_data_acceptance] if policy_body else [],
    )
