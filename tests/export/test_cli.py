"""`sceneparse export`: one export, and a batch from a manifest that goes on past a failing entry."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from export.cli import main
from export.manifest import load_manifest
from serving.repository import ModelRepository
from tests.export.test_bad_input import assert_one_line_error, write_yaml_config

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_single_export_prints_what_it_published(psp_source, tmp_path, capsys):
    config = write_yaml_config(psp_source.config, tmp_path / "psp.yaml")
    code = main(["--config", str(config), "--checkpoint", str(psp_source.checkpoint), "--name", "cli_model",
                 "--format", "onnx,torchscript", "--repository", str(tmp_path / "repo"), "--max-batch-size", "2",
                 "--version", "3", "--no-simplify", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert "published cli_model version 3" in out and "max |delta logits|" in out
    meta = ModelRepository(tmp_path / "repo").read_metadata("cli_model")
    assert meta.version == 3 and meta.files == {"onnx": "model.onnx", "torchscript": "model.pt"}
    assert meta.max_batch_size == 2


def write_manifest(tmp_path: Path, psp_source, entries_text: str) -> Path:
    write_yaml_config(psp_source.config, tmp_path / "psp.yaml")
    (tmp_path / "weights").mkdir(exist_ok=True)
    (tmp_path / "weights" / "psp.pth").write_bytes(psp_source.checkpoint.read_bytes())
    manifest = tmp_path / "exports.yaml"
    manifest.write_text(entries_text)
    return manifest


MANIFEST = """\
repository: published
defaults:
  max_batch_size: 1
  simplify: false
exports:
  - config: psp.yaml
    checkpoint: weights/psp.pth
    name: first
  - config: psp.yaml
    checkpoint: weights/missing.pth
    name: broken
  - config: psp.yaml
    checkpoint: weights/psp.pth
    name: third
    formats: onnx,torchscript
"""


def test_manifest_exports_every_good_entry_and_reports_the_bad_one(psp_source, tmp_path):
    manifest = write_manifest(tmp_path, psp_source, MANIFEST)
    # Through the real console script: progress bar on stderr, table on stdout, exit status 1.
    run = subprocess.run([sys.executable, "-m", "sceneparse.cli", "export", "--manifest", str(manifest)],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert run.returncode == 1, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert "model/s" in run.stderr or "s/model" in run.stderr  # the tqdm bar with its rate
    table = run.stdout.splitlines()
    assert table[0].split()[:4] == ["#", "model", "version", "status"]
    rows = {line.split()[1]: line for line in table[1:4]}
    assert rows["first"].split()[2:4] == ["1", "ok"]
    assert "FAILED" in rows["broken"] and "missing.pth" in rows["broken"]
    assert rows["third"].split()[2:5] == ["1", "ok", "onnx,torchscript"]
    assert table[-1] == "2 exported, 1 failed"
    repository = ModelRepository(tmp_path / "published")  # relative to the manifest's directory
    assert repository.list_models() == ["first", "third"]


def test_manifest_errors_name_the_line_and_key(psp_source, tmp_path, capsys):
    manifest = write_manifest(tmp_path, psp_source, MANIFEST.replace("    name: third\n", "    name: third\n    fomats: onnx\n"))
    code = main(["--manifest", str(manifest), "--quiet"])
    assert_one_line_error(code, capsys.readouterr().err, "exports.yaml:15", "entry 3", "'fomats'", "did you mean 'formats'")
    assert not (tmp_path / "published").exists()  # checked before anything is exported

    manifest.write_text("exports:\n  - config: psp.yaml\n")
    code = main(["--manifest", str(manifest), "--quiet"])
    assert_one_line_error(code, capsys.readouterr().err, "exports.yaml:2", "missing 'checkpoint'")
    manifest.write_text("exports: [\n")
    code = main(["--manifest", str(manifest), "--quiet"])
    assert_one_line_error(code, capsys.readouterr().err, "invalid YAML")
    code = main(["--manifest", str(tmp_path / "absent.yaml"), "--quiet"])
    assert_one_line_error(code, capsys.readouterr().err, "absent.yaml", "no such file")


@pytest.mark.parametrize("option", [["--fp16"], ["--format", "onnx,torchscript"], ["--max-batch-size", "2"],
                                    ["--name", "x"], ["--opset", "13"]])
def test_per_export_options_with_a_manifest_are_refused_not_ignored(option, tmp_path, capsys):
    manifest = tmp_path / "exports.yaml"
    manifest.write_text("exports: []\n")
    with pytest.raises(SystemExit) as exited:
        main(["--manifest", str(manifest), *option])
    assert exited.value.code == 2
    assert option[0] in capsys.readouterr().err


def test_manifest_paths_and_defaults(psp_source, tmp_path):
    manifest = load_manifest(write_manifest(tmp_path, psp_source, MANIFEST))
    assert manifest.repository == (tmp_path / "published").resolve()
    assert [e.line for e in manifest.entries] == [6, 9, 12]
    third = manifest.entries[2].options
    assert third["formats"] == ["onnx", "torchscript"] and third["max_batch_size"] == 1 and third["simplify"] is False
    assert Path(third["config"]) == (tmp_path / "psp.yaml").resolve()
    assert yaml.safe_load(MANIFEST)["exports"][0]["name"] == manifest.entries[0].label
