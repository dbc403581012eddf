"""``X-D2-User`` / ``X-D2-Roles`` parsing, the same for ASGI scopes and WSGI environs;
anything ambiguous reads as no user."""

from __future__ import annotations

from typing import Any

import pytest
from d2.asgi import headers_extractor, wsgi_headers_extractor


def scope(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"type": "http", "headers": list(headers)}


def environ(user: str | None = None, roles: str | None = None) -> dict[str, Any]:
    env: dict[str, Any] = {"REQUEST_METHOD": "GET"}
    if user is not None:
        env["HTTP_X_D2_USER"] = user
    if roles is not None:
        env["HTTP_X_D2_ROLES"] = roles
    return env


CASES = [
    # (user header, roles header, expected)
    ("alice", "admin", ("alice", ("admin",))),
    ("  alice\t", " admin , reader,, ,auditor ", ("alice", ("admin", "reader", "auditor"))),
    ("alice", None, ("alice", ())),
    ("alice", "", ("alice", ())),
    ("alice", " , ,", ("alice", ())),
    (None, None, (None, ())),
    (None, "admin", (None, ())),  # roles without a user are ignored
    ("", "admin", (None, ())),
    ("   ", "admin", (None, ())),
    ("alice,mallory", "admin", (None, ())),  # what a merged duplicate looks like
]


@pytest.mark.parametrize(("user", "roles", "expected"), CASES)
def test_asgi_and_wsgi_extractors_parse_the_same_way(
    user: str | None, roles: str | None, expected: tuple[Any, ...]
) -> None:
    headers = [(b"accept", b"*/*")]
    if user is not None:
        headers.append((b"x-d2-user", user.encode()))
    if roles is not None:
        headers.append((b"x-d2-roles", roles.encode()))
    assert headers_extractor(scope(*headers)) == expected
    assert wsgi_headers_extractor(environ(user, roles)) == expected


def test_a_scope_without_headers_is_no_user() -> None:
    assert headers_extractor({"type": "http"}) == (None, ())
    assert headers_extractor({"type": "http", "headers": []}) == (None, ())


def test_a_repeated_user_or_roles_header_fails_closed_in_asgi() -> None:
    twice_user = scope((b"x-d2-user", b"alice"), (b"x-d2-user", b"mallory"))
    twice_roles = scope((b"x-d2-user", b"alice"), (b"x-d2-roles", b"r"), (b"x-d2-roles", b"admin"))
    assert headers_extractor(twice_user) == (None, ())
    assert headers_extractor(twice_roles) == (None, ())


def test_header_names_are_matched_case_insensitively_even_from_a_lax_server() -> None:
    lax = scope((b"X-D2-User", b"alice"), (b"X-D2-ROLES", b"admin"))
    assert headers_extractor(lax) == ("alice", ("admin",))
    mixed_duplicate = scope((b"x-d2-user", b"alice"), (b"X-D2-User", b"mallory"))
    assert headers_extractor(mixed_duplicate) == (None, ())


def test_utf8_values_are_decoded_and_other_bytes_fall_back_to_latin1() -> None:
    utf8 = scope((b"x-d2-user", "jos\u00e9".encode()), (b"x-d2-roles", "\u00e9quipe".encode()))
    assert headers_extractor(utf8) == ("jos\u00e9", ("\u00e9quipe",))
    latin1 = scope((b"x-d2-user", b"jos\xe9"))
    assert headers_extractor(latin1) == ("jos\u00e9", ())
    # WSGI servers hand over header bytes as Latin-1 "native strings"
    native = "jos\u00e9".encode().decode("latin-1")
    assert wsgi_headers_extractor(environ(native)) == ("jos\u00e9", ())
    assert wsgi_headers_extractor(environ("jos\u00e9")) == ("jos\u00e9", ())


def test_other_headers_with_similar_names_are_ignored() -> None:
    near = scope((b"x-d2-user-id", b"alice"), (b"x-d2-role", b"admin"), (b"x-user", b"bob"))
    assert headers_extractor(near) == (None, ())
