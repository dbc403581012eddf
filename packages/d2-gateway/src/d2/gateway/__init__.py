"""d2-gateway: D2 policies in front of any MCP server.

``d2-gateway serve --policy policy.yaml --upstream git=stdio:mcp-server-git
--stdio --user alice --roles dev`` serves one desktop client; ``--listen
HOST:PORT`` serves MCP Streamable HTTP at ``/mcp`` to many users, each identified
by the layer in front of it. Every call is decided by d2-core (the same compiled
policy, evaluator, stores, approvals and decision log as the SDK). See
docs/gateway.md.
"""

from ._version import __version__
from .config import UpstreamSpec, load_config_file, parse_upstream
from .gateway import USER_SCOPE_KEY, Gateway, Identity, refusal
from .naming import SEPARATOR, prompt_id, resource_id, shown_name, tool_id

__all__ = [
    "Gateway",
    "Identity",
    "SEPARATOR",
    "USER_SCOPE_KEY",
    "UpstreamSpec",
    "__version__",
    "load_config_file",
    "parse_upstream",
    "prompt_id",
    "refusal",
    "resource_id",
    "shown_name",
    "tool_id",
]
