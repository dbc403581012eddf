"""``BearerProtected``: an ASGI app behind bearer JWTs as the MCP authorization spec
says (RFC 9728 metadata, RFC 6750 challenges), served by a real uvicorn with a test
identity provider (RS256 JWKS, OIDC discovery) on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest
import websockets.asyncio.client
import websockets.exceptions
from d2.asgi import ASGIMiddleware, BearerProtected, jwt_extractor
from d2.asgi.protected import WELL_KNOWN
from d2.asgi.testing import TokenIssuer
from d2.core import ConfigurationError, get_user_context
from hypothesis import given, settings
from hypothesis import strategies as st

Serve = Callable[..., contextlib.AbstractContextManager[str]]
ISS = "https://issuer.test.invalid/"


@pytest.fixture(scope="module")
def rsa_issuer() -> TokenIssuer:
    return TokenIssuer(audience="tools")


@pytest.fixture
def issuer(rsa_issuer: TokenIssuer) -> TokenIssuer:
    rsa_issuer.issuer, rsa_issuer.discovery, rsa_issuer.available = ISS, {}, True
    return rsa_issuer


@pytest.fixture
def jwks(issuer: TokenIssuer, serve_asgi: Serve) -> Iterator[str]:
    with serve_asgi(issuer.jwks_app()) as host:
        yield f"http://{host}/jwks"


class Inner:
    """The protected app: answers the identity it was given; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.lifespan = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.lifespan += 1
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        self.calls += 1
        seen = scope.get("d2.user")
        body = json.dumps([seen[0], list(seen[1])] if seen else None).encode()
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "text": body.decode()})
            await send({"type": "websocket.close", "code": 1000})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


def protect(inner: Any, jwks: str, **options: Any) -> BearerProtected:
    users = jwt_extractor(jwks_url=jwks, audience="tools", issuer=ISS)
    return BearerProtected(inner, extractor=users, **options)


def auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


# RFC 9110 challenge: Bearer, then auth-params whose values are quoted-strings
_QUOTED = r'"(?:[\t \x21\x23-\x5b\x5d-\x7e]|\\[\t \x21-\x7e])*"'
_CHALLENGE = re.compile(rf"Bearer ([a-z_]+)=({_QUOTED})((?:, [a-z_]+={_QUOTED})*)")
_PARAM = re.compile(rf", ([a-z_]+)=({_QUOTED})")


def challenge(header: str) -> dict[str, str]:
    """The auth-params of a ``WWW-Authenticate: Bearer`` header, unquoted; fails the
    test when the header is not well formed."""
    match = _CHALLENGE.fullmatch(header)
    assert match, header

    def unquoted(text: str) -> str:
        return re.sub(r"\\(.)", r"\1", text[1:-1])

    params = {match[1]: unquoted(match[2])}
    for name, value in _PARAM.findall(match[3]):
        params[name] = unquoted(value)
    return params


async def test_a_valid_token_reaches_the_app_with_its_identity(
    issuer: TokenIssuer, jwks: str, serve_asgi: Serve
) -> None:
    inner = Inner()
    with serve_asgi(protect(inner, jwks)) as host:
        async with httpx.AsyncClient(base_url=f"http://{host}") as client:
            token = issuer.token("dana", ["finance_lead", "auditor"], audience="tools")
            answer = await client.post("/mcp", headers=auth(token))
    assert answer.status_code == 200
    assert answer.json() == ["dana", ["finance_lead", "auditor"]]
    assert inner.calls == 1 and inner.lifespan == 1  # lifespan went straight through


