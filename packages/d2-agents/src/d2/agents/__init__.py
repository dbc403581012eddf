"""d2-agents: D2 for agent frameworks. The model sees only the tools its user may
call, and every call is still guarded.

One module per framework, each behind its own extra (``pip install "d2-sdk[mcp]"``):

- :mod:`d2.agents.mcp`: ``guard_server(server, identify=...)`` for MCP servers
  (``MCPServer``, formerly FastMCP, and the low-level ``Server``);
- :mod:`d2.agents.langchain`: ``guard_tools(tools)`` and ``permitted_tools(tools)``;
- :mod:`d2.agents.openai_agents`: ``guard_tools(tools)`` for Agents SDK function tools;
- :mod:`d2.agents.pydantic_ai`: ``guard_tools(tools)`` for pydantic-ai tools.

This package imports no framework; only the module you import does.
"""

from ._common import DenyMessage, ToolIds, denial_message

__all__ = ["DenyMessage", "ToolIds", "denial_message"]
