"""One upstream MCP server, connected and supervised.

A supervisor task connects (starting the process of a stdio upstream), lists its
tools, resources and prompts, then watches the connection: a process that exits,
a transport that closes or a ping that goes unanswered ends it, and the supervisor
connects again after a backoff (0.5 s doubling to 30 s). A ping unanswered while
the upstream is busy (a call in flight, or one that ended during the ping) is not
death: a busy server may answer late; it is dead only when it stays silent for
longer than the call timeout. A result larger than ``max_result_bytes`` is
refused (:class:`ResultTooLarge`) before anything reads it further (tool results,
resource contents and prompts alike, every field counted). While an
upstream is not connected its tools are absent from every listing and calls of them fail as tool
errors; calls in flight when it dies fail the same way (never hang)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
from mcp import Client, StdioServerParameters, types
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel

from .config import UpstreamSpec

__all__ = ["DEFAULT_MAX_RESULT_BYTES", "ResultTooLarge", "Upstream", "UpstreamUnavailable"]

_logger = logging.getLogger("d2.gateway")
_FIRST_DELAY = 0.5
_MAX_DELAY = 30.0
_PING_EVERY = 1.0
_PAGES = 50  # listing pages read per upstream (a paginator that never ends stops here)


async def _every_page(listing: Any, field: str) -> list[Any]:
    """Every item of a paginated MCP listing (``list_tools`` and its kin), at most
    :data:`_PAGES` pages."""
    items: list[Any] = []
    cursor: str | None = None
    for _ in range(_PAGES):
        page = await listing(cursor=cursor)
        items.extend(getattr(page, field))
        cursor = page.next_cursor
        if not cursor:
            break
    return items


_PING_TIMEOUT = 5.0

DEFAULT_MAX_RESULT_BYTES = 8 * 1024 * 1024
"""The largest upstream result passed on (``--max-result-bytes``): 8 MiB."""


class UpstreamUnavailable(Exception):
    """The upstream is not connected, or its connection ended during the call."""


class ResultTooLarge(Exception):
    """The upstream's result is larger than the gateway passes on."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"the result is {size} bytes, more than the {limit} bytes allowed")
        self.size = size
        self.limit = limit


def result_size(result: BaseModel) -> int:
    """Bytes of a result as JSON, every field counted (content, structured
    content, ``_meta``, descriptions, ...): about what the client receives."""
    return len(result.__pydantic_serializer__.to_json(result, by_alias=True, exclude_none=True))