async def test_no_token_is_a_401_without_an_error_attribute(
    issuer: TokenIssuer, jwks: str, serve_asgi: Serve
) -> None:
    inner = Inner()
    with serve_asgi(protect(inner, jwks)) as host:
        async with httpx.AsyncClient(base_url=f"http://{host}") as client:
            plain = await client.post("/mcp")
            basic = await client.post("/mcp", headers={"authorization": "Basic ZGFuYTpwdw=="})
    for answer in (plain, basic):  # another scheme is no bearer credentials either
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"] == (
            f'Bearer resource_metadata="http://{host}{WELL_KNOWN}/mcp"'
        )
        assert answer.headers["cache-control"] == "no-store"
        assert answer.json() == {"error": "unauthorized"}
    assert inner.calls == 0


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (lambda i: i.token("dana", ["r"], audience="tools", expires_in=-120), "expired"),
        (lambda i: i.token("dana", ["r"], audience="another-app"), "another audience"),
        (lambda i: i.token("dana", ["r"], audience="tools", issuer="https://x.invalid/"), "iss"),
        (lambda i: i.token("dana", ["r"], audience="tools")[:-6] + "AAAAAA", "signature"),
        (lambda i: "not.a.jwt", "malformed"),
        (lambda i: "a b", "not a b64token"),
        (lambda i: i.token(None, ["r"], audience="tools"), "no user id"),
    ],
)
async def test_a_refused_token_is_a_401_with_invalid_token(
    issuer: TokenIssuer, jwks: str, token: Callable[[TokenIssuer], str], why: str
) -> None:
    inner = Inner()
    transport = httpx.ASGITransport(app=protect(inner, jwks))
    async with httpx.AsyncClient(transport=transport, base_url="http://tools.test") as client:
        answer = await client.get("/mcp", headers=auth(token(issuer)))
    assert answer.status_code == 401, why
    params = challenge(answer.headers["www-authenticate"])
    assert params == {
        "resource_metadata": f"http://tools.test{WELL_KNOWN}/mcp",
        "error": "invalid_token",
    }, why
    assert answer.json() == {"error": "invalid_token"}
    assert answer.headers["cache-control"] == "no-store"
    assert inner.calls == 0


async def test_two_authorization_headers_are_an_invalid_request(
    issuer: TokenIssuer, jwks: str
) -> None:
    inner = Inner()
    token = issuer.token("dana", ["r"], audience="tools")
    transport = httpx.ASGITransport(app=protect(inner, jwks))
    async with httpx.AsyncClient(transport=transport, base_url="http://tools.test") as client:
        answer = await client.get("/mcp", headers=[("authorization", f"Bearer {token}")] * 2)
    assert answer.status_code == 401 and inner.calls == 0
    assert challenge(answer.headers["www-authenticate"])["error"] == "invalid_request"


async def test_the_metadata_is_served_at_both_paths_without_a_token(
    jwks: str, serve_asgi: Serve
) -> None:
    inner = Inner()
    app = protect(inner, jwks, resource_name="Git tools", scopes=["tools.read", "tools.call"])
    with serve_asgi(app) as host:
        async with httpx.AsyncClient(base_url=f"http://{host}") as client:
            refused = await client.post("/mcp")
            where = challenge(refused.headers["www-authenticate"])["resource_metadata"]
            suffixed = await client.get(where)
            bare = await client.get(WELL_KNOWN)
            head = await client.head(WELL_KNOWN + "/mcp")
            post = await client.post(WELL_KNOWN)
    assert suffixed.status_code == 200 and suffixed.headers["cache-control"] == "no-store"
    assert suffixed.json() == {
        "resource": f"http://{host}/mcp",
        "authorization_servers": [ISS],
        "bearer_methods_supported": ["header"],
        "resource_name": "Git tools",
        "scopes_supported": ["tools.read", "tools.call"],
    }
    # RFC 9728 3.3: the metadata's resource is the URL its well-known path came from
    assert where == f"http://{host}{WELL_KNOWN}/mcp"
    assert bare.json()["resource"] == f"http://{host}/"
    assert head.status_code == 200 and head.content == b""
    assert post.status_code == 405 and "GET" in post.headers["allow"]
    assert inner.calls == 0


async def test_a_configured_resource_ignores_the_host_header(jwks: str) -> None:
    inner = Inner()
    app = protect(inner, jwks, resource="https://tools.example.invalid/mcp")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://evil.test") as client:
        refused = await client.post("/mcp")
        suffixed = await client.get(WELL_KNOWN + "/mcp")
        bare = await client.get(WELL_KNOWN)
        other = await client.get(WELL_KNOWN + "/other")
    assert challenge(refused.headers["www-authenticate"]) == {
        "resource_metadata": f"https://tools.example.invalid{WELL_KNOWN}/mcp"
    }
    for answer in (suffixed, bare):
        assert answer.json()["resource"] == "https://tools.example.invalid/mcp"
    assert other.status_code == 404
    assert inner.calls == 0


async def test_a_forged_host_header_is_only_reflected_uncached_or_refused(jwks: str) -> None:
    # Without `resource` the URL comes from Host: a forged one is shown back to the
    # client that forged it, never cached; one that is not a host name is a 400.
    inner = Inner()
    app = protect(inner, jwks)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://tools.test") as client:
        evil = await client.get("/mcp", headers={"host": "evil.example.invalid"})
        assert evil.status_code == 401 and evil.headers["cache-control"] == "no-store"
        assert "evil.example.invalid" in evil.headers["www-authenticate"]
        for host in ('evil" error="x', "evil/path", "user@evil", "a b", "evil\\x"):
            answer = await client.get("/mcp", headers={"host": host})
            assert answer.status_code == 400, host
            assert "www-authenticate" not in answer.headers
            meta = await client.get(WELL_KNOWN, headers={"host": host})
            assert meta.status_code == 400, host
    assert inner.calls == 0


