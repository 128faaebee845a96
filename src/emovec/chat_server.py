"""Moved to :mod:`emovec.apps.chat_server`; this path keeps working for existing code."""

from emovec.apps.chat_server import (
    MAX_TOKENS_LIMIT,
    Backend,
    ChatLimits,
    completion_body,
    control_tokens,
    create_app,
    request_sampling,
    requested_tokens,
    serve,
)

__all__ = [
    "MAX_TOKENS_LIMIT",
    "Backend",
    "ChatLimits",
    "completion_body",
    "control_tokens",
    "create_app",
    "requested_tokens",
    "request_sampling",
    "serve",
]
