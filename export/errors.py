"""Errors raised by export. The CLI turns each into one line on stderr and a non-zero exit."""

from __future__ import annotations


class ExportError(Exception):
    """The export request cannot be carried out (bad checkpoint, config, format, repository...)."""


class VerificationError(ExportError):
    """The exported model does not reproduce PyTorch's outputs within tolerance; nothing was published."""
