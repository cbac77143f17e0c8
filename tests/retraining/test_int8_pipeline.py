"""`sceneparse pipeline --precision int8`: the int8 gate and the quality gates, on the staged artifact."""

from __future__ import annotations

import json
import shutil

import numpy as np
from PIL import Image

from retraining.cli import pipeline_main
from serving.repository import ModelRepository
from tests.retraining.conftest import pipeline_args


def test_int8_run_publishes_under_its_own_name_with_both_gates(deployed, tmp_path, tiny_training_overrides):
    repo_dir = shutil.copytree(deployed[0], tmp_path / "repo")
    runs = tmp_path / "runs"
    code = pipeline_main(pipeline_args(repo_dir, runs, tiny_training_overrides, "--min-miou", "0",
                                       "--name", "syn_int8", "--precision", "int8", "--calibration-images", "2",
                                       "--min-agreement", "0.9", "--max-miou-drop", "0.02"))
    assert code == 0
    repo = ModelRepository(repo_dir)
    assert repo.list_versions("syn") == [1] and repo.list_versions("syn_int8") == [1]
    meta = repo.read_metadata("syn_int8")
    gate = meta.parity["int8"]
    assert meta.precision == "int8" and gate["passed"] and gate["argmax_agreement"] >= 0.9
    assert gate["miou"]["images"] == 8 and gate["miou_drop"] <= 0.02
    (run,) = (runs / "syn_int8").iterdir()
    report = json.loads((run / "report.json").read_text())
    # The evaluate step scored the staged int8 file through the serving pipeline: its mIoU is the
    # one the export's gate measured for int8, and it is what the published metadata records.
    assert report["candidate_metrics"]["mIoU"] == gate["miou"]["int8"] == meta.metrics["mIoU"]
    checks = {c["name"]: c for c in report["gates"]["checks"]}
    assert checks["int8"]["passed"] and "argmax agreement with fp32" in checks["int8"]["detail"]
    assert "mIoU through the pipeline" in checks["int8"]["detail"]
    assert [s["step"] for s in report["steps"]][:3] == ["train", "export", "evaluate"]


def test_int8_into_an_fp32_model_is_refused_before_training(deployed, tmp_path, tiny_training_overrides, capsys):
    repo_dir = shutil.copytree(deployed[0], tmp_path / "repo")
    code = pipeline_main(pipeline_args(repo_dir, tmp_path / "runs", tiny_training_overrides, "--precision", "int8"))
    err = capsys.readouterr().err
    assert code == 1 and "serves fp32 versions" in err and "--name syn_int8" in err
    (run,) = (tmp_path / "runs" / "syn").iterdir()
    assert not (run / "train").exists()
    assert ModelRepository(repo_dir).list_versions("syn") == [1]


def test_a_failing_int8_gate_is_a_failed_gate_with_both_figures(deployed, tmp_path, tiny_training_overrides, capsys):
    repo_dir = shutil.copytree(deployed[0], tmp_path / "repo")
    before = sorted(str(p.relative_to(repo_dir)) for p in repo_dir.rglob("*"))
    # One black calibration image (activation ranges far too narrow) and a strict floor: the
    # export's int8 gate refuses the graph; the pipeline must report a failed gate, not an error.
    flat = tmp_path / "black.png"
    Image.fromarray(np.zeros((64, 80, 3), np.uint8)).save(flat)
    (tmp_path / "calibration.txt").write_text(f"{flat}\n")
    code = pipeline_main(pipeline_args(repo_dir, tmp_path / "runs", tiny_training_overrides, "--min-miou", "0",
                                       "--name", "syn_int8", "--precision", "int8", "--calibration",
                                       str(tmp_path / "calibration.txt"), "--min-agreement", "0.999"))
    err = capsys.readouterr().err
    assert code == 3, err
    assert "gate int8 failed: argmax agreement with fp32" in err and "mIoU through the pipeline fp32" in err
    assert sorted(str(p.relative_to(repo_dir)) for p in repo_dir.rglob("*")) == before
    (run,) = (tmp_path / "runs" / "syn_int8").iterdir()
    report = json.loads((run / "report.json").read_text())
    assert report["outcome"] == "gate-failed" and report["published_version"] is None
    assert report["int8"]["argmax_agreement"] < 0.999 and not report["int8"]["passed"]
    assert [s["status"] for s in report["steps"]] == ["ok", "FAIL"]  # train, export: nothing evaluated or published
