"""Sensorium: eBPF security observability and enforcement. The plugin contract is `sensorium.hookspecs`."""

import pluggy

__version__ = "0.1.0"

PROJECT = "sensorium"
hookimpl = pluggy.HookimplMarker(PROJECT)
"""Decorator for plugin hook implementations: ``@sensorium.hookimpl``."""

__all__ = ["__version__", "hookimpl", "PROJECT"]
