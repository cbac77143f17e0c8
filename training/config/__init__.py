"""YAML configs in the original format (torch-free) and the configs that ship with sceneparse.

>>> from training.config import load_config
>>> cfg = load_config("training/config/ade20k/ade20k_pspnet50.yaml", ["TRAIN.base_lr", "0.005"])
>>> cfg.base_lr, cfg["classes"]
(0.005, 150)
"""

from training.config.errors import ConfigError
from training.config.loader import (
    Config,
    as_config,
    check_value,
    config_from_mapping,
    defaults,
    load_config,
    parse_overrides,
)
from training.config.registry import CONFIG_DIR, config_path, find_config, list_configs
from training.config.schema import ADDITIONS, KEYS, SECTIONS

__all__ = [
    "ADDITIONS",
    "CONFIG_DIR",
    "KEYS",
    "SECTIONS",
    "Config",
    "ConfigError",
    "as_config",
    "check_value",
    "config_from_mapping",
    "config_path",
    "defaults",
    "find_config",
    "list_configs",
    "load_config",
    "parse_overrides",
]
