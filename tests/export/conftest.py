"""Fixtures of the export tests: tiny configs and checkpoints (ResNet-18, crop 33) in the original layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.repository import tiny_checkpoint, tiny_config, write_synthetic_metadata

SMALL_CROP = 33  # stride-8 features of 5x5: the smallest crop where every psa_type has a real window


@dataclass
class TinySource:
    """A config (flat dict) and its checkpoint in the original release layout."""

    config: dict[str, Any]
    checkpoint: Path


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine's two cores are shared with other test runs
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def metadata_files(tmp_path_factory) -> tuple[Path, Path]:
    return write_synthetic_metadata(tmp_path_factory.mktemp("export_metadata"))


@pytest.fixture(scope="session")
def make_source(tmp_path_factory, metadata_files):
    """make_source(arch, **config) -> TinySource at crop 33, built once per distinct request."""
    cache: dict[str, TinySource] = {}
    work = tmp_path_factory.mktemp("export_sources")

    def make(arch: str = "psp", fit: bool = True, **extra: Any) -> TinySource:
        key = f"{arch}-{fit}-" + "-".join(f"{k}={v}" for k, v in sorted(extra.items()))
        if key not in cache:
            config = tiny_config(arch, *metadata_files, crop=SMALL_CROP, **extra)
            path = tiny_checkpoint(config, work / f"{len(cache)}.pth", fit=fit)
            cache[key] = TinySource(config, path)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def psp_source(make_source) -> TinySource:
    return make_source("psp")
