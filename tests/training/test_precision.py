"""The original's apex keys map onto native AMP instead of being ignored (training.precision)."""

from __future__ import annotations

import pytest
import torch

from training.config import config_path, load_config
from training.precision import resolve_precision
from training.train import main

BASE = {"amp": None, "use_apex": True, "opt_level": "O0", "keep_batchnorm_fp32": None, "loss_scale": None}


def test_the_shipped_original_configs_stay_float32():
    cfg = load_config(config_path("ade20k/ade20k_pspnet50"))
    precision = resolve_precision(cfg)
    assert precision.amp is None and precision.scaler_kwargs == {}


@pytest.mark.parametrize("level", ["O1", "O2", "O3"])
def test_mixed_opt_levels_become_autocast_fp16_with_a_dynamic_scaler(level):
    precision = resolve_precision({**BASE, "opt_level": level})
    assert precision.amp == "fp16" and precision.scaler_kwargs == {}
    assert f"opt_level {level}: native AMP" in precision.note and "dynamic loss scale" in precision.note


def test_a_static_loss_scale_is_kept_and_never_grown():
    precision = resolve_precision({**BASE, "opt_level": "O1", "loss_scale": 128.0})
    assert precision.scaler_kwargs == {"init_scale": 128.0, "growth_interval": 2**31 - 1}
    scaler = torch.amp.GradScaler("cpu", **precision.scaler_kwargs)
    assert scaler.get_scale() == 128.0 and scaler.get_growth_interval() == 2**31 - 1
    assert resolve_precision({**BASE, "opt_level": "O1", "loss_scale": "dynamic"}).scaler_kwargs == {}


def test_off_o0_and_an_explicit_amp():
    assert resolve_precision({**BASE, "use_apex": False, "opt_level": "O1"}).amp is None
    o0 = resolve_precision(BASE)
    assert o0.amp is None and "O0: float32" in o0.note
    both = resolve_precision({**BASE, "opt_level": "O2", "amp": "bf16"})
    assert both.amp == "bf16" and "amp decides" in both.note


@pytest.mark.parametrize(("change", "message"), [({"opt_level": "O4"}, "opt_level must be one of O0, O1, O2, O3"),
                                                  ({"loss_scale": -1.0}, "loss_scale must be 'dynamic' or a positive"),
                                                  ({"loss_scale": "auto"}, "loss_scale")])
def test_values_apex_did_not_have_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        resolve_precision({**BASE, **change})


def test_sceneparse_train_refuses_them_before_starting(tmp_path, capsys):
    code = main(["--config", str(config_path("synthetic/synthetic_pspnet18")), "use_apex", "True", "opt_level", "O5",
                 "save_path", str(tmp_path / "run"), "train_list", str(tmp_path / "none.txt"), "data_root", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["sceneparse train: config key opt_level must be one of O0, O1, O2, O3, got 'O5'"]
