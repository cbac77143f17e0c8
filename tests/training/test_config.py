"""Config loading: the original YAML layout, typed keys, overrides, clear errors, shipped configs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from training.config import (
    ADDITIONS,
    KEYS,
    Config,
    ConfigError,
    config_from_mapping,
    config_path,
    find_config,
    list_configs,
    load_config,
)
from training.datasets import dataset_info_for_config

# The namespace of CONTRIBUTING.md: the original keys and the sceneparse additions.
ORIGINAL_KEYS = [
    "data_root",
    "train_list",
    "val_list",
    "test_list",
    "classes",
    "arch",
    "layers",
    "sync_bn",
    "train_h",
    "train_w",
    "scale_min",
    "scale_max",
    "rotate_min",
    "rotate_max",
    "zoom_factor",
    "ignore_label",
    "aux_weight",
    "train_gpu",
    "workers",
    "batch_size",
    "batch_size_val",
    "base_lr",
    "epochs",
    "start_epoch",
    "power",
    "momentum",
    "weight_decay",
    "manual_seed",
    "print_freq",
    "save_freq",
    "save_path",
    "weight",
    "resume",
    "evaluate",
    "dist_url",
    "dist_backend",
    "multiprocessing_distributed",
    "world_size",
    "rank",
    "use_apex",
    "opt_level",
    "keep_batchnorm_fp32",
    "loss_scale",
    "split",
    "base_size",
    "test_h",
    "test_w",
    "scales",
    "has_prediction",
    "index_start",
    "index_step",
    "test_gpu",
    "model_path",
    "save_folder",
    "colors_path",
    "names_path",
    "psa_type",
    "compact",
    "shrink_factor",
    "mask_h",
    "mask_w",
    "normalization_factor",
    "psa_softmax",
]
ADDED_KEYS = [
    "dataset",
    "deep_stem",
    "output_stride",
    "pretrained_backbone",
    "bins",
    "frozen_bn",
    "amp",
    "channels_last",
    "keep_last",
    "label_scale",
    "flip",
]

# A file in the original project's layout (no sceneparse keys), with the apex keys of its later
# revisions and the blank values the original used for "none".
ORIGINAL_PSA = """\
DATA:
  data_root: /data/voc2012
  train_list: /data/voc2012/list/train_aug.txt
  val_list: /data/voc2012/list/val.txt
  classes: 21

TRAIN:
  arch: psa
  layers: 50
  sync_bn: True  # adopt syncbn or not
  train_h: 465
  train_w: 465
  scale_min: 0.5
  scale_max: 2.0
  rotate_min: -10
  rotate_max: 10
  zoom_factor: 8
  ignore_label: 255
  aux_weight: 0.4
  psa_type: 2
  compact: 0
  shrink_factor: 2
  mask_h:
  mask_w:
  normalization_factor: 1.0
  psa_softmax: 1
  train_gpu: [0, 1, 2, 3, 4, 5, 6, 7]
  workers: 16
  batch_size: 16
  batch_size_val: 1
  base_lr: 0.01
  epochs: 50
  start_epoch: 0
  power: 0.9
  momentum: 0.9
  weight_decay: 0.0001
  manual_seed:
  print_freq: 10
  save_freq: 1
  save_path: exp/voc2012/psanet50/model
  weight:
  resume:
  evaluate: False
Distributed:
  dist_url: tcp://127.0.0.1:6789
  dist_backend: 'nccl'
  multiprocessing_distributed: True
  world_size: 1
  rank: 0
  use_apex: True
  opt_level: 'O0'
  keep_batchnorm_fp32:
  loss_scale:

TEST:
  test_list: /data/voc2012/list/val.txt
  split: val
  base_size: 512
  test_h: 465
  test_w: 465
  scales: [1.0]
  has_prediction: False
  index_start: 0
  index_step: 0
  test_gpu: [0]
  model_path: exp/voc2012/psanet50/model/train_epoch_50.pth
  save_folder: exp/voc2012/psanet50/result/epoch_50/val/ss
  colors_path: dataset/voc2012/voc2012_colors.txt
  names_path: dataset/voc2012/voc2012_names.txt
