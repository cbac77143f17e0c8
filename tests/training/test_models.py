"""Every registered model: forward shapes, train/eval outputs, tracing, ONNX export, the original key layout."""

from __future__ import annotations

import hashlib
import io
import types
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch

from training.models import build_model, get_model_builder, list_models, model_name
from training.models.psanet import default_mask_size

ALL_MODELS = [f"{arch}{depth}" for arch in ("pspnet", "psanet") for depth in (18, 34, 50, 101, 152)]
CLASSES = 5


@pytest.fixture(autouse=True)
def _few_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def _builder_kwargs(name: str, crop: int = 33, **extra) -> dict:
    kwargs = {"classes": CLASSES, **extra}
    if name.startswith("psanet"):
        kwargs.setdefault("train_h", crop)
        kwargs.setdefault("train_w", crop)
    return kwargs


def _tiny(arch: str, crop: int = 33, aux: bool = False, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    config = {"arch": arch, "layers": 18, "classes": CLASSES, "train_h": crop, "train_w": crop, **extra}
    return build_model(config, aux=aux)


def _state_listing(model: torch.nn.Module) -> dict[str, str]:
    return {k: str(tuple(v.shape)) for k, v in model.state_dict().items()}


# --- the registry -----------------------------------------------------------------------------------


def test_registry_lists_every_arch_and_depth():
    assert sorted(list_models()) == sorted(ALL_MODELS)


def test_unknown_names_and_configs_list_the_choices():
    with pytest.raises(ValueError, match="choose one of .*pspnet50"):
        get_model_builder("pspnet49")
    # A config is validated by its schema (training.config), which names the key and the choices.
    with pytest.raises(ValueError, match=r"arch: 'deeplab' is not one of 'psp', 'psa'"):
        build_model({"arch": "deeplab", "layers": 50, "classes": 5})
    with pytest.raises(ValueError, match=r"layers: 20 is not one of 18, 34, 50, 101, 152"):
        build_model({"arch": "psp", "layers": 20, "classes": 5})
    with pytest.raises(ValueError, match=r"unknown arch 'deeplab'; choose one of psp, psa"):
        model_name("deeplab", 50)
    with pytest.raises(ValueError, match=r"unknown layers 20 .*18, 34, 50, 101, 152"):
        model_name("psp", 20)
    with pytest.raises(ValueError, match="'classes'"):
        build_model({"arch": "psp", "layers": 18})
    with pytest.raises(ValueError, match="zoom_factor"):
        build_model({"arch": "psp", "layers": 18, "classes": 5, "zoom_factor": 3})
    assert model_name("psa", "101") == "psanet101"


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_model_builds_and_gives_shapes_in_eval_and_train(name):
    # On the meta device: the whole graph runs (shapes, dtypes) without memory or compute.
    with torch.device("meta"):
        model = get_model_builder(name)(**_builder_kwargs(name, crop=65))
        batch = torch.empty(2, 3, 65, 65)
        model.eval()
        logits = model(batch)
        model.train()
        main, aux = model(batch)
    assert logits.shape == main.shape == aux.shape == (2, CLASSES, 65, 65)
    trunk = 512 if name.endswith(("18", "34")) else 2048
    assert model.state_dict()["cls.0.weight"].shape == (512, 2 * trunk, 3, 3)
    assert model.state_dict()["aux.0.weight"].shape == (256, trunk // 2, 3, 3)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_model_runs_for_real_and_traces(name):
    # Real weights and compute at a tiny input (17x17, so ResNet-152 stays quick): train-mode
    # (main, aux) on 2 images (BN needs two values per channel in the 1x1 pyramid bin), eval
    # logits, and a trace that reproduces the eager logits.
    torch.manual_seed(0)
    model = get_model_builder(name)(**_builder_kwargs(name, crop=17))
    model.train()
    main, aux = model(torch.randn(2, 3, 17, 17))
    assert main.shape == aux.shape == (2, CLASSES, 17, 17) and torch.isfinite(main).all()
    x = torch.randn(1, 3, 17, 17)
    model.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logits = model(x)
        traced = torch.jit.trace(model, x)
        torch.testing.assert_close(traced(x), logits, rtol=1e-4, atol=1e-4)
    assert logits.shape == (1, CLASSES, 17, 17)


# --- real forward passes at depth 18 -----------------------------------------------------------------


@pytest.mark.parametrize("arch", ["psp", "psa"])
def test_eval_and_train_outputs(arch):
    model = _tiny(arch, aux=True)
    x = torch.randn(2, 3, 33, 33)
    model.train()
    main, aux = model(x)
    assert main.shape == aux.shape == (2, CLASSES, 33, 33)
    assert main.requires_grad and aux.requires_grad
    (main.mean() + 0.4 * aux.mean()).backward()
    assert model.layer0[0].weight.grad is not None and model.aux[0].weight.grad is not None
    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, CLASSES, 33, 33) and torch.isfinite(logits).all()


def test_without_aux_head_train_mode_returns_main_logits_only():
    model = _tiny("psp", aux=False).train()
    out = model(torch.randn(2, 3, 33, 33))
    assert isinstance(out, torch.Tensor) and out.shape == (2, CLASSES, 33, 33)
    assert not any(k.startswith("aux.") for k in model.state_dict())


@pytest.mark.parametrize("zoom, side", [(1, 5), (2, 9), (4, 17), (8, 33)])
def test_zoom_factor_sets_output_size(zoom, side):
    model = _tiny("psp", zoom_factor=zoom).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 33, 33)).shape == (1, CLASSES, side, side)


