"""Errors raised by the config package (its own module, so the loader and the registry of shipped
configs can both raise it without importing each other)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config file, key, value or override is invalid. The message names the key and file."""
