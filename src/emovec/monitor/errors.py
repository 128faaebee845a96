"""The monitor's error: settings, baselines and traces that cannot be used."""

from __future__ import annotations

from emovec.errors import EmovecError


class MonitorError(EmovecError, ValueError):
    """A monitor setting, baseline or trace that cannot be used; the message says the fix."""