@pytest.mark.parametrize("size", [(32, 33), (33, 40), (64, 64)])
@pytest.mark.parametrize("arch", ["psp", "psa"])
def test_bad_input_size_raises_value_error_naming_it(arch, size):
    model = _tiny(arch).eval()
    with pytest.raises(ValueError, match=rf"input size {size[0]}x{size[1]} is not supported.*8k\+1"):
        model(torch.randn(1, 3, *size))


def test_output_stride_16_and_torchvision_stem():
    model = _tiny("psp", crop=65, output_stride=16, deep_stem=False).eval()
    assert model.state_dict()["layer0.0.weight"].shape == (64, 3, 7, 7)
    assert model.state_dict()["layer1.0.conv1.weight"].shape == (64, 64, 3, 3)
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        features = model.layer4(model.layer3(model.layer2(model.layer1(model.layer0(x)))))
        assert features.shape[-2:] == (5, 5)  # stride 16; stride 8 gives 9x9
        assert model(x).shape == (1, CLASSES, 65, 65)
    dilated = _tiny("psp", crop=65).eval()
    with torch.no_grad():
        assert dilated.layer4(dilated.layer3(dilated.layer2(dilated.layer1(dilated.layer0(x))))).shape[
            -2:
        ] == (9, 9)
    assert dilated.layer4[0].conv2.dilation == (4, 4) and dilated.layer3[1].conv1.dilation == (2, 2)


def test_config_may_be_an_attribute_object():
    config = types.SimpleNamespace(arch="psa", layers=18, classes=3, psa_type=0, train_h=33, train_w=33)
    model = build_model(config, aux=False)
    assert model.psa.psa_type == 0 and model.classes == 3 and not model.has_aux


def test_psanet_mask_defaults_follow_the_original_rule():
    assert default_mask_size(465, 2) == 59 and default_mask_size(709, 2) == 89
    assert default_mask_size(465, 2, compact=True) == 30
    model = build_model({"arch": "psa", "layers": 18, "classes": 5, "train_h": 97, "train_w": 65}, aux=False)
    assert (model.mask_h, model.mask_w) == (13, 9)
    assert model.state_dict()["psa.attention.3.weight"].shape[0] == 13 * 9
    with pytest.raises(ValueError, match="mask_h must be odd"):
        build_model({"arch": "psa", "layers": 18, "classes": 5, "mask_h": 8, "mask_w": 9})


