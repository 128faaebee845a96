"""Moved to :mod:`emovec.apps.web_guard`; this path keeps working for existing code."""

from emovec.apps.web_guard import (
    LOOPBACK_NAMES,
    TOKEN_HEADER,
    Guard,
    allowed_hosts,
    new_token,
)

__all__ = ["LOOPBACK_NAMES", "TOKEN_HEADER", "Guard", "allowed_hosts", "new_token"]
