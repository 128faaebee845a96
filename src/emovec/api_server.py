"""Moved to :mod:`emovec.apps.api_server`; this path keeps working for existing code."""

from emovec.apps.api_server import (
    EMOVEC_FIELDS,
    ApiLimits,
    Batcher,
    Job,
    ScoreAlert,
    SteeringBackend,
    create_api_app,
    serve,
)

__all__ = [
    "EMOVEC_FIELDS",
    "ApiLimits",
    "Batcher",
    "Job",
    "ScoreAlert",
    "SteeringBackend",
    "create_api_app",
    "serve",
]
