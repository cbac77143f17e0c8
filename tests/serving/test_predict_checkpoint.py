"""`sceneparse predict --config CFG --checkpoint CKPT`: the checkpoint in eager PyTorch through the same
pipeline equals the same checkpoint exported and served (within the export gate)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from serving import predict
from tests.serving.conftest import encode, scene_array

pytest.importorskip("torch")

MODEL = "tiny_psp"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for index, (height, width) in enumerate([(40, 50), (64, 48), (90, 120)]):
        (folder / f"p{index}.png").write_bytes(encode(scene_array(height, width, seed=40 + index)))
    return folder


@pytest.fixture(scope="module")
def config_file(tiny_repository, tmp_path_factory):
    from training.config import config_from_mapping

    path = tmp_path_factory.mktemp("config") / "tiny_psp.yaml"
    path.write_text(config_from_mapping(tiny_repository.configs[MODEL]).to_yaml())
    return path


def pngs(folder) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def from_checkpoint(tiny_repository, config_file, out, *inputs, extra=()) -> int:
    return predict.main(["--config", str(config_file), "--checkpoint", str(tiny_repository.checkpoints[MODEL]),
                         "--out", str(out), "--no-progress", *extra, *map(str, inputs)])


def from_repository(tiny_repository, out, *inputs, extra=()) -> int:
    return predict.main(["--model", MODEL, "--repository", str(tiny_repository.root), "--out", str(out),
                         "--no-progress", *extra, *map(str, inputs)])


@pytest.mark.parametrize("output", ["label", "confidence"])
def test_the_checkpoint_gives_what_the_exported_model_serves(tiny_repository, config_file, photos, tmp_path,
                                                             output):
    eager, served = tmp_path / "eager", tmp_path / "served"
    assert from_checkpoint(tiny_repository, config_file, eager, photos, extra=["--output", output]) == 0
    assert from_repository(tiny_repository, served, photos, extra=["--output", output]) == 0
    eager_pngs, served_pngs = pngs(eager), pngs(served)
    assert set(eager_pngs) == {"p0.png", "p1.png", "p2.png"} == set(served_pngs)
    for name, expected in served_pngs.items():
        found = eager_pngs[name]
        assert found.shape == expected.shape
        if output == "label":
            # The export gate's figure: PyTorch and ONNX Runtime agree but for numerical ties.
            assert (found == expected).mean() >= 0.999, name
        else:
            assert np.abs(found.astype(np.int16) - expected).max() <= 1, name


def test_the_metadata_from_the_config_is_what_export_published(tiny_repository, config_file):
    from training.checkpoint_model import checkpoint_metadata, read_config

    meta = checkpoint_metadata(read_config(config_file), tiny_repository.checkpoints[MODEL])
    published = tiny_repository.models[MODEL].metadata
    for field in ("classes", "palette", "crop_h", "crop_w", "mean", "std", "base_size", "test_scales", "flip",
                  "stride_rate", "ignore_label", "num_classes", "arch", "layers", "dataset"):
        assert getattr(meta, field) == getattr(published, field), field
    assert meta.version == 0 and meta.checkpoint_name == tiny_repository.checkpoints[MODEL].name


def test_usage_errors_name_the_problem(tiny_repository, config_file, photos, tmp_path, capsys):
    checkpoint = str(tiny_repository.checkpoints[MODEL])
    psa_config = tmp_path / "psa.yaml"
    from training.config import config_from_mapping

    psa_config.write_text(config_from_mapping(tiny_repository.configs["tiny_psa"]).to_yaml())
    cases = [
        (["--config", str(config_file)], "--config and --checkpoint"),
        (["--config", str(config_file), "--checkpoint", checkpoint, "--model", MODEL], "not both"),
        (["--config", str(config_file), "--checkpoint", str(tmp_path / "none.pth")], "no such file"),
        (["--config", str(tmp_path / "none.yaml"), "--checkpoint", checkpoint], "none.yaml"),
        (["--config", str(config_file), "--checkpoint", checkpoint, "--backend", "triton"], "eager PyTorch"),
        (["--config", str(psa_config), "--checkpoint", checkpoint], "--checkpoint"),  # weights of another network
    ]
    for index, (argv, message) in enumerate(cases):
        code = predict.main([*argv, "--out", str(tmp_path / f"out{index}"), "--no-progress", str(photos)])
        err = capsys.readouterr().err.strip()
        assert code == 2, (argv, err)
        assert message in err and err.count("\n") == 0, err


def test_a_rerun_resumes_and_other_weights_are_another_job(tiny_repository, config_file, photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert from_checkpoint(tiny_repository, config_file, out, photos, extra=["--output", "label"]) == 0
    capsys.readouterr()
    assert from_checkpoint(tiny_repository, config_file, out, photos, extra=["--output", "label"]) == 0
    assert "3 already complete, skipped" in capsys.readouterr().err
    import torch

    other = tmp_path / "other.pth"
    state = torch.load(tiny_repository.checkpoints[MODEL], weights_only=True)
    key = next(k for k in state["state_dict"] if k.endswith("cls.4.bias"))
    state["state_dict"][key] = state["state_dict"][key] + 1.0
    torch.save(state, other)
    code = predict.main(["--config", str(config_file), "--checkpoint", str(other), "--out", str(out), "--output",
                         "label", "--no-progress", str(photos)])
    assert code == 2
    assert "another job" in capsys.readouterr().err
