"""The sha256 of a file, read in 1 MiB chunks: how a model version names the checkpoint it came
from (export), and how `predict --checkpoint` ties an output folder to its weights.

Torch-free and imports nothing of sceneparse, so every package may use it.
"""

from __future__ import annotations

import hashlib
import os


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of the file at `path`."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
