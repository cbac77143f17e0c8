"""Loading original-release, plain and sceneparse checkpoints, and ImageNet backbone files."""

from __future__ import annotations

import pytest
import torch
import torchvision

from training.models import (
    BackboneWeightsError,
    CheckpointError,
    build_model,
    load_backbone_weights,
    load_checkpoint,
)
from training.models.resnet import ResNet

CONFIG = {"arch": "psp", "layers": 18, "classes": 5}


@pytest.fixture(scope="module")
def source():
    """A PSPNet-18 with aux head whose weights (BN statistics included) differ from a fresh model's."""
    torch.manual_seed(1)
    model = build_model(CONFIG, aux=True)
    with torch.no_grad():
        for buffer in model.buffers():
            if buffer.is_floating_point():
                buffer.uniform_(0.5, 1.5)
    return model


def _fresh(aux: bool = False, **extra) -> torch.nn.Module:
    torch.manual_seed(2)
    return build_model({**CONFIG, **extra}, aux=aux)


def _assert_same_weights(loaded: torch.nn.Module, source: torch.nn.Module) -> None:
    reference = source.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, reference[key]), key


def test_original_release_with_module_prefix(tmp_path, source):
    path = tmp_path / "train_epoch_50.pth"
    torch.save({"epoch": 50, "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    model = _fresh(aux=False)
    info = load_checkpoint(model, path)
    _assert_same_weights(model, source)
    assert info.meta == {"epoch": 50}
    assert info.skipped_keys and all(k.startswith("aux.") for k in info.skipped_keys)


def test_plain_state_dict_into_a_model_with_aux(tmp_path, source):
    path = tmp_path / "plain.pth"
    torch.save(source.state_dict(), path)
    model = _fresh(aux=True)
    info = load_checkpoint(model, path, strict_aux=True)
    _assert_same_weights(model, source)
    assert info.skipped_keys == [] and info.missing_optional_keys == [] and info.meta == {}


def test_sceneparse_checkpoint_keeps_its_other_entries(tmp_path, source):
    path = tmp_path / "ours.pth"
    optimizer = torch.optim.SGD(source.parameters(), lr=0.01, momentum=0.9)
    config = {"arch": "psp", "layers": 18, "classes": 5, "base_lr": 0.01}
    torch.save(
        {
            "state_dict": source.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": 3,
            "config": config,
        },
        path,
    )
    model = _fresh(aux=True)
    info = load_checkpoint(model, path)
    _assert_same_weights(model, source)
    assert info.meta["epoch"] == 3 and info.meta["config"] == config and "optimizer" in info.meta


def test_aux_keys_are_optional_for_inference_unless_strict(tmp_path, source):
    path = tmp_path / "no_aux.pth"
    torch.save({k: v for k, v in source.state_dict().items() if not k.startswith("aux.")}, path)
    model = _fresh(aux=True)
    info = load_checkpoint(model, path)
    assert "aux.0.weight" in info.missing_optional_keys
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(_fresh(aux=True), path, strict_aux=True)
    assert "missing: aux.0.weight" in str(caught.value) and "missing: aux.4.bias" in str(caught.value)


def test_missing_bn_counters_are_tolerated(tmp_path, source):
    path = tmp_path / "old.pth"
    torch.save({k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}, path)
    model = _fresh()
    load_checkpoint(model, path)
    assert torch.equal(model.layer0[1].running_var, source.layer0[1].running_var)


def test_every_fault_is_listed_in_one_error(tmp_path, source):
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    del state["module.layer2.1.conv2.weight"]
    del state["module.ppm.features.3.2.running_var"]
    state["module.ppm.features.4.1.weight"] = torch.zeros(128, 512, 1, 1)
    path = tmp_path / "broken.pth"
    torch.save({"state_dict": state}, path)
    model = _fresh(aux=True, classes=7)  # cls.4 and aux.4 now disagree in shape
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(model, path)
    error = caught.value
    assert str(path) in str(error) and "7 key(s) at fault" in str(error)
    assert sorted(error.problems) == sorted(
        [
            "missing: layer2.1.conv2.weight",
            "missing: ppm.features.3.2.running_var",
            "unexpected: ppm.features.4.1.weight",
            "shape: cls.4.weight is (5, 512, 1, 1) in the file, (7, 512, 1, 1) in the model",
            "shape: cls.4.bias is (5,) in the file, (7,) in the model",
            "shape: aux.4.weight is (5, 256, 1, 1) in the file, (7, 256, 1, 1) in the model",
            "shape: aux.4.bias is (5,) in the file, (7,) in the model",
        ]
    )
    assert not torch.equal(model.layer0[0].weight, source.layer0[0].weight)  # nothing was loaded


def test_a_pspnet_checkpoint_does_not_load_into_psanet(tmp_path, source):
    path = tmp_path / "psp.pth"
    torch.save(source.state_dict(), path)
    model = build_model({"arch": "psa", "layers": 18, "classes": 5, "train_h": 33, "train_w": 33}, aux=False)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(model, path)
    assert "missing: psa.proj.0.weight" in caught.value.problems
    assert "unexpected: ppm.features.0.1.weight" in caught.value.problems


def test_unreadable_files_give_clear_errors(tmp_path, source):
    model = _fresh()
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(model, tmp_path / "absent.pth")
    good = tmp_path / "good.pth"
    torch.save(source.state_dict(), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pth: not a readable PyTorch checkpoint"):
        load_checkpoint(model, truncated)
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(model, text)
    listing = tmp_path / "list.pth"
    torch.save([1, 2, 3], listing)
    with pytest.raises(CheckpointError, match="holds a list"):
        load_checkpoint(model, listing)
    no_tensors = tmp_path / "meta_only.pth"
    torch.save({"epoch": 3, "arch": "psp"}, no_tensors)
    with pytest.raises(CheckpointError, match="no state dict found"):
        load_checkpoint(model, no_tensors)
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(model, tmp_path)


# --- ImageNet backbone files -------------------------------------------------------------------------


def _deep_stem_imagenet_file(tmp_path):
    """A ResNet-18 ImageNet file in the original deep-stem format: conv1..3/bn1..3 at top level, plus fc."""
    torch.manual_seed(3)
    trunk = ResNet(18, deep_stem=True)
    names = {
        "layer0.0": "conv1",
        "layer0.1": "bn1",
        "layer0.3": "conv2",
        "layer0.4": "bn2",
        "layer0.6": "conv3",
        "layer0.7": "bn3",
    }
    state = {}
    for key, value in trunk.state_dict().items():
        module, _, leaf = key.rpartition(".")
        state[f"{names.get(module, module)}.{leaf}"] = value
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    path = tmp_path / "resnet18_v2.pth"
    torch.save(state, path)
    return path, trunk


def test_backbone_from_the_original_deep_stem_format(tmp_path):
    path, trunk = _deep_stem_imagenet_file(tmp_path)
    model = _fresh()
    loaded = load_backbone_weights(model, path)
    assert "layer0.6.weight" in loaded and not any(k.startswith("fc.") for k in loaded)
    assert torch.equal(model.layer0[6].weight, trunk.layer0[6].weight)
    assert torch.equal(model.layer4[1].bn2.running_mean, trunk.layer4[1].bn2.running_mean)
    with pytest.raises(CheckpointError, match="holds the deep stem .* deep_stem=False; set deep_stem: True"):
        load_backbone_weights(_fresh(deep_stem=False), path)


def test_backbone_from_torchvision_format(tmp_path):
    torch.manual_seed(4)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(reference.state_dict(), path)
    model = _fresh(deep_stem=False)
    load_backbone_weights(model, path)
    assert torch.equal(model.layer0[0].weight, reference.conv1.weight)
    assert torch.equal(model.layer0[1].running_var, reference.bn1.running_var)
    assert torch.equal(model.layer3[0].downsample[0].weight, reference.layer3[0].downsample[0].weight)
    with pytest.raises(
        CheckpointError, match="torchvision's 7x7 stem, .* deep_stem=True; set deep_stem: False"
    ):
        load_backbone_weights(_fresh(), path)


def test_torchvision_resnet50_names_fit_the_7x7_stem_trunk():
    # Names and shapes only (meta device): torchvision's ResNet-50 maps onto our trunk one to one.
    with torch.device("meta"):
        reference = torchvision.models.resnet50(weights=None).state_dict()
        ours = build_model({"arch": "psp", "layers": 50, "classes": 21, "deep_stem": False}).state_dict()
    renamed = {
        k.replace("conv1.", "layer0.0.", 1)
        if k.startswith("conv1.")
        else k.replace("bn1.", "layer0.1.", 1)
        if k.startswith("bn1.")
        else k: tuple(v.shape)
        for k, v in reference.items()
        if not k.startswith("fc.")
    }
    trunk = {k: tuple(v.shape) for k, v in ours.items() if k.startswith("layer")}
    assert renamed == trunk


def test_backbone_errors_list_every_key(tmp_path):
    torch.manual_seed(5)
    state = torchvision.models.resnet34(weights=None).state_dict()
    path = tmp_path / "resnet34.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as caught:
        load_backbone_weights(_fresh(deep_stem=False), path)  # an 18-layer trunk
    assert "unexpected: layer3.5.conv1.weight" in caught.value.problems
    assert len(caught.value.problems) > 10
    bogus = tmp_path / "bogus.pth"
    torch.save({"weight": torch.zeros(3)}, bogus)
    with pytest.raises(CheckpointError, match="does not look like ResNet ImageNet weights"):
        load_backbone_weights(_fresh(), bogus)


def test_build_model_initialises_the_backbone_from_a_file(tmp_path):
    path, trunk = _deep_stem_imagenet_file(tmp_path)
    model = build_model({**CONFIG, "pretrained_backbone": str(path)}, aux=False)
    assert torch.equal(model.layer2[0].conv1.weight, trunk.layer2[0].conv1.weight)


def test_build_model_can_skip_a_missing_backbone_file(tmp_path):
    config = {**CONFIG, "pretrained_backbone": str(tmp_path / "initmodel" / "resnet18_v2.pth")}
    # A missing ImageNet file is named together with the two ways out (a path, or none).
    with pytest.raises(BackboneWeightsError, match="resnet18_v2.pth.* not found.*pretrained_backbone none"):
        build_model(config)
    assert build_model(config, aux=False, backbone_weights=False).classes == 5
