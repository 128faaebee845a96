"""Moved to :mod:`emovec.apps.report`; this path keeps working for existing code."""

from emovec.apps.report import (
    MODEL_ROWS,
    STYLE,
    build_report,
    context_rows,
    find_sections,
    render_section,
)

__all__ = ["MODEL_ROWS", "STYLE", "build_report", "context_rows", "find_sections", "render_section"]
