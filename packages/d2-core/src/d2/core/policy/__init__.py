"""The policy language: loading (``load``), validation and compilation
(``compile``) and the compiled, indexed form (``model``)."""

from .compile import compile_policy
from .load import discover_policy_file, load_policy_bytes, load_policy_file
from .model import CompiledPolicy, Grant, RoleEntry, ToolRules

__all__ = [
    "CompiledPolicy",
    "Grant",
    "RoleEntry",
    "ToolRules",
    "compile_policy",
    "discover_policy_file",
    "load_policy_bytes",
    "load_policy_file",
]
