"""ImageNet initialisation as the original: initmodel/resnet{layers}_v2.pth unless the config says otherwise.

An original config has no `pretrained_backbone` key; the original loaded
./initmodel/resnet{50,101,152}_v2.pth regardless. Here that file is the default, a missing one stops
training with the two ways out (a path, or `none` to train from scratch on purpose), and the log
says which weights were loaded and how many tensors.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.config import config_path, load_config
from training.models import BackboneWeightsError, backbone_weights_path, build_model
from training.train import main

CONFIG = config_path("synthetic/synthetic_pspnet18")
WAYS_OUT = ("`pretrained_backbone PATH`", "`pretrained_backbone none`")


def original_config(tmp_path: Path) -> Path:
    """The synthetic config as the original would write it: no sceneparse-only backbone key."""
    lines = [line for line in CONFIG.read_text().splitlines() if "pretrained_backbone" not in line]
    path = tmp_path / "original.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_an_original_config_defaults_to_the_initmodel_file(tmp_path, monkeypatch):
    cfg = load_config(original_config(tmp_path), ["layers", "50"])
    assert cfg.pretrained_backbone == "initmodel/resnet{layers}_v2.pth"
    monkeypatch.chdir(tmp_path)  # relative to the working directory, as the original
    with pytest.raises(BackboneWeightsError) as info:
        backbone_weights_path(cfg)
    message = str(info.value)
    assert f"initmodel/resnet50_v2.pth (in {tmp_path})" in message and all(way in message for way in WAYS_OUT)
    (tmp_path / "initmodel").mkdir()
    (tmp_path / "initmodel" / "resnet50_v2.pth").write_bytes(b"")
    assert backbone_weights_path(cfg) == "initmodel/resnet50_v2.pth"
    with pytest.raises(BackboneWeightsError, match="resnet101_v2.pth"):
        backbone_weights_path(cfg.merged({"layers": 101}))


@pytest.mark.parametrize("layers", [18, 34])
def test_depths_without_an_original_file_must_name_one(tmp_path, layers):
    cfg = load_config(original_config(tmp_path), ["layers", str(layers)])
    with pytest.raises(BackboneWeightsError) as info:
        backbone_weights_path(cfg)
    assert f"ResNet-{layers} from no ImageNet file" in str(info.value)
    assert all(way in str(info.value) for way in WAYS_OUT)


def test_none_trains_from_scratch_and_a_named_file_must_exist(tmp_path):
    cfg = load_config(original_config(tmp_path), ["pretrained_backbone", "none"])
    assert cfg.pretrained_backbone is None and backbone_weights_path(cfg) is None
    assert backbone_weights_path({"pretrained_backbone": "None", "layers": 50}) is None
    assert backbone_weights_path({"arch": "psp", "layers": 50}) is None  # a plain dict names nothing
    missing = tmp_path / "weights" / "r50.pth"
    with pytest.raises(BackboneWeightsError, match=f"{missing},? not found.*pretrained_backbone none"):
        backbone_weights_path({"pretrained_backbone": str(missing), "layers": 50})


def test_train_stops_at_once_with_the_two_ways_out(synthetic_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    overrides = ["layers", "50", "data_root", str(synthetic_dataset.root), "train_list",
                 str(synthetic_dataset.train_list), "save_path", str(tmp_path / "run")]
    assert main(["--config", str(original_config(tmp_path)), *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sceneparse train: ImageNet backbone weights initmodel/resnet50_v2.pth")
    assert all(way in err[0] for way in WAYS_OUT)
    assert not (tmp_path / "run").exists()  # stopped before anything was started or written


def test_training_loads_the_file_and_logs_it(synthetic_dataset, tmp_path, monkeypatch, capsys):
    """The trunk starts from the file: with a negligible learning rate its convolutions end as loaded."""
    monkeypatch.chdir(tmp_path)
    cfg = load_config(CONFIG)
    source = build_model(cfg, aux=False)
    trunk = {k: v.clone() for k, v in source.state_dict().items() if k.startswith(("layer0.", "layer1.",
                                                                                   "layer2.", "layer3.", "layer4."))}
    (tmp_path / "initmodel").mkdir()
    torch.save(trunk, tmp_path / "initmodel" / "r18.pth")
    lines = synthetic_dataset.train_list.read_text().splitlines()[:2]
    (tmp_path / "train2.txt").write_text("\n".join(lines) + "\n")
    overrides = ["pretrained_backbone", "initmodel/r{layers}.pth", "data_root", str(synthetic_dataset.root),
                 "train_list", str(tmp_path / "train2.txt"), "save_path", str(tmp_path / "run"), "train_h", "33",
                 "train_w", "33", "batch_size", "2", "epochs", "1", "base_lr", "1.0e-12"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["--config", str(CONFIG), *overrides]) == 0
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert f"=> loaded ImageNet backbone weights 'initmodel/r18.pth' ({len(trunk)} tensors)" in err
    state = torch.load(tmp_path / "run" / "final.pth", weights_only=True)["state_dict"]
    convs = [k for k in trunk if k.endswith(".weight") and trunk[k].dim() == 4]
    assert len(convs) > 10
    for key in convs:
        torch.testing.assert_close(state[f"module.{key}"], trunk[key], atol=1e-6, rtol=0)
