"""`sceneparse pipeline` end to end on the synthetic dataset: publish, gate failure, kills at every step."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from retraining.cli import pipeline_main, rollback_main, versions_main
from retraining.pipeline import STEPS
from serving.repository import ModelRepository
from tests.retraining.conftest import PIPELINE_MIN_MIOU
from tests.retraining.conftest import pipeline_args as _args


def test_published_version_carries_metrics_and_report(deployed):
    repo_dir, runs = deployed
    repo = ModelRepository(repo_dir)
    assert repo.list_versions("syn") == [1]
    meta = repo.read_metadata("syn", 1)
    assert PIPELINE_MIN_MIOU <= meta.metrics["mIoU"] <= 1.0 and len(meta.metrics["per_class"]) == 6
    # It learned more than the background: some other class has a real IoU.
    assert max(c["iou"] for c in meta.metrics["per_class"][1:]) >= 0.1, meta.metrics["per_class"]
    assert Path(meta.checkpoint_path).is_file()
    config = model_config_pb2.ModelConfig()
    text_format.Parse((repo_dir / "syn" / "config.pbtxt").read_text(), config)
    assert config.name == "syn" and config.version_policy.latest.num_versions == 2
    (run,) = (runs / "syn").iterdir()
    report = json.loads((run / "report.json").read_text())
    assert report["outcome"] == "published" and report["published_version"] == 1
    checks = {c["name"]: c for c in report["gates"]["checks"]}
    assert checks["min-miou"]["passed"] and str(PIPELINE_MIN_MIOU) in checks["min-miou"]["detail"]
    assert [s["step"] for s in report["steps"]] == list(STEPS)
    assert (run / "per_class_iou.png").read_bytes()[:4] == b"\x89PNG"
    assert "![per-class IoU](per_class_iou.png)" in (run / "report.md").read_text()


def test_failing_gate_leaves_the_deployment_alone(deployed, tmp_path, tiny_training_overrides, capsys):
    repo_dir = shutil.copytree(deployed[0], tmp_path / "repo")
    before = sorted(str(p.relative_to(repo_dir)) for p in repo_dir.rglob("*"))
    code = pipeline_main(_args(repo_dir, tmp_path / "runs", tiny_training_overrides, "--min-miou", "0.999"))
    assert code == 3
    assert "gate min-miou failed" in capsys.readouterr().err
    assert sorted(str(p.relative_to(repo_dir)) for p in repo_dir.rglob("*")) == before
    (run,) = (tmp_path / "runs" / "syn").iterdir()
    report = json.loads((run / "report.json").read_text())
    assert report["outcome"] == "gate-failed" and report["published_version"] is None
    assert (run / "per_class_iou.png").is_file()


def test_from_deployed_fine_tunes_from_the_recorded_checkpoint(deployed, tmp_path, tiny_training_overrides):
    repo_dir = shutil.copytree(deployed[0], tmp_path / "repo")
    assert pipeline_main(_args(repo_dir, tmp_path / "runs", tiny_training_overrides, "--from-deployed", "--dry-run",
                               "--min-miou", "0", "--max-regression", "1", "--class-tolerance", "1")) == 0
    (run,) = (tmp_path / "runs" / "syn").iterdir()
    report = json.loads((run / "report.json").read_text())
    assert report["outcome"] == "dry-run"
    assert ModelRepository(repo_dir).list_versions("syn") == [1]
    # The checkpoint behind the deployed version is gone: a clear failure, nothing published.
    meta_path = repo_dir / "syn" / "1" / "sceneparse.json"
    meta = json.loads(meta_path.read_text())
    meta["checkpoint_path"] = str(tmp_path / "missing.pth")
    meta_path.write_text(json.dumps(meta))
    assert pipeline_main(_args(repo_dir, tmp_path / "runs2", tiny_training_overrides, "--from-deployed")) == 1


def test_versions_and_rollback_commands(deployed, tmp_path, tiny_training_overrides, capsys):
    repo_dir = shutil.copytree(deployed[0], tmp_path / "repo")
    assert pipeline_main(_args(repo_dir, tmp_path / "runs", tiny_training_overrides, "--max-regression", "1",
                               "--class-tolerance", "1")) == 0
    repo = ModelRepository(repo_dir)
    assert repo.served_version("syn") == 2
    assert rollback_main(["--name", "syn", "--repository", str(repo_dir)]) == 0
    assert repo.served_version("syn") == 1
    capsys.readouterr()
    assert versions_main(["--name", "syn", "--repository", str(repo_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:3] == ["1", "yes", "(pinned)"] and lines[2].split()[0] == "2"
    assert rollback_main(["--name", "nope", "--repository", str(repo_dir)]) == 1


@pytest.mark.parametrize("step", STEPS)
def test_killed_at_any_step_leaves_the_repository_valid(step, deployed, tmp_path, tiny_training_overrides):
    repo_dir = shutil.copytree(deployed[0], tmp_path / "repo")
    runs = tmp_path / "runs"
    env = dict(os.environ, SCENEPARSE_PIPELINE_HOLD=step, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "sceneparse.cli", "pipeline",
               *_args(repo_dir, runs, tiny_training_overrides, "--min-miou", "0", "--max-regression", "1",
                      "--class-tolerance", "1")]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        state = None
        while time.monotonic() < deadline and proc.poll() is None:
            states = list(runs.glob("syn/*/state.json"))
            if states:
                try:
                    state = json.loads(states[0].read_text())
                except ValueError:
                    state = None
                if state and state.get("step") == step:
                    time.sleep(0.3)  # it is holding at the start of the step now
                    break
            time.sleep(0.2)
        assert state and state.get("step") == step, f"pipeline never reached {step}: {proc.poll()}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        output = proc.communicate()[0]
    repo = ModelRepository(repo_dir)
    expected = [1, 2] if step == "notify" else [1]  # notify comes after the atomic publish
    assert repo.list_versions("syn") == expected, output[-2000:]
    assert repo.served_version("syn") == expected[-1]
    for version in expected:
        meta = repo.read_metadata("syn", version)
        assert repo.model_file("syn", version).stat().st_size > 1000 and meta.version == version
    visible = [p.name for p in (repo_dir / "syn").iterdir() if not p.name.startswith(".")]
    assert sorted(visible) == sorted(["config.pbtxt", "labels.txt", "colors.txt", *map(str, expected)])


def test_a_candidate_that_breaks_the_shared_tensor_contract_is_not_published(deployed, tmp_path,
                                                                             tiny_training_overrides, capsys):
    repo_dir = shutil.copytree(deployed[0], tmp_path / "repo")
    assert ModelRepository(repo_dir).read_metadata("syn").max_batch_size == 4  # the default follows it
    code = pipeline_main(_args(repo_dir, tmp_path / "runs", tiny_training_overrides, "--max-regression", "1",
                               "--class-tolerance", "1", "--max-batch-size", "2"))
    assert code == 1
    assert "tensor contract" in capsys.readouterr().err
    assert ModelRepository(repo_dir).list_versions("syn") == [1]
