"""Hostile review 21: text the output rules did not read: base64 whose bytes are
text in another encoding than UTF-8, and base64 in a data: URI. Each test asserts
the secure behaviour, so it fails while the attack works."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from d2.gateway import UpstreamSpec
from gateway_testkit import (
    call_listed,
    dumped,
    served_gateway,
    write_policy,
)
from mcp import types

SERVER = str(Path(__file__).with_name("review21_server.py"))
SECRET = "AKIAABCDEFGHIJKLMNOP"
PATTERNS = {"deny_if_patterns": [r"\bAKIA[0-9A-Z]{16}\b"]}


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    policy = tmp_path_factory.mktemp("review21") / "policy.json"
    write_policy(
        policy,
        {
            "role": "dev",
            "permissions": [
                {"tool": "review21.blob_latin1", "conditions": {"output": PATTERNS}},
                {"tool": "review21.blob_utf16", "conditions": {"output": PATTERNS}},
                {"tool": "review21.link_data_uri", "conditions": {"output": PATTERNS}},
            ],
        },
        name="review21",
    )
    with served_gateway(
        policy, [UpstreamSpec("review21", command=sys.executable, args=(SERVER,))]
    ) as url:
        yield url


async def call(
    url: str, tool: str, arguments: dict[str, Any] | None = None, roles: str = "dev"
) -> types.CallToolResult:
    result: types.CallToolResult = await call_listed(
        url, f"review21__{tool}", arguments, roles=roles
    )
    return result


@pytest.mark.parametrize("tool", ["blob_latin1", "blob_utf16"])
async def test_a_secret_in_a_text_blob_that_is_not_utf8_is_refused(url: str, tool: str) -> None:
    # The nineteenth/twentieth reviews search base64 blob/data as the text it
    # decodes to, but only when the bytes are UTF-8: one Latin-1 byte ("clé"), or
    # UTF-16 (its byte-order mark), and only the base64 is searched. The resource's
    # mimeType names its charset; every client decodes it and reads the key.
    result = await call(url, tool)
    assert result.is_error, dumped(result)[:300]
    assert (result.structured_content or {}).get("d2_reason") == "output_validation"


async def test_a_secret_in_a_data_uri_of_a_resource_link_is_refused(url: str) -> None:
    # A resource link's uri "data:text/plain;base64,..." (RFC 2397) is searched as
    # its base64 only (base64 is decoded in blob/data fields alone); clients and
    # models decode data: URIs, and read the key.
    result = await call(url, "link_data_uri")
    assert result.is_error, dumped(result)[:300]
    assert (result.structured_content or {}).get("d2_reason") == "output_validation"
