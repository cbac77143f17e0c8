"""`sceneparse test --repository`: a published version evaluated through the serving pipeline and backend."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serving.repository import ModelRepository
from training.config import config_from_mapping
from training.evaluate import evaluate_dataset
from training.evaluate_deployed import evaluate_deployed
from training.test_cli import main


def _data_overrides(dataset, save_folder: Path) -> list[str]:
    return ["data_root", str(dataset.root), "test_list", str(dataset.val_list), "split", "val",
            "scales", "[0.75,1.0]", "save_folder", str(save_folder)]


def _gray(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted((folder / "gray").glob("*.png"))}


@pytest.fixture(scope="module")
def eager(tiny_repository, synthetic_dataset, tmp_path_factory) -> tuple[dict, Path]:
    """The eager evaluation of tiny_psp's checkpoint (two scales, flip) on the synthetic val list."""
    import torch

    folder = tmp_path_factory.mktemp("eager")
    overrides = _data_overrides(synthetic_dataset, folder)
    cfg = config_from_mapping({**tiny_repository.configs["tiny_psp"], "model_path": str(tiny_repository.checkpoints["tiny_psp"])})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = evaluate_dataset(cfg.merged(overrides), progress=False)
    finally:
        torch.set_num_threads(threads)
    return result, folder


def test_fp32_version_scores_exactly_like_its_eager_checkpoint(tiny_repository, synthetic_dataset, eager,
                                                               tmp_path, capsys):
    expected, eager_folder = eager
    code = main(["--repository", str(tiny_repository.root), "--model", "tiny_psp:1", "--threads", "1",
                 "--no-progress", *_data_overrides(synthetic_dataset, tmp_path)])
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, out
    assert "evaluated tiny_psp v1 (fp32, onnxruntime) on 8 images" in out and "mIoU" in out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    # The same default as `sceneparse test` (the original's average) and the original's log lines.
    assert metrics["absent"] == "zero"
    assert f"Eval result: mIoU/mAcc/allAcc {metrics['mIoU']:.4f}/{metrics['mAcc']:.4f}/" in captured.err
    assert captured.err.count(" result: iou/accuracy ") == len(metrics["per_class"])
    assert metrics["mIoU"] == expected["mIoU"] and metrics["aAcc"] == expected["aAcc"]
    assert metrics["settings"]["model"] == "tiny_psp" and metrics["settings"]["precision"] == "fp32"
    deployed, reference = _gray(tmp_path), _gray(eager_folder)
    assert sorted(deployed) == sorted(reference) and len(deployed) == 8
    for name, label in reference.items():
        assert np.array_equal(deployed[name], label), name
    assert len(list((tmp_path / "color").glob("*.png"))) == 8


def test_the_served_version_is_the_default_and_the_recorded_config_is_used(tiny_repository, synthetic_dataset,
                                                                           tmp_path):
    repo = ModelRepository(tiny_repository.root)
    cfg = config_from_mapping(repo.read_metadata("tiny_psa").config).merged(_data_overrides(synthetic_dataset, tmp_path))
    result = evaluate_deployed(repo, "tiny_psa", None, cfg, threads=1, progress=False, write_report_files=False)
    assert result["model"] == "tiny_psa" and result["version"] == 1 and result["images"] == 8
    assert 0.0 <= result["mIoU"] <= 1.0 and result["reports"] == {}


@pytest.mark.parametrize(("args", "fragment"), [
    (["--model", "nope"], "model 'nope' has no published version"),
    (["--model", "tiny_psp:x"], "the version must be a positive integer"),
    (["--model", "tiny_psp:7"], "model 'tiny_psp' has no version 7"),
    (["--model", "tiny_psp", "test_h", "97", "test_w", "97"], "graph takes 65x65 windows"),
    (["--model", "tiny_psp", "classes", "5"], "the config has 5 classes, tiny_psp v1 6"),
])
def test_bad_requests_are_one_line_errors(tiny_repository, args, fragment, capsys):
    code = main(["--repository", str(tiny_repository.root), "--no-progress", *args])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_int8_version_through_triton_gives_the_onnxruntime_masks(tiny_repository, tiny_int8, synthetic_dataset,
                                                                triton_server_factory, tmp_path):
    # One repository with the fp32 source and its int8 model, served by a real tritonserver.
    root = tiny_repository.copy_to(tmp_path / "repo")
    shutil.copytree(tiny_int8.root / tiny_int8.name, root / tiny_int8.name)
    repo = ModelRepository(root)
    server = triton_server_factory(repo)
    cfg = config_from_mapping(repo.read_metadata(tiny_int8.name).config)
    local = evaluate_deployed(repo, tiny_int8.name, 1, cfg.merged(_data_overrides(synthetic_dataset, tmp_path / "ort")),
                              threads=1, progress=False)
    remote = evaluate_deployed(repo, tiny_int8.name, 1,
                               cfg.merged(_data_overrides(synthetic_dataset, tmp_path / "triton")),
                               backend="triton", triton_url=server.url("http"), progress=False)
    assert remote["precision"] == "int8" and remote["backend"] == "triton"
    assert remote["mIoU"] == local["mIoU"]
    for name, label in _gray(tmp_path / "ort").items():
        assert np.array_equal(_gray(tmp_path / "triton")[name], label), name
