"""The code sandbox, now :mod:`emovec.studies.sandbox`; this name stays for existing imports.

Everything public is re-exported. To patch the sandbox's behaviour (say ``bwrap_available``
in a test), patch :mod:`emovec.studies.sandbox`, where :func:`run_code` looks it up.
"""

from emovec.studies.sandbox import (
    BLOCKED_EXIT,
    INSTALL_HINT,
    OUTPUT_BYTES,
    PROTOCOL_BYTES,
    RUNNER,
    SAFE_BUILTINS,
    UNSAFE_ENV,
    VALUE_CHARS,
    Check,
    SandboxResult,
    SandboxUnavailable,
    bwrap_available,
    ensure_available,
    run_code,
    seccomp_program,
)

__all__ = [
    "BLOCKED_EXIT",
    "INSTALL_HINT",
    "OUTPUT_BYTES",
    "PROTOCOL_BYTES",
    "RUNNER",
    "SAFE_BUILTINS",
    "UNSAFE_ENV",
    "VALUE_CHARS",
    "Check",
    "SandboxResult",
    "SandboxUnavailable",
    "bwrap_available",
    "ensure_available",
    "run_code",
    "seccomp_program",
]