def test_compact_psanet_refuses_other_sizes():
    model = _tiny("psa", compact=True).eval()
    with pytest.raises(ValueError, match="compact PSA was built for a 3x3 attention grid"):
        model(torch.randn(1, 3, 65, 65))


def test_backbone_and_head_modules_split_the_parameters():
    model = _tiny("psa", aux=True)
    backbone = {id(p) for m in model.backbone_modules() for p in m.parameters()}
    heads = {id(p) for m in model.head_modules() for p in m.parameters()}
    assert backbone.isdisjoint(heads)
    assert backbone | heads == {id(p) for p in model.parameters()}
    assert {type(m).__name__ for m in model.head_modules()} == {"PSA", "Sequential"}


# --- tracing and ONNX --------------------------------------------------------------------------------

# PSPNet at 41x41: a 6x6 feature map, which every bin (1, 2, 3, 6) divides, as the ONNX exporter needs.
EXPORT_CASES = [
    pytest.param("psp", 41, {}, id="psp18"),
    pytest.param("psa", 33, {"psa_type": 0}, id="psa18-collect"),
    pytest.param("psa", 33, {"psa_type": 1}, id="psa18-distribute"),
    pytest.param("psa", 33, {"psa_type": 2}, id="psa18-bidirection"),
    pytest.param("psa", 33, {"psa_type": 2, "compact": True}, id="psa18-compact"),
]


@pytest.mark.parametrize("arch, crop, extra", EXPORT_CASES)
def test_trace_and_onnx_match_eager(arch, crop, extra):
    model = _tiny(arch, crop=crop, **extra).eval()
    x = torch.randn(2, 3, crop, crop)
    with torch.no_grad():
        eager = model(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, x[:1])
            buffer = io.BytesIO()
            torch.onnx.export(
                model,
                (x[:1],),
                buffer,
                opset_version=17,
                dynamo=False,
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            )
        assert (traced(x) - eager).abs().max().item() <= 1e-5
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, {"image": x.numpy()})
    assert onnx_logits.shape == (2, CLASSES, crop, crop)
    assert np.abs(onnx_logits - eager.numpy()).max() <= 1e-4


# --- the original key layout (ResNet-50, 21 classes, with aux) ---------------------------------------

# Facts of the original release's state dicts (PSPNet-50 and PSANet-50 on VOC2012, 21 classes, aux
# head, PSANet bi-direction 59x59 masks): entry count, learnable parameters, and the sha256 of the
# sorted "key<TAB>shape" listing, shapes written as Python tuples.
REFERENCE = {
    "psp": (370, 49_081_578, "56844c6d0a44eb58b4a1f6f39cf77c0e186691c647eabb5dc073d731bf276e61"),
    "psa": (378, 53_174_506, "cc2f70f7a86df17074557cbd7e1676419d84b9ef2945f7f7649abc7c44c5fb97"),
}