"""

# name -> (arch, layers, crop, classes, epochs, base_size) as in the original configs.
SHIPPED = {
    "ade20k/ade20k_pspnet50": ("psp", 50, 473, 150, 100, 512),
    "ade20k/ade20k_pspnet101": ("psp", 101, 473, 150, 100, 512),
    "ade20k/ade20k_psanet50": ("psa", 50, 465, 150, 100, 512),
    "ade20k/ade20k_psanet101": ("psa", 101, 465, 150, 100, 512),
    "voc2012/voc2012_pspnet50": ("psp", 50, 473, 21, 50, 512),
    "voc2012/voc2012_pspnet101": ("psp", 101, 473, 21, 50, 512),
    "voc2012/voc2012_psanet50": ("psa", 50, 465, 21, 50, 512),
    "voc2012/voc2012_psanet101": ("psa", 101, 465, 21, 50, 512),
    "cityscapes/cityscapes_pspnet50": ("psp", 50, 713, 19, 200, 2048),
    "cityscapes/cityscapes_pspnet101": ("psp", 101, 713, 19, 200, 2048),
    "cityscapes/cityscapes_psanet50": ("psa", 50, 705, 19, 200, 2048),
    "cityscapes/cityscapes_psanet101": ("psa", 101, 705, 19, 200, 2048),
}


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


MINIMAL = """\
DATA:
  classes: 21
TRAIN:
  arch: psp
  layers: 50