async def test_a_forged_identity_in_the_scope_is_replaced(issuer: TokenIssuer, jwks: str) -> None:
    inner = Inner()
    protected = protect(inner, jwks)

    async def forger(scope: Any, receive: Any, send: Any) -> None:
        scope = {**scope, "d2.user": ("root", ("admin",))}  # set by something outside
        await protected(scope, receive, send)

    transport = httpx.ASGITransport(app=forger)
    async with httpx.AsyncClient(transport=transport, base_url="http://tools.test") as client:
        token = issuer.token("dana", ["reader"], audience="tools")
        seen = await client.get("/mcp", headers=auth(token))
        refused = await client.get("/mcp")
    assert seen.json() == ["dana", ["reader"]]
    assert refused.status_code == 401
    assert inner.calls == 1
    # an extractor that (wrongly) trusts the scope never sees the forged identity
    naive = BearerProtected(inner, extractor=lambda scope: scope.get("d2.user"))

    async def naive_forger(scope: Any, receive: Any, send: Any) -> None:
        await naive({**scope, "d2.user": ("root", ("admin",))}, receive, send)

    transport = httpx.ASGITransport(app=naive_forger)
    async with httpx.AsyncClient(transport=transport, base_url="http://tools.test") as client:
        assert (await client.get("/mcp")).status_code == 401
    assert inner.calls == 1


async def test_the_identity_becomes_the_d2_user_with_asgi_middleware_inside(
    issuer: TokenIssuer, jwks: str
) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        ctx = get_user_context()
        body = json.dumps([ctx.user_id, sorted(ctx.roles)]).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    inner = ASGIMiddleware(app, user_extractor=lambda scope: scope["d2.user"])
    transport = httpx.ASGITransport(app=protect(inner, jwks))
    async with httpx.AsyncClient(transport=transport, base_url="http://tools.test") as client:
        token = issuer.token("dana", "reader auditor", audience="tools")
        seen = await client.get("/mcp", headers=auth(token))
    assert seen.json() == ["dana", ["auditor", "reader"]]


async def test_a_websocket_without_a_token_is_refused_with_a_401(
    issuer: TokenIssuer, jwks: str, serve_asgi: Serve
) -> None:
    inner = Inner()
    connect = websockets.asyncio.client.connect
    with serve_asgi(protect(inner, jwks)) as host:
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with connect(f"ws://{host}/ws", proxy=None):
                pass  # pragma: no cover - never reached
        response = refused.value.response
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == (
            f'Bearer resource_metadata="http://{host}{WELL_KNOWN}/ws"'
        )
        token = issuer.token("dana", ["reader"], audience="tools")
        async with connect(f"ws://{host}/ws", proxy=None, additional_headers=auth(token)) as ws:
            assert json.loads(await ws.recv()) == ["dana", ["reader"]]
    assert inner.calls == 1


async def test_a_websocket_is_closed_where_the_server_cannot_answer_401(jwks: str) -> None:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: Any) -> None:
        sent.append(message)

    inner = Inner()
    scope = {"type": "websocket", "path": "/ws", "headers": [(b"host", b"tools.test")]}
    await protect(inner, jwks)(scope, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}] and inner.calls == 0


async def test_an_unknown_scope_type_is_refused(jwks: str) -> None:
    inner = Inner()

    async def nothing() -> dict[str, Any]:
        raise AssertionError  # pragma: no cover

    with pytest.raises(RuntimeError, match="telepathy"):
        await protect(inner, jwks)({"type": "telepathy"}, nothing, nothing)  # type: ignore[arg-type]
    assert inner.calls == 0


async def test_an_oidc_extractor_names_its_issuer_as_the_authorization_server(
    issuer: TokenIssuer, serve_asgi: Serve
) -> None:
    inner = Inner()
    with serve_asgi(issuer.jwks_app()) as idp:
        issuer.issuer = f"http://{idp}/realms/tools"
        users = jwt_extractor(oidc_issuer=issuer.issuer, audience="tools")
        app = BearerProtected(inner, extractor=users, resource="http://127.0.0.1/mcp")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://x.test") as client:
            meta = await client.get(WELL_KNOWN + "/mcp")
            token = issuer.token("dana", ["reader"], audience="tools")
            seen = await client.get("/mcp", headers=auth(token))
    assert meta.json()["authorization_servers"] == [f"http://{idp}/realms/tools"]
    assert seen.json() == ["dana", ["reader"]]


