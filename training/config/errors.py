"""Errors raised by the config package (its own module, so the loader and the registry of shipped
configs can both raise it without importing each other)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config file, key, value or override is invalid. The message names the key and file."""


class MissingKeyError(ConfigError, KeyError, AttributeError):
    """A required key (classes, arch, layers) that a partial config does not have.

    Also a KeyError and an AttributeError, so that `cfg["classes"]`, `cfg.classes`, `cfg.get` and
    `hasattr` behave on a partial config as on any mapping or object.
    """

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""