# The keys outside the trunk: convolution weights/biases with their shapes, and BatchNorm layers by
# channel count (each holds weight, bias, running_mean, running_var, num_batches_tracked).
HEADS_CONV = {
    "cls.0.weight": (512, 4096, 3, 3),
    "cls.4.weight": (21, 512, 1, 1),
    "cls.4.bias": (21,),
    "aux.0.weight": (256, 1024, 3, 3),
    "aux.4.weight": (21, 256, 1, 1),
    "aux.4.bias": (21,),
}
HEADS_BN = {"cls.1": 512, "aux.1": 256}
NON_TRUNK = {
    "psp": (
        {**{f"ppm.features.{i}.1.weight": (512, 2048, 1, 1) for i in range(4)}, **HEADS_CONV},
        {**{f"ppm.features.{i}.2": 512 for i in range(4)}, **HEADS_BN},
    ),
    "psa": (
        {
            "psa.reduce.0.weight": (512, 2048, 1, 1),
            "psa.attention.0.weight": (512, 512, 1, 1),
            "psa.attention.3.weight": (3481, 512, 1, 1),
            "psa.reduce_p.0.weight": (512, 2048, 1, 1),
            "psa.attention_p.0.weight": (512, 512, 1, 1),
            "psa.attention_p.3.weight": (3481, 512, 1, 1),
            "psa.proj.0.weight": (2048, 1024, 1, 1),
            **HEADS_CONV,
        },
        {
            "psa.reduce.1": 512,
            "psa.attention.1": 512,
            "psa.reduce_p.1": 512,
            "psa.attention_p.1": 512,
            "psa.proj.1": 2048,
            **HEADS_BN,
        },
    ),
}


@pytest.fixture(scope="module")
def reference_models():
    with torch.device("meta"):
        return {
            "psp": build_model({"arch": "psp", "layers": 50, "classes": 21}),
            "psa": build_model({"arch": "psa", "layers": 50, "classes": 21, "train_h": 465, "train_w": 465}),
        }


@pytest.mark.parametrize("arch", ["psp", "psa"])
def test_state_dict_matches_the_original_release(reference_models, arch):
    model = reference_models[arch]
    listing = _state_listing(model)
    entries, learnable, digest = REFERENCE[arch]
    assert len(listing) == entries
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == learnable
    canonical = "\n".join(f"{key}\t{listing[key]}" for key in sorted(listing))
    assert hashlib.sha256(canonical.encode()).hexdigest() == digest

    convs, norms = NON_TRUNK[arch]
    expected = {k: str(v) for k, v in convs.items()}
    for prefix, channels in norms.items():
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            expected[f"{prefix}.{suffix}"] = str((channels,))
        expected[f"{prefix}.num_batches_tracked"] = "()"
    non_trunk = {k: v for k, v in listing.items() if not k.startswith("layer")}
    assert non_trunk == expected


def test_deep_stem_and_deeper_trunks_follow_the_original_names(reference_models):
    listing = _state_listing(reference_models["psp"])
    stem = {k: v for k, v in listing.items() if k.startswith("layer0.") and k.endswith("weight")}
    assert stem == {
        "layer0.0.weight": "(64, 3, 3, 3)",
        "layer0.1.weight": "(64,)",
        "layer0.3.weight": "(64, 64, 3, 3)",
        "layer0.4.weight": "(64,)",
        "layer0.6.weight": "(128, 64, 3, 3)",
        "layer0.7.weight": "(128,)",
    }
    assert listing["layer1.0.downsample.0.weight"] == "(256, 128, 1, 1)"
    with torch.device("meta"):
        deep = {n: _state_listing(get_model_builder(n)(classes=21)) for n in ("pspnet101", "pspnet152")}
    assert (
        deep["pspnet101"]["layer3.22.conv3.weight"] == "(1024, 256, 1, 1)"
        and "layer3.23.conv1.weight" not in deep["pspnet101"]
    )
    assert (
        deep["pspnet152"]["layer2.7.conv1.weight"] == "(128, 512, 1, 1)"
        and "layer3.35.bn3.weight" in deep["pspnet152"]
    )
    # every key of ResNet-50 PSPNet exists in the deeper ones with the same shape
    assert all(deep["pspnet101"].get(k) == v for k, v in listing.items())


def test_psanet_takes_sizes_the_shrink_does_not_divide():
    # 41 -> a 6-wide stride-8 map, shrunk to 3 and back to 5 by the original rule; the context is
    # resized onto the trunk grid instead of failing in the concat as the original did.
    model = _tiny("psa", crop=41).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 41, 57)).shape == (1, CLASSES, 41, 57)
