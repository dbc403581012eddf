"""Every error D2 raises (see ``d2.core.errors`` for the hierarchy).

``from d2.exceptions import PermissionDeniedError`` keeps working from the 1.x
releases.
"""

from d2.core.errors import (
    STATUS_MAP,
    ApprovalRequiredError,
    BundleExpiredError,
    ConfigurationError,
    ContextLeakWarning,
    D2Error,
    D2NoContextError,
    D2PlanLimitError,
    InvalidPolicyError,
    InvalidSignatureError,
    MissingPolicyError,
    PermissionDeniedError,
    PolicyError,
    PolicyTooLargeError,
    TooManyToolsError,
)

__all__ = [
    "ApprovalRequiredError",
    "BundleExpiredError",
    "ConfigurationError",
    "ContextLeakWarning",
    "D2Error",
    "D2NoContextError",
    "D2PlanLimitError",
    "InvalidPolicyError",
    "InvalidSignatureError",
    "MissingPolicyError",
    "PermissionDeniedError",
    "PolicyError",
    "PolicyTooLargeError",
    "STATUS_MAP",
    "TooManyToolsError",
]