async def test_a_plain_function_extractor_works_and_its_roles_are_cleaned() -> None:
    inner = Inner()
    app = BearerProtected(inner, extractor=lambda scope: (42, " a  b a "))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://x.test") as client:
        seen = await client.get("/")
        meta = await client.get(WELL_KNOWN)
    assert seen.json() == ["42", ["a", "b"]]
    assert "authorization_servers" not in meta.json()  # no issuer known


def test_configuration_mistakes_are_refused_at_once() -> None:
    app = Inner()

    users = jwt_extractor(jwks_url="https://idp.example.invalid/jwks", audience="a")
    for resource, said in (
        ("http://tools.example.invalid/mcp", "https://"),
        ("https://tools.example.invalid/mcp?x=1", "no query"),
        ("https://tools.example.invalid/mcp#x", "no query"),
        ('https://tools.example.invalid/"mcp"', "printable ASCII"),
        ("https://tools.example.invalid/a b", "printable ASCII"),
        ("mcp", "https://"),
    ):
        with pytest.raises(ConfigurationError, match=said):
            BearerProtected(app, extractor=users, resource=resource)
    with pytest.raises(ConfigurationError, match="extractor must be a function"):
        BearerProtected(app, extractor="users")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="scope tokens"):
        BearerProtected(app, extractor=users, scopes=["a b"])
    with pytest.raises(ConfigurationError, match="not one string"):
        BearerProtected(app, extractor=users, scopes="tools.read")
    with pytest.raises(ConfigurationError, match="resource_name"):
        BearerProtected(app, extractor=users, resource_name="")


# -- the challenge is always well formed -------------------------------------------


async def _refusal(app: BearerProtected, scope: dict[str, Any]) -> tuple[int, dict[bytes, bytes]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], dict(sent[0]["headers"])


def _no_user(scope: Any) -> None:
    return None


hosts = st.one_of(
    st.from_regex(r"[a-z0-9-]{1,12}(\.[a-z0-9-]{1,12}){0,3}(:[0-9]{1,5})?", fullmatch=True),
    st.binary(max_size=30),
)
paths = st.text(max_size=40).map(lambda p: "/" + p)
authorizations = st.one_of(st.none(), st.binary(max_size=40), st.just(b"Bearer abc.def.ghi"))


@settings(max_examples=300, deadline=None)
@given(host=hosts, path=paths, authorization=authorizations)
async def test_the_challenge_is_well_formed_whatever_the_request(
    host: str | bytes, path: str, authorization: bytes | None
) -> None:
    app = BearerProtected(Inner(), extractor=_no_user)
    raw_host = host.encode() if isinstance(host, str) else host
    headers = [(b"host", raw_host)]
    if authorization is not None:
        headers.append((b"authorization", authorization))
    if path.startswith(WELL_KNOWN):
        return
    status, sent = await _refusal(app, {"type": "http", "path": path, "headers": headers})
    if status == 400:
        assert isinstance(host, bytes)  # only a Host that is not a host name
        return
    assert status == 401
    params = challenge(sent[b"www-authenticate"].decode("ascii"))
    url = urlsplit(params["resource_metadata"])
    assert url.scheme == "http" and url.netloc == raw_host.decode().lower()
    assert url.path.startswith(WELL_KNOWN)
    assert unquote(url.path[len(WELL_KNOWN) :], errors="strict") == ("" if path == "/" else path)
    assert set(params) <= {"resource_metadata", "error"}


resource_paths = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters='"\\?#'),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(path=resource_paths)
async def test_the_challenge_is_well_formed_whatever_the_configured_resource(path: str) -> None:
    resource = "https://tools.example.invalid/" + path
    app = BearerProtected(Inner(), extractor=_no_user, resource=resource)
    scope = {"type": "http", "path": "/mcp", "headers": [(b"host", b"x.test")]}
    status, sent = await _refusal(app, scope)
    assert status == 401
    params = challenge(sent[b"www-authenticate"].decode("ascii"))
    suffix = "" if path == "" else "/" + path
    assert params == {"resource_metadata": f"https://tools.example.invalid{WELL_KNOWN}{suffix}"}