class Upstream:
    """A supervised connection to one upstream (see the module docstring).

    ``tools``, ``resources`` and ``prompts`` hold the upstream's latest listings
    (empty while it is not connected); ``on_change`` is awaited whenever they
    change."""

    def __init__(
        self,
        spec: UpstreamSpec,
        on_change: Callable[[], Awaitable[None]],
        *,
        call_timeout: float = 120.0,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.tools: list[types.Tool] = []
        self.resources: list[types.Resource] = []
        self.prompts: list[types.Prompt] = []
        self._on_change = on_change
        self._client: Client | None = None
        self._dead = anyio.Event()
        self._relist = anyio.Event()
        self._call_timeout = call_timeout
        self._max_result_bytes = max_result_bytes
        self._in_flight = 0
        self._last_done = 0.0  # when the last call ended (anyio clock)
        self.connected = anyio.Event()  # set on every successful connection (tests, logs)
        self.tried = anyio.Event()  # set once the first attempt to connect has ended
        self.connections = 0
        self.last_error: str | None = None

    async def _connect(self, stack: AsyncExitStack) -> Client:
        """Enter the transport and the client on ``stack``."""
        spec = self.spec
        target: Any
        if spec.command is not None:
            target = StdioServerParameters(
                command=spec.command, args=list(spec.args), env=spec.env or None, cwd=spec.cwd
            )
        else:
            assert spec.url is not None
            http = await stack.enter_async_context(
                create_mcp_http_client(headers=dict(spec.headers) or None)
            )
            target = streamable_http_client(spec.url, http_client=http)
        client = Client(
            target,
            mode="legacy",
            cache=None,
            read_timeout_seconds=self._call_timeout,
            message_handler=self._message,
            client_info=types.Implementation(name="d2-gateway", version="2.0.0"),
            input_required_max_rounds=0,  # one decision, one upstream call: never re-sent
        )
        return await stack.enter_async_context(client)

    async def _message(self, message: Any) -> None:
        if isinstance(
            message,
            (
                types.ToolListChangedNotification,
                types.ResourceListChangedNotification,
                types.PromptListChangedNotification,
            ),
        ):
            self._relist.set()

    async def run(self) -> None:
        """Supervise forever (until cancelled): connect, serve, reconnect."""
        delay = _FIRST_DELAY
        while True:
            try:
                async with AsyncExitStack() as stack:
                    client = await self._connect(stack)
                    await self._list(client)
                    self._client = client
                    self._dead = anyio.Event()
                    self.connections += 1
                    self.last_error = None
                    self.connected.set()
                    self.tried.set()
                    _logger.info(
                        "d2-gateway: upstream %s connected (%d tools)",
                        self.spec.describe(),
                        len(self.tools),
                    )
                    await self._on_change()
                    delay = _FIRST_DELAY
                    await self._watch(client)
            except anyio.get_cancelled_exc_class():
                raise
            except Exception as exc:
                self.last_error = _describe(exc)
            finally:
                was_up = self._client is not None
                self._client = None
                self.connected = anyio.Event()
                self.tools, self.resources, self.prompts = [], [], []
            self.tried.set()
            if was_up:
                with anyio.CancelScope(shield=True):
                    await self._on_change()
            _logger.warning(
                "d2-gateway: upstream %s is not connected (%s); its tools are hidden; "
                "retrying in %.1fs",
                self.spec.describe(),
                self.last_error or "connection ended",
                delay,
            )
            await anyio.sleep(delay)
            delay = min(delay * 2, _MAX_DELAY)

    async def _list(self, client: Client) -> None:
        caps = client.server_capabilities
        tools: list[types.Tool] = []
        resources: list[types.Resource] = []
        prompts: list[types.Prompt] = []
        if caps.tools is not None:
            tools = await _every_page(client.list_tools, "tools")
        if caps.resources is not None:
            resources = await _every_page(client.list_resources, "resources")
        if caps.prompts is not None:
            prompts = await _every_page(client.list_prompts, "prompts")
        self.tools, self.resources, self.prompts = tools, resources, prompts

    async def _watch(self, client: Client) -> None:
        """Return when the connection is dead: a call saw it close, or a ping
        went unanswered while the upstream was idle (or for longer than the call
        timeout while it was busy). Re-list when the upstream says its listings
        changed."""
        silent_since: float | None = None
        while not self._dead.is_set():
            with anyio.move_on_after(_PING_EVERY):
                await self._dead.wait()
            if self._dead.is_set():
                break
            if self._relist.is_set():
                self._relist = anyio.Event()
                await self._list(client)
                await self._on_change()
            started = anyio.current_time()
            with anyio.move_on_after(_PING_TIMEOUT) as ping:
                await client.session.send_ping()  # legacy-mode ping (handshake era)
            if not ping.cancelled_caught:
                silent_since = None
                continue
            silent_since = started if silent_since is None else silent_since
            busy = self._in_flight > 0 or self._last_done >= started
            if not busy or anyio.current_time() - silent_since > self._call_timeout:
                raise UpstreamUnavailable(f"no answer to a ping for {_PING_TIMEOUT:.0f}s")
            _logger.info(
                "d2-gateway: upstream %s is busy (calls in flight): a ping went unanswered",
                self.spec.describe(),
            )
        raise UpstreamUnavailable("the connection closed")

    async def _request(self, run: Callable[[Client], Awaitable[Any]]) -> Any:
        client = self._client
        if client is None:
            raise UpstreamUnavailable(f"upstream {self.name!r} is not connected")
        self._in_flight += 1
        try:
            return await run(client)
        except MCPError as exc:
            if exc.error.code == types.CONNECTION_CLOSED:
                self._dead.set()
                raise UpstreamUnavailable(
                    f"upstream {self.name!r} closed the connection during the call"
                ) from None
            raise
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            self._dead.set()
            raise UpstreamUnavailable(
                f"upstream {self.name!r} closed the connection during the call"
            ) from None
        finally:
            self._in_flight -= 1
            self._last_done = anyio.current_time()

    def bounded(self, result: Any) -> Any:
        """``result``, or :class:`ResultTooLarge` when its JSON is larger than
        ``max_result_bytes``."""
        size = result_size(result)
        if size > self._max_result_bytes:
            raise ResultTooLarge(size, self._max_result_bytes)
        return result

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        """Call ``name`` upstream; :class:`UpstreamUnavailable` when not connected
        or when the connection ends during the call, :class:`ResultTooLarge` when
        its result is larger than ``max_result_bytes``."""
        result: types.CallToolResult = await self._request(lambda c: c.call_tool(name, arguments))
        return self.bounded(result)  # type: ignore[no-any-return]

    async def read_resource(self, uri: str) -> types.ReadResourceResult:
        """Read ``uri`` upstream (bounded as a tool result is)."""
        result: types.ReadResourceResult = await self._request(lambda c: c.read_resource(uri))
        return self.bounded(result)  # type: ignore[no-any-return]

    async def get_prompt(
        self, name: str, arguments: dict[str, str] | None
    ) -> types.GetPromptResult:
        """Get prompt ``name`` upstream (bounded as a tool result is)."""
        result: types.GetPromptResult = await self._request(lambda c: c.get_prompt(name, arguments))
        return self.bounded(result)  # type: ignore[no-any-return]


def _describe(exc: BaseException) -> str:
    """A short account of why a connection failed (the first leaf of a group)."""
    inner = getattr(exc, "exceptions", None)
    while isinstance(inner, tuple) and inner and isinstance(inner[0], BaseException):
        exc = inner[0]
        inner = getattr(exc, "exceptions", None)
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]