"""


def test_schema_holds_exactly_the_documented_namespace():
    assert set(KEYS) == set(ORIGINAL_KEYS) | set(ADDED_KEYS)
    assert set(ADDITIONS) == set(ADDED_KEYS)


def test_an_original_file_loads_unchanged_with_defaults_for_the_additions(tmp_path):
    cfg = load_config(write(tmp_path, ORIGINAL_PSA))
    assert (cfg.arch, cfg.layers, cfg.classes, cfg.train_h) == ("psa", 50, 21, 465)
    assert cfg.mask_h is None and cfg.manual_seed is None and cfg.weight is None
    assert cfg.use_apex is True and cfg.opt_level == "O0" and cfg.loss_scale is None
    assert cfg.rotate_min == -10.0 and isinstance(cfg.rotate_min, float)  # int promoted to float
    # sceneparse additions take the defaults that keep the original behaviour
    assert cfg.deep_stem is True and cfg.output_stride == 8 and cfg.bins == [1, 2, 3, 6]
    assert cfg.flip is True and cfg.amp is None and cfg.label_scale == 1 and cfg.keep_last == 2
    assert cfg.dataset is None
    assert cfg.pretrained_backbone == "initmodel/resnet{layers}_v2.pth"  # the original's ImageNet file
    assert dataset_info_for_config(cfg).name == "voc2012"  # from names_path, files need not exist


def test_config_gives_attribute_and_mapping_access(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    assert isinstance(cfg, Config) and cfg.path == tmp_path / "cfg.yaml"
    assert cfg.base_lr == cfg["base_lr"] == cfg.get("base_lr") == 0.01
    assert cfg.get("no_such_key", "fallback") == "fallback"
    assert set(cfg) == set(KEYS) and len(cfg) == len(KEYS)
    plain = cfg.to_dict()
    plain["scales"].append(2.0)
    assert cfg.scales == [1.0], "to_dict must copy lists"
    with pytest.raises(AttributeError, match="base_lrr.*did you mean 'base_lr'"):
        _ = cfg.base_lrr
    cfg.epochs = 3
    assert cfg.epochs == 3
    cfg["base_lr"] = 1  # promoted like an override
    assert cfg.base_lr == 1.0 and isinstance(cfg.base_lr, float)
    with pytest.raises(ConfigError, match="epochs: expected an integer"):
        cfg.epochs = "three"
    with pytest.raises(ConfigError, match="unknown key 'epoch'"):
        cfg.epoch = 3


def test_overrides_accept_section_and_bare_keys_as_yaml_literals(tmp_path):
    path = write(tmp_path, MINIMAL)
    cfg = load_config(
        path,
        ["TRAIN.base_lr", "0.005", "epochs", "2", "TEST.scales", "[0.5, 1, 1.5]", "manual_seed", "7",
         "sync_bn", "False", "save_path", "2017", "weight", "None", "amp", "bf16", "Distributed.world_size", "2"],
    )  # fmt: skip
    assert cfg.base_lr == 0.005 and cfg.epochs == 2
    assert cfg.scales == [0.5, 1.0, 1.5] and all(isinstance(s, float) for s in cfg.scales)
    assert cfg.manual_seed == 7 and cfg.sync_bn is False and cfg.world_size == 2
    assert cfg.save_path == "2017"  # strings stay strings even when they look like numbers
    assert cfg.weight is None and cfg.amp == "bf16"
    # the last occurrence wins, as on a command line
    assert load_config(path, ["epochs", "2", "epochs", "5"]).epochs == 5
    # merged() applies overrides to an existing config without touching it
    base = load_config(path)
    assert base.merged(["epochs", "1"]).epochs == 1 and base.epochs == 100
    assert base.merged({"base_lr": 2}).base_lr == 2.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["TRAIN.base_lr", "abc"], r"override TRAIN\.base_lr: expected a number, got 'abc'"),
        (["epochs", "2.5"], r"override epochs: expected an integer, got 2\.5"),
        (["epochs"], r"KEY VALUE pairs; 'epochs' has no value"),
        (["base_lrr", "0.1"], r"unknown key 'base_lrr' \(did you mean 'base_lr'\?\)"),
        (["MODEL.base_lr", "0.1"], r"unknown section 'MODEL'"),
        (["sync_bn", "1"], r"sync_bn: expected True or False"),
        (["scales", "1.0"], r"scales: expected a list"),
        (["train_gpu", "[0, 1.5]"], r"train_gpu: expected a list of integers"),
        (["arch", "deeplab"], r"arch: 'deeplab' is not one of 'psp', 'psa'"),
        (["layers", "None"], r"layers: a value is required"),
        (["amp", "fp32"], r"amp: 'fp32' is not one of None, 'bf16', 'fp16'"),
        (["compact", "2"], r"compact: expected 0 or 1"),
        (["train_h", "474"], r"train_h: 474 is not a valid crop size"),
        (["scale_min", "3"], r"scale_min \(3\.0\) is larger than scale_max"),
    ],
)
def test_bad_overrides_name_the_key(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, MINIMAL), overrides)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            MINIMAL + "  base_lrr: 0.1\n",
            r"cfg\.yaml line 6: unknown key TRAIN\.base_lrr \(did you mean 'base_lr'\?\)",
        ),
        (MINIMAL + "  base_lr: fast\n", r"cfg\.yaml line 6: TRAIN\.base_lr: expected a number, got 'fast'"),
        (MINIMAL + "  train_gpu: 0\n", r"line 6: TRAIN\.train_gpu: expected a list"),
        (MINIMAL + "  layers: 51\n", r"cfg\.yaml: line 6: duplicate key 'layers'"),
        (MINIMAL + "TEST:\n  classes: 19\n", r"line 7: key 'classes' appears in both DATA and TEST"),
        (MINIMAL + "MODEL:\n  bins: [1]\n", r"line 6: unknown section 'MODEL'"),
        (MINIMAL + "TEST: [1, 2]\n", r"section TEST must hold"),
        ("DATA:\n  classes: 21\nTRAIN:\n  arch: psp\n", r"missing required key layers"),
        ("DATA:\n  classes: 0\nTRAIN:\n  arch: psp\n  layers: 50\n", r"classes: must be positive"),
        ("DATA:\n  classes: [21\n", r"cfg\.yaml: line \d+ invalid YAML"),
        ("", r"cfg\.yaml: config file is empty"),
        ("- 1\n- 2\n", r"expected sections DATA, TRAIN, Distributed, TEST"),
    ],
)
def test_bad_files_name_the_file_line_and_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_to_yaml_round_trips_in_the_original_layout(tmp_path):
    cfg = load_config(config_path("ade20k_psanet50"), ["epochs", "3", "amp", "fp16"])
    text = cfg.to_yaml()
    assert text.startswith("DATA:\n") and "\nDistributed:\n" in text and "\nTEST:\n" in text
    again = load_config(write(tmp_path, text, "dumped.yaml"))
    assert again.to_dict() == cfg.to_dict()
    assert config_from_mapping(cfg.to_dict()).to_dict() == cfg.to_dict()
    with pytest.raises(ConfigError, match="unknown key 'bogus'"):
        config_from_mapping({**cfg.to_dict(), "bogus": 1})


def test_shipped_configs_are_listed_and_found_by_name():
    names = list_configs()
    assert set(SHIPPED) <= set(names)
    assert {"synthetic/synthetic_pspnet18", "synthetic/synthetic_psanet18"} <= set(names)
    path = config_path("ade20k/ade20k_pspnet50")
    assert path.is_file() and path == config_path("ade20k_pspnet50") == config_path("ade20k_pspnet50.yaml")
    assert find_config("voc2012_psanet101") == config_path("voc2012/voc2012_psanet101")
    assert find_config(path) == path
    with pytest.raises(ConfigError, match="did you mean .*ade20k_pspnet50"):
        config_path("ade20k_pspnet5")
    with pytest.raises(ConfigError, match="not found"):
        find_config("some/where/missing.yaml")
    with pytest.raises(ConfigError, match="did you mean"):
        load_config("ade20k_pspnet5")


def test_shipped_configs_load_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no training/config/ here: the documented paths still resolve
    by_path = load_config("training/config/ade20k/ade20k_pspnet50.yaml")
    assert by_path.path == config_path("ade20k_pspnet50")
    assert load_config("ade20k_pspnet50", ["epochs", "1"]).epochs == 1
    assert load_config("voc2012/voc2012_psanet50").arch == "psa"
    (tmp_path / "mine.yaml").write_text(MINIMAL)
    assert load_config("mine.yaml").path == Path("mine.yaml")  # a local file wins
    with pytest.raises(ConfigError, match="training/config/ade20k/nope.yaml: config file not found"):
        load_config("training/config/ade20k/nope.yaml")


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_configs_keep_the_original_hyper_parameters(name):
    arch, layers, crop, classes, epochs, base_size = SHIPPED[name]
    cfg = load_config(config_path(name))
    assert (cfg.arch, cfg.layers, cfg.classes, cfg.epochs, cfg.base_size) == (
        arch,
        layers,
        classes,
        epochs,
        base_size,
    )
    assert cfg.train_h == cfg.train_w == cfg.test_h == cfg.test_w == crop
    assert (cfg.base_lr, cfg.batch_size, cfg.power, cfg.momentum, cfg.weight_decay) == (
        0.01,
        16,
        0.9,
        0.9,
        0.0001,
    )
    assert (cfg.scale_min, cfg.scale_max, cfg.rotate_min, cfg.rotate_max) == (0.5, 2.0, -10.0, 10.0)
    assert (cfg.aux_weight, cfg.zoom_factor, cfg.ignore_label, cfg.sync_bn) == (0.4, 8, 255, True)
    assert cfg.scales == [1.0] and cfg.train_gpu == list(range(8))
    if arch == "psa":
        assert (cfg.psa_type, cfg.compact, cfg.shrink_factor, cfg.psa_softmax) == (2, 0, 2, 1)
        assert cfg.mask_h is None and cfg.normalization_factor == 1.0
    dataset = name.split("/")[0]
    assert cfg.dataset == dataset
    assert cfg.pretrained_backbone == f"initmodel/resnet{layers}_v2.pth"
    info = dataset_info_for_config(cfg)
    assert info.name == dataset and info.num_classes == classes


def test_synthetic_configs_are_tiny_cpu_configs():
    # The PSPNet's 7x7 stem keeps its training bench under 5 minutes on 2 cores.
    for name, arch, deep_stem in (("synthetic_pspnet18", "psp", False), ("synthetic_psanet18", "psa", True)):
        cfg = load_config(config_path(name))
        assert (cfg.arch, cfg.layers, cfg.deep_stem, cfg.classes, cfg.dataset) == (
            arch,
            18,
            deep_stem,
            6,
            "synthetic",
        )
        assert cfg.train_h == cfg.test_h == 97 and cfg.pretrained_backbone is None
        assert cfg.names_path == "data/synthetic/synthetic_names.txt"
        assert cfg.sync_bn is False and cfg.workers == 0


def test_config_and_datasets_import_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
        "import training.config, training.datasets\n"
        "cfg = training.config.load_config(training.config.config_path('ade20k_pspnet50'))\n"
        "print(training.datasets.dataset_info_for_config(cfg).num_classes)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "150"
