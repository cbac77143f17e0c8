"""Quality gates, rollback, retention and the report, on hand-made metrics and a real repository layout."""

from __future__ import annotations

import json
import math

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from retraining.gates import GatePolicy, check_gates
from retraining.report import write_report
from retraining.versions import apply_retention, rollback, set_version_policy, version_rows
from serving.repository import ModelMetadata, ModelRepository, RepositoryError


def metrics(miou, ious):
    return {"mIoU": miou, "mAcc": miou, "aAcc": miou,
            "per_class": [{"id": i, "name": f"c{i}", "iou": v} for i, v in enumerate(ious)]}


def test_first_deployment_needs_only_the_floor():
    assert check_gates(metrics(0.8, [0.8, 0.8]), None, GatePolicy(min_miou=0.7)).passed
    result = check_gates(metrics(0.6, [0.6, 0.6]), None, GatePolicy(min_miou=0.7))
    assert not result.passed and result.failures()[0].name == "min-miou"


def test_miou_regression_beyond_tolerance_fails():
    deployed = metrics(0.80, [0.8, 0.8])
    assert check_gates(metrics(0.796, [0.79, 0.80]), deployed, GatePolicy(max_regression=0.005)).passed
    result = check_gates(metrics(0.79, [0.79, 0.79]), deployed, GatePolicy(max_regression=0.005))
    assert [c.name for c in result.failures()] == ["miou-regression"]


def test_one_class_collapsing_fails_even_if_the_mean_improves():
    deployed = metrics(0.70, [0.9, 0.5, 0.7])
    candidate = metrics(0.75, [0.99, 0.5, 0.6])
    result = check_gates(candidate, deployed, GatePolicy(class_tolerance=0.05), class_names=["sky", "road", "car"])
    assert [c.name for c in result.failures()] == ["class-regression"]
    assert "car 0.7000 -> 0.6000" in result.failures()[0].detail


def test_absent_classes_are_not_compared():
    deployed = metrics(0.8, [0.8, math.nan])
    assert check_gates(metrics(0.8, [0.8, 0.0]), deployed, GatePolicy()).passed


def test_a_version_averaged_the_old_way_is_compared_like_with_like():
    """Versions published before metrics recorded their absent-class policy were averaged with
    "exclude"; a candidate averaged as the original ("zero") is compared after re-averaging the
    deployed counts, so equal predictions pass instead of reading as a regression."""
    from training.metrics import summarize

    counts = ([3, 1, 0], [4, 2, 0], [3, 2, 0])  # class 2 absent from the val set
    old = summarize(*counts, ["a", "b", "c"], absent="exclude")
    deployed = {k: old[k] for k in ("mIoU", "mAcc", "aAcc", "per_class")}  # no "absent" recorded
    candidate = summarize(*counts, ["a", "b", "c"])
    candidate = {k: candidate[k] for k in ("mIoU", "mAcc", "aAcc", "absent", "per_class")}
    assert candidate["mIoU"] < deployed["mIoU"] - 0.1  # the same predictions, averaged otherwise
    assert check_gates(candidate, deployed, GatePolicy(max_regression=0.005)).passed
    worse = summarize([2, 1, 0], [5, 2, 0], [3, 2, 0], ["a", "b", "c"])
    assert not check_gates({**worse, "per_class": worse["per_class"]}, deployed, GatePolicy()).passed


def test_policy_rejects_nonsense():
    with pytest.raises(ValueError, match="max-regression"):
        GatePolicy(max_regression=-1)


def _publish(repo, name, miou):
    def populate(staging):
        (staging / "model.onnx").write_bytes(b"x")
        return ModelMetadata(name=name, version=0, arch="psp", layers=18, dataset="synthetic", classes=["a", "b"],
                             palette=[[0, 0, 0], [9, 9, 9]], crop_h=33, crop_w=33, mean=[0, 0, 0], std=[1, 1, 1],
                             metrics=metrics(miou, [miou, miou]))
    config = f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 4\nversion_policy: {{ latest: {{ num_versions: 1 }} }}\n'
    return repo.publish_version(name, populate, {"config.pbtxt": config})[0]


def test_rollback_retention_and_version_policy(tmp_path):
    repo = ModelRepository(tmp_path)
    for miou in (0.5, 0.6, 0.7, 0.8):
        _publish(repo, "seg", miou)
    assert rollback(repo, "seg") == 3
    assert [r.version for r in version_rows(repo, "seg") if r.served] == [3]
    assert rollback(repo, "seg", to=1) == 1
    with pytest.raises(RepositoryError, match="no version 9"):
        rollback(repo, "seg", to=9)
    # Retention keeps the newest two and the served (pinned) one.
    assert apply_retention(repo, "seg", keep_last=2) == [2]
    assert repo.list_versions("seg") == [1, 3, 4]
    config = model_config_pb2.ModelConfig()
    text_format.Parse((tmp_path / "seg" / "config.pbtxt").read_text(), config)
    assert config.version_policy.latest.num_versions == 3
    rows = version_rows(repo, "seg")
    assert [(r.version, r.miou, r.pinned) for r in rows] == [(1, 0.5, True), (3, 0.7, False), (4, 0.8, False)]


def test_set_version_policy_adds_when_missing():
    text = set_version_policy('name: "m"\nmax_batch_size: 2\n', 3)
    config = model_config_pb2.ModelConfig()
    text_format.Parse(text, config)
    assert config.version_policy.latest.num_versions == 3


def test_report_files(tmp_path):
    deployed, candidate = metrics(0.7, [0.9, 0.5]), metrics(0.75, [0.95, 0.55])
    gates = check_gates(candidate, deployed, GatePolicy())
    report = {"name": "seg", "outcome": "published", "deployed_version": 1, "published_version": 2,
              "candidate_metrics": candidate, "deployed_metrics": deployed, "gates": gates.to_dict(),
              "steps": [{"step": "train", "seconds": 1.0, "status": "ok"}]}
    paths = write_report(tmp_path, report, ["sky", "road"])
    assert json.loads(paths["json"].read_text())["outcome"] == "published"
    markdown = paths["markdown"].read_text()
    assert "| road | 0.5000 | 0.5500 |" in markdown and "![per-class IoU](per_class_iou.png)" in markdown
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
