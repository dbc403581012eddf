"""Tokens: random, stored as hashes, scoped."""

from __future__ import annotations

import pytest
from d2.server.tokens import (
    DEVELOPER_SCOPES,
    RUNTIME_SCOPES,
    hash_token,
    looks_like_token,
    new_token,
    parse_scopes,
)


def test_tokens_are_prefixed_random_and_hashed() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    token = tokens.pop()
    assert token.startswith("d2_") and len(token) == 46 and looks_like_token(token)
    assert hash_token(token) == hash_token(token) != hash_token(new_token())
    assert len(hash_token(token)) == 64 and token not in hash_token(token)


def test_token_shape_check_refuses_junk_cheaply() -> None:
    assert not looks_like_token("abc")
    assert not looks_like_token("d2_" + "x" * 300)
    assert not looks_like_token("d2_é")


def test_runtime_and_developer_presets_match_the_protocol() -> None:
    assert parse_scopes("runtime") == RUNTIME_SCOPES == ("policy:read", "events:write")
    assert parse_scopes("developer") == DEVELOPER_SCOPES
    assert set(DEVELOPER_SCOPES) == {"policy:read", "events:write", "policy:write"}


def test_explicit_scopes_are_deduplicated_in_canonical_order() -> None:
    assert parse_scopes("events:write,policy:read events:write") == RUNTIME_SCOPES
    assert parse_scopes(["policy:write"]) == ("policy:write",)


def test_unknown_or_no_scopes_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown scope 'admin'"):
        parse_scopes("admin")
    with pytest.raises(ValueError, match="at least one"):
        parse_scopes("")
