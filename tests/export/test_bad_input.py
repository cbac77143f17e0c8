"""Bad input: one clear line on stderr, exit status 1, and nothing left behind."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import export.building
from export.cli import main
from export.onnx_file import write_onnx
from training.config import KEYS


def write_yaml_config(config: dict, path: Path) -> Path:
    """Write a flat config in the original sectioned YAML layout."""
    sections: dict[str, dict] = {}
    for key, value in config.items():
        sections.setdefault(KEYS[key].section, {})[key] = value
    path.write_text(yaml.safe_dump(sections, sort_keys=False))
    return path


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sceneparse export: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def config_file(psp_source, tmp_path) -> Path:
    return write_yaml_config(psp_source.config, tmp_path / "psp.yaml")


def export_args(config: Path, checkpoint: Path, repository: Path) -> list[str]:
    return ["--config", str(config), "--checkpoint", str(checkpoint), "--repository", str(repository),
            "--max-batch-size", "1", "--no-simplify", "--quiet"]


def test_missing_checkpoint(config_file, tmp_path, capsys):
    code, _, err = run_cli(export_args(config_file, tmp_path / "nowhere.pth", tmp_path / "repo"), capsys)
    assert_one_line_error(code, err, "nowhere.pth", "no such file")
    assert not (tmp_path / "repo").exists()


def test_truncated_checkpoint(config_file, psp_source, tmp_path, capsys):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(psp_source.checkpoint.read_bytes()[:4096])
    code, _, err = run_cli(export_args(config_file, truncated, tmp_path / "repo"), capsys)
    assert_one_line_error(code, err, "truncated.pth", "not a readable PyTorch checkpoint")
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("content", ["text", "list"])
def test_file_that_is_no_checkpoint(content, config_file, tmp_path, capsys):
    bogus = tmp_path / "bogus.pth"
    if content == "text":
        bogus.write_text("these are not the weights you are looking for\n")
    else:
        torch.save([1, 2, 3], bogus)
    code, _, err = run_cli(export_args(config_file, bogus, tmp_path / "repo"), capsys)
    assert_one_line_error(code, err, "bogus.pth")
    assert not (tmp_path / "repo").exists()


def test_checkpoint_that_does_not_fit_the_config(psp_source, tmp_path, capsys):
    # The weights are a ResNet-18 PSPNet with 6 classes; this config asks for 7 classes.
    config = write_yaml_config({**psp_source.config, "classes": 7, "dataset": "custom7",
                                "names_path": None, "colors_path": None}, tmp_path / "seven.yaml")
    names = tmp_path / "names.txt"
    colors = tmp_path / "colors.txt"
    names.write_text("".join(f"c{i}\n" for i in range(7)))
    colors.write_text("".join(f"{i} {i} {i}\n" for i in range(7)))
    data = yaml.safe_load(config.read_text())
    data["TEST"].update(names_path=str(names), colors_path=str(colors))
    config.write_text(yaml.safe_dump(data))
    code, _, err = run_cli(export_args(config, psp_source.checkpoint, tmp_path / "repo"), capsys)
    assert_one_line_error(code, err, psp_source.checkpoint.name, "cls.4.weight")
    assert not (tmp_path / "repo").exists()


def test_unknown_arch(psp_source, tmp_path, capsys):
    config = write_yaml_config(psp_source.config, tmp_path / "arch.yaml")
    config.write_text(config.read_text().replace("arch: psp", "arch: deeplab"))
    code, _, err = run_cli(export_args(config, psp_source.checkpoint, tmp_path / "repo"), capsys)
    assert_one_line_error(code, err, "arch", "deeplab")
    assert not (tmp_path / "repo").exists()
    # The library says the same for a config given as a mapping.
    with pytest.raises(export.ExportError, match="arch"):
        export.export_checkpoint({**psp_source.config, "arch": "deeplab"}, psp_source.checkpoint, tmp_path / "repo")


def test_missing_config(psp_source, tmp_path, capsys):
    code, _, err = run_cli(export_args(tmp_path / "none.yaml", psp_source.checkpoint, tmp_path / "repo"), capsys)
    assert_one_line_error(code, err, "none.yaml", "no such file")


def test_repository_path_that_is_a_file(config_file, psp_source, tmp_path, capsys):
    occupied = tmp_path / "model_repository"
    occupied.write_text("not a directory\n")
    code, _, err = run_cli(export_args(config_file, psp_source.checkpoint, occupied), capsys)
    assert_one_line_error(code, err, "is a file, not a directory")
    assert occupied.read_text() == "not a directory\n"
    code, _, err = run_cli(export_args(config_file, psp_source.checkpoint, occupied / "inside"), capsys)
    assert_one_line_error(code, err, "is a file, not a directory")


def test_unknown_format_and_bad_model_name(config_file, psp_source, tmp_path, capsys):
    args = export_args(config_file, psp_source.checkpoint, tmp_path / "repo")
    code, _, err = run_cli([*args, "--format", "onnx,tensorrt"], capsys)
    assert_one_line_error(code, err, "tensorrt")
    code, _, err = run_cli([*args, "--name", "../escape"], capsys)
    assert_one_line_error(code, err, "invalid model name")
    assert not (tmp_path / "repo").exists()


def test_failed_verification_publishes_nothing(config_file, psp_source, tmp_path, capsys, monkeypatch):
    # A real exporter fault: the ONNX file is written from a module whose classifier bias drifted.
    def drifting_write_onnx(module, example, path, **kwargs):
        with torch.no_grad():
            module.cls[4].bias.add_(1e-3)
        write_onnx(module, example, path, **kwargs)

    monkeypatch.setattr(export.building, "write_onnx", drifting_write_onnx)
    code, _, err = run_cli(export_args(config_file, psp_source.checkpoint, tmp_path / "repo"), capsys)
    assert_one_line_error(code, err, "verification failed", "onnxruntime", "nothing was published")
    assert not (tmp_path / "repo").exists()


def test_argument_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as excinfo:
        main(["--checkpoint", "x.pth"])
    assert excinfo.value.code == 2
    with pytest.raises(SystemExit) as excinfo:
        main(["--config", "c.yaml"])  # no checkpoint
    assert excinfo.value.code == 2
    assert "--checkpoint is required" in capsys.readouterr().err


def test_crop_the_model_cannot_run_at(make_source, tmp_path):
    # A compact PSANet's attention map is sized for its training crop; 49 gives a 4x4 grid, not 3x3.
    source = make_source("psa", fit=False, compact=True)
    with pytest.raises(export.ExportError, match="does not run at the export crop 49x49"):
        export.export_checkpoint({**source.config, "test_h": 49, "test_w": 49}, source.checkpoint, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_a_stride8_export_whose_pipeline_zoom_disagrees_publishes_nothing(psp_source, tmp_path, monkeypatch):
    # The gateway zooms stride-8 logits with serving.pipeline.resize_bilinear; a zoom that does not
    # reproduce PyTorch's (here: half-pixel centres instead of aligned corners) must stop the export.
    import serving.pipeline
    from export import ExportOptions, export_checkpoint
    from export.errors import VerificationError

    real = serving.pipeline.resize_bilinear
    monkeypatch.setattr(serving.pipeline, "resize_bilinear",
                        lambda array, size, align_corners=False: real(array, size, align_corners=False))
    with pytest.raises(VerificationError, match="stride-8 logits.*nothing was published"):
        export_checkpoint(psp_source.config, psp_source.checkpoint, tmp_path / "repo",
                          ExportOptions(logits="feature", max_batch_size=2, simplify=False),
                          name="feature_psp")
    assert not (tmp_path / "repo" / "feature_psp").exists()
