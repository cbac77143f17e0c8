"""Find the configs that ship with sceneparse by name ("ade20k/ade20k_pspnet50" or "ade20k_pspnet50")."""

from __future__ import annotations

import difflib
from pathlib import Path

from training.config.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent
# How the documented commands name shipped configs (paths relative to the repository root).
SHIPPED_PREFIX = "training/config/"


def list_configs() -> list[str]:
    """Names of the shipped configs, `<dataset>/<config>` without `.yaml`, sorted."""
    return sorted(p.relative_to(CONFIG_DIR).with_suffix("").as_posix() for p in CONFIG_DIR.glob("*/*.yaml"))


def config_path(name: str) -> Path:
    """Path of a shipped config given `ade20k/ade20k_pspnet50`, `ade20k_pspnet50` (with or without `.yaml`).

    Raises ConfigError naming the closest shipped configs when there is no such config.
    """
    key = name.removesuffix(".yaml").strip("/")
    names = list_configs()
    if key in names:
        return CONFIG_DIR / f"{key}.yaml"
    by_stem = [n for n in names if n.rpartition("/")[2] == key]
    if len(by_stem) == 1:
        return CONFIG_DIR / f"{by_stem[0]}.yaml"
    close = difflib.get_close_matches(key, names + [n.rpartition("/")[2] for n in names], n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; shipped configs: {', '.join(names)}"
    raise ConfigError(f"no shipped config named {name!r}{hint}")


def find_config(name_or_path: str | Path) -> Path:
    """Resolve a config argument: an existing file, else a shipped config.

    Accepted: a path to a YAML file; a shipped name (`ade20k/ade20k_pspnet50`, `ade20k_pspnet50`);
    the repository-relative path of a shipped config (`training/config/ade20k/ade20k_pspnet50.yaml`)
    from any working directory. Raises ConfigError ("config file not found" for path-like
    arguments, the closest shipped names otherwise).
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    key = path.as_posix()
    if not path.is_absolute() and key.startswith(SHIPPED_PREFIX):
        key = key[len(SHIPPED_PREFIX) :]
    try:
        return config_path(key)
    except ConfigError:
        if path.suffix in {".yaml", ".yml"} or path.is_absolute() or len(path.parts) > 2:
            raise ConfigError(f"{path}: config file not found") from None
        raise
