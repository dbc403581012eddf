"""How the MCP result reader gives output rules the content they cannot read as
fields (resources, links, images): its text, and base64 data as the text it
holds however a lenient decoder would read it (reviews 18 to 20)."""

from __future__ import annotations

import base64

import pytest
from d2.agents.mcp import _decoded, _Opaque
from hypothesis import given
from hypothesis import strategies as st
from mcp import types

SECRET = "AKIAABCDEFGHIJKLMNOP"


def _spellings(data: bytes) -> list[str]:
    """base64 of ``data`` as different encoders and transports write it."""
    plain = base64.b64encode(data).decode()
    return [
        plain,
        plain.rstrip("="),  # unpadded
        base64.urlsafe_b64encode(data).decode(),  # URL-safe alphabet
        "\n".join(plain[i : i + 76] for i in range(0, len(plain), 76)),  # MIME lines
        " ".join(plain),  # spaces everywhere
    ]


@given(st.text(min_size=1, max_size=200))
def test_any_spelling_of_base64_text_reads_as_that_text(text: str) -> None:
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate is no UTF-8 text
        return
    for spelled in _spellings(data):
        assert _decoded(spelled) == text


@given(st.text(max_size=300))
def test_anything_reads_without_raising(text: str) -> None:
    decoded = _decoded(text)
    assert decoded is None or isinstance(decoded, str)


def test_bytes_that_are_not_utf8_text_are_not_read_as_text() -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    assert _decoded(base64.b64encode(png).decode()) is None


def test_a_resource_blob_and_a_link_are_read_unescaped_and_decoded() -> None:
    blob = types.EmbeddedResource(
        type="resource",
        resource=types.BlobResourceContents(
            uri="file:///k.txt",
            mime_type="text/plain",
            blob=base64.b64encode(f"aws key:\n{SECRET}\n".encode()).decode().rstrip("="),
        ),
    )
    text = str(_Opaque(blob))
    assert f"\n{SECRET}\n" in text  # decoded, its line breaks kept
    link = types.ResourceLink(
        type="resource_link", name="k", uri="file:///k", description=f"key:\n{SECRET}"
    )
    assert f"key:\n{SECRET}" in str(_Opaque(link))


def test_content_that_cannot_be_read_is_refused_by_any_rule_that_reads_it() -> None:
    # an unreadable block once read as its type name alone: patterns saw nothing
    class Odd:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    unreadable = _Opaque({"x": Odd()})  # json.dumps(default=str) calls repr: fails
    with pytest.raises(TypeError, match="cannot be checked"):
        str(unreadable)


@given(st.binary(max_size=200))
def test_a_blobs_ascii_is_searched_in_any_charset(noise: bytes) -> None:
    secret = SECRET.encode()
    for raw in (
        noise + b" " + secret,  # any 8-bit charset around it
        (noise.decode("latin-1") + " " + SECRET).encode("utf-16"),
        (noise.decode("latin-1") + " " + SECRET).encode("utf-32-le"),
    ):
        blob = types.EmbeddedResource(
            type="resource",
            resource=types.BlobResourceContents(
                uri="file:///k", blob=base64.b64encode(raw).decode()
            ),
        )
        assert SECRET in str(_Opaque(blob))


def test_a_data_uri_is_read_as_what_it_holds() -> None:
    encoded = base64.b64encode(f"key {SECRET}".encode("latin-1")).decode()
    for uri in (f"data:text/plain;base64,{encoded}", f"DATA:,key%20{SECRET}"):
        link = types.ResourceLink(type="resource_link", name="k", uri=uri)
        assert SECRET in str(_Opaque(link))
