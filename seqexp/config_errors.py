"""The one exception for bad configuration, so the run script can catch it in one place."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value is wrong. The message reads "`key`: problem" so users know what to override."""
