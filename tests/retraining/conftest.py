"""Pipeline fixtures: the synthetic dataset with overrides that make training take seconds, and a
repository where the pipeline has already published version 1."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFIG = "synthetic/synthetic_pspnet18"
MODEL = "syn"


def pipeline_args(repo: Path, runs: Path, overrides: list[str], *extra: str) -> list[str]:
    """`sceneparse pipeline` arguments for the tiny synthetic model `syn` (keeps 2 versions)."""
    return ["--config", CONFIG, "--name", MODEL, "--repository", str(repo), "--runs", str(runs),
            "--keep-last", "2", *extra, *overrides]


@pytest.fixture(scope="session")
def tiny_training_overrides(synthetic_dataset) -> list[str]:
    data = synthetic_dataset
    return ["data_root", str(data.root), "train_list", str(data.train_list), "val_list", str(data.val_list),
            "test_list", str(data.val_list), "names_path", str(data.names_path), "colors_path", str(data.colors_path),
            "classes", str(data.classes), "epochs", "1", "train_h", "33", "train_w", "33", "test_h", "33",
            "test_w", "33", "base_size", "48", "batch_size", "8", "flip", "False", "scale_min", "0.5",
            "scale_max", "0.75", "keep_last", "1"]


@pytest.fixture(scope="session")
def deployed(tmp_path_factory, tiny_training_overrides) -> tuple[Path, Path]:
    """(repository, runs): the pipeline has published `syn` version 1 (gates: floor 0). Read-only:
    tests that publish or pin copy the repository first."""
    from retraining.cli import pipeline_main

    base = tmp_path_factory.mktemp("pipeline")
    repo, runs = base / "repo", base / "runs"
    assert pipeline_main(pipeline_args(repo, runs, tiny_training_overrides, "--min-miou", "0")) == 0
    return repo, runs
