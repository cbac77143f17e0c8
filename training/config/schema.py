"""Every config key sceneparse knows: its section, type, default and allowed values.

The original keys (hszhao/semseg's DATA, TRAIN, Distributed and TEST sections) keep their names
and meaning; the sceneparse additions are optional and their defaults keep the original
behaviour. `REQUIRED` keys have no default: a config without them is rejected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SECTIONS = ("DATA", "TRAIN", "Distributed", "TEST")

# The original loaded ./initmodel/resnet{50,101,152}_v2.pth unconditionally (no config key):
# the default of `pretrained_backbone`, {layers} filled in (training.models.imagenet).
ORIGINAL_BACKBONE_WEIGHTS = "initmodel/resnet{layers}_v2.pth"

# Types: "int", "float" (an int is promoted), "bool", "str", "int_list", "float_list",
# "flag" (0/1 or a bool, as the original's compact/psa_softmax), "any". A trailing "?" allows None.


@dataclass(frozen=True)
class Key:
    section: str
    type: str
    default: Any = None
    choices: tuple[Any, ...] | None = None
    required: bool = False
    help: str = ""


def _k(
    section: str, type_: str, default: Any = None, choices: tuple[Any, ...] | None = None, help: str = ""
) -> Key:
    return Key(section, type_, default, choices, help=help)


def _required(section: str, type_: str, choices: tuple[Any, ...] | None = None, help: str = "") -> Key:
    return Key(section, type_, None, choices, required=True, help=help)


KEYS: dict[str, Key] = {
    # DATA
    "data_root": _k("DATA", "str?", help="root that list-file paths are relative to"),
    "train_list": _k("DATA", "str?", help="training list: `image label` per line"),
    "val_list": _k("DATA", "str?", help="validation list used during training"),
    "classes": _required("DATA", "int", help="number of classes"),
    "dataset": _k(
        "DATA",
        "str?",
        help="metadata name (ade20k, voc2012, cityscapes, camvid, camvid_segnet, bdd100k, bdd100k_drivable, "
        "bdd100k_drivable_toolkit) or a custom name",
    ),
    # TRAIN
    "arch": _required("TRAIN", "str", ("psp", "psa"), help="psp (PSPNet) or psa (PSANet)"),
    "layers": _required("TRAIN", "int", (18, 34, 50, 101, 152), help="ResNet depth"),
    "sync_bn": _k("TRAIN", "bool", True, help="SyncBatchNorm across GPUs"),
    "train_h": _k("TRAIN", "int", 473, help="crop height, (h - 1) % 8 == 0"),
    "train_w": _k("TRAIN", "int", 473, help="crop width, (w - 1) % 8 == 0"),
    "scale_min": _k("TRAIN", "float", 0.5),
    "scale_max": _k("TRAIN", "float", 2.0),
    "rotate_min": _k("TRAIN", "float", -10.0),
    "rotate_max": _k("TRAIN", "float", 10.0),
    "zoom_factor": _k("TRAIN", "int", 8, (1, 2, 4, 8)),
    "ignore_label": _k("TRAIN", "int", 255),
    "aux_weight": _k("TRAIN", "float", 0.4),
    "train_gpu": _k("TRAIN", "int_list", [0]),
    "workers": _k("TRAIN", "int", 16),
    "batch_size": _k("TRAIN", "int", 16, help="total over all GPUs, as in the original"),
    "batch_size_val": _k("TRAIN", "int", 8),
    "base_lr": _k("TRAIN", "float", 0.01),
    "epochs": _k("TRAIN", "int", 100),
    "start_epoch": _k("TRAIN", "int", 0),
    "power": _k("TRAIN", "float", 0.9, help="poly learning-rate power"),
    "momentum": _k("TRAIN", "float", 0.9),
    "weight_decay": _k("TRAIN", "float", 0.0001),
    "manual_seed": _k("TRAIN", "int?"),
    "print_freq": _k("TRAIN", "int", 10),
    "save_freq": _k("TRAIN", "int", 1),
    "save_path": _k("TRAIN", "str?"),
    "weight": _k("TRAIN", "str?", help="initial weights (a checkpoint)"),
    "resume": _k("TRAIN", "str?", help="checkpoint to resume from"),
    "evaluate": _k("TRAIN", "bool", False, help="validate after each epoch"),
    # PSANet (TRAIN section in the original files)
    "psa_type": _k("TRAIN", "int", 2, (0, 1, 2), help="0 collect, 1 distribute, 2 bi-direction"),
    "compact": _k("TRAIN", "flag", 0),
    "shrink_factor": _k("TRAIN", "int", 2),
    "mask_h": _k("TRAIN", "int?", help="None: 2*((crop-1)//(8*shrink)+1)-1"),
    "mask_w": _k("TRAIN", "int?"),
    "normalization_factor": _k("TRAIN", "float", 1.0),
    "psa_softmax": _k("TRAIN", "flag", 1),
    # sceneparse additions (TRAIN)
    "deep_stem": _k("TRAIN", "bool", True, help="three 3x3 stem convolutions (False: torchvision 7x7 stem)"),
    "output_stride": _k("TRAIN", "int", 8, (8, 16)),
    "pretrained_backbone": _k(
        "TRAIN",
        "str?",
        ORIGINAL_BACKBONE_WEIGHTS,
        help="ImageNet weights file (deep-stem or torchvision format; {layers} is filled in); None: from scratch",
    ),
    "bins": _k("TRAIN", "int_list", [1, 2, 3, 6], help="PSPNet pyramid bins"),
    "frozen_bn": _k("TRAIN", "bool", False, help="freeze BatchNorm statistics and affine parameters"),
    "amp": _k("TRAIN", "str?", None, (None, "bf16", "fp16"), help="mixed precision"),
    "channels_last": _k("TRAIN", "bool", False),
    "keep_last": _k(
        "TRAIN", "int?", 2, help="epoch checkpoints to keep (the original kept 2); None keeps all"
    ),
    "label_scale": _k("TRAIN", "int", 1, (1, 8), help="loss on full-resolution (1) or 1/8 (8) labels"),
    # Distributed
    "dist_url": _k("Distributed", "str", "tcp://127.0.0.1:6789"),
    "dist_backend": _k("Distributed", "str", "nccl"),
    "multiprocessing_distributed": _k("Distributed", "bool", True),
    "world_size": _k("Distributed", "int", 1),
    "rank": _k("Distributed", "int", 0),
    "use_apex": _k("Distributed", "bool", False, help="apex's mixed precision, mapped onto native AMP (training.precision)"),
    "opt_level": _k("Distributed", "str?", "O0", help="with use_apex: O0 float32; O1/O2/O3 autocast fp16 + GradScaler"),
    "keep_batchnorm_fp32": _k("Distributed", "bool?"),
    "loss_scale": _k("Distributed", "any"),
    # TEST
    "test_list": _k("TEST", "str?"),
    "split": _k("TEST", "str", "val", help="train, val or test"),
    "base_size": _k("TEST", "int", 512, help="the long side is resized to base_size * scale"),
    "test_h": _k("TEST", "int", 473),
    "test_w": _k("TEST", "int", 473),
    "scales": _k("TEST", "float_list", [1.0]),
    "has_prediction": _k("TEST", "bool", False),
    "index_start": _k("TEST", "int", 0),
    "index_step": _k("TEST", "int", 0),
    "test_gpu": _k("TEST", "int_list", [0]),
    "model_path": _k("TEST", "str?"),
    "save_folder": _k("TEST", "str?"),
    "colors_path": _k("TEST", "str?"),
    "names_path": _k("TEST", "str?"),
    "flip": _k("TEST", "bool", True, help="test-time horizontal flip"),
}

ADDITIONS = (
    "dataset", "deep_stem", "output_stride", "pretrained_backbone", "bins", "frozen_bn",
    "amp", "channels_last", "keep_last", "label_scale", "flip",
)  # fmt: skip
CROP_KEYS = ("train_h", "train_w", "test_h", "test_w")
