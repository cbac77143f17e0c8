"""Read the original project's YAML configs into one flat, typed namespace.

A config file has the sections DATA, TRAIN, Distributed and TEST (hszhao/semseg's layout);
their keys are flattened into one `Config`. Overrides are `KEY VALUE` pairs where KEY is
`SECTION.key` or `key` (the original accepted both, and so do we) and VALUE is a YAML literal.
Every key and value is checked against `schema.KEYS`: an unknown key, a value of the wrong type
or outside its choices raises ConfigError naming the key, the file and the line.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from training.config.errors import ConfigError, MissingKeyError
from training.config.registry import find_config
from training.config.schema import ADDITIONS, CROP_KEYS, KEYS, SECTIONS, Key

_NONE_TOKENS = {"", "none", "null", "~"}


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, KEYS, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_value(key: str, value: Any) -> Any:
    """Validate one value for `key` and return it normalised (ints promoted to float, lists copied).

    Raises ConfigError (without file context) naming the key and what was expected.
    """
    spec: Key = KEYS[key]
    type_ = spec.type
    optional = type_.endswith("?")
    type_ = type_.rstrip("?")
    if value is None:
        if optional or type_ == "any" or (spec.choices and None in spec.choices):
            return None
        raise ConfigError(f"{key}: a value is required ({type_}), got None")
    if type_ == "any":
        return value
    if type_ == "int":
        if not _is_int(value):
            raise ConfigError(f"{key}: expected an integer, got {_describe(value)}")
    elif type_ == "float":
        if not (_is_int(value) or isinstance(value, float)):
            raise ConfigError(f"{key}: expected a number, got {_describe(value)}")
        value = float(value)
    elif type_ == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected True or False, got {_describe(value)}")
    elif type_ == "flag":
        if value not in (0, 1) or isinstance(value, float):
            raise ConfigError(f"{key}: expected 0 or 1, got {_describe(value)}")
        value = int(value)
    elif type_ == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_describe(value)}")
    elif type_ in ("int_list", "float_list"):
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list like [1, 2], got {_describe(value)}")
        element_ok = _is_int if type_ == "int_list" else (lambda v: _is_int(v) or isinstance(v, float))
        bad = [v for v in value if not element_ok(v)]
        if bad:
            kind = "integers" if type_ == "int_list" else "numbers"
            raise ConfigError(f"{key}: expected a list of {kind}, got {value!r}")
        value = [float(v) for v in value] if type_ == "float_list" else list(value)
    else:  # pragma: no cover - schema typo
        raise AssertionError(f"schema type {type_!r} of {key}")
    if spec.choices is not None and value not in spec.choices:
        allowed = ", ".join(repr(c) for c in spec.choices)
        raise ConfigError(f"{key}: {value!r} is not one of {allowed}")
    return value


def _check_consistency(values: Mapping[str, Any]) -> None:
    # The network needs (size - 1) % 8 == 0 so that the 1/8 feature map aligns with the crop.
    for key in CROP_KEYS:
        size = values[key]
        if size < 9 or (size - 1) % 8:
            raise ConfigError(
                f"{key}: {size} is not a valid crop size; it needs (size - 1) % 8 == 0, e.g. 473 or 465"
            )
    positive = ("classes", "batch_size", "batch_size_val", "epochs", "base_size", "save_freq", "print_freq")
    for key in positive:
        if values.get(key) is not None and values[key] <= 0:
            raise ConfigError(f"{key}: must be positive, got {values[key]}")
    if values["scale_min"] > values["scale_max"]:
        raise ConfigError(
            f"scale_min ({values['scale_min']}) is larger than scale_max ({values['scale_max']})"
        )
    if not values["scales"] or any(s <= 0 for s in values["scales"]):
        raise ConfigError(f"scales: expected positive test scales, got {values['scales']}")
    if not values["bins"] or any(b <= 0 for b in values["bins"]):
        raise ConfigError(f"bins: expected positive pyramid bins, got {values['bins']}")
    if values["keep_last"] is not None and values["keep_last"] < 1:
        raise ConfigError(f"keep_last: must be at least 1 or None, got {values['keep_last']}")


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _key_lines(text: str) -> dict[Any, int]:
    """Line of each section (`"TRAIN"`) and each key (`("TRAIN", "base_lr")`), for error messages."""
    lines: dict[Any, int] = {}
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(root, yaml.MappingNode):
        return lines
    for section_node, body in root.value:
        lines[section_node.value] = section_node.start_mark.line + 1
        if isinstance(body, yaml.MappingNode):
            for key_node, _ in body.value:
                lines[(section_node.value, key_node.value)] = key_node.start_mark.line + 1
    return lines


def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[Any, int]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (IsADirectoryError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable YAML text file ({exc})") from None
    loader = _StrictLoader(text)
    try:
        data = loader.get_single_data()
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}:{where} invalid YAML: {problem}") from None
    finally:
        loader.dispose()
    if data is None:
        raise ConfigError(f"{path}: config file is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected sections {', '.join(SECTIONS)} at the top level")
    return data, _key_lines(text)


def _flatten(data: dict[str, Any], path: Path, lines: dict[Any, int]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for section, body in data.items():
        where = f"{path} line {lines.get(section, '?')}"
        if section not in SECTIONS:
            raise ConfigError(f"{where}: unknown section {section!r}; expected {', '.join(SECTIONS)}")
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: section {section} must hold `key: value` lines")
        for key, value in body.items():
            where = f"{path} line {lines.get((section, key), '?')}"
            if key not in KEYS:
                raise ConfigError(f"{where}: unknown key {section}.{key}{_suggest(str(key))}")
            if key in flat:
                raise ConfigError(f"{where}: key {key!r} appears in both {origin[key]} and {section}")
            try:
                flat[key] = check_value(key, value)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {section}.{exc}") from None
            origin[key] = section
    return flat


def _parse_override_value(key: str, text: str) -> Any:
    if not isinstance(text, str):
        return text
    if text.strip().lower() in _NONE_TOKENS:
        return None
    if KEYS[key].type.rstrip("?") == "str":
        return text  # paths and names stay as typed ("2017" is a string here, not an int)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # reported by the type check as the string it is


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Parse `["TRAIN.base_lr", "0.005", "epochs", "2"]` into validated `{key: value}`.

    KEY may be `SECTION.key` (SECTION one of DATA, TRAIN, Distributed, TEST) or a bare key;
    VALUE is a YAML literal (`0.005`, `[0.5, 1.0]`, `True`, `None`). Raises ConfigError.
    """
    overrides = list(overrides)
    if len(overrides) % 2:
        raise ConfigError(f"overrides must be KEY VALUE pairs; {overrides[-1]!r} has no value")
    parsed: dict[str, Any] = {}
    for full_key, text in zip(overrides[::2], overrides[1::2], strict=True):
        section, _, key = str(full_key).rpartition(".")
        if section and section not in SECTIONS:
            raise ConfigError(
                f"override {full_key}: unknown section {section!r}; expected {', '.join(SECTIONS)}"
            )
        if key not in KEYS:
            raise ConfigError(f"override {full_key}: unknown key {key!r}{_suggest(key)}")
        try:
            parsed[key] = check_value(key, _parse_override_value(key, text))
        except ConfigError as exc:
            # check_value's message starts with the bare key; name the key as the user typed it.
            raise ConfigError(f"override {full_key}{str(exc)[len(key) :]}") from None
    return parsed


class Config(Mapping[str, Any]):
    """A flat, validated config: `cfg.base_lr`, `cfg["base_lr"]`, `cfg.get("x", d)`, `cfg.to_dict()`.

    Every known key is present (defaults fill what a file omits), except the required keys a
    partial config was built without (`config_from_mapping(..., partial=True)`). Assigning a known key
    (`cfg.epochs = 2`) is validated like an override; unknown keys raise ConfigError.
    `path` is the file the config came from (None when built from a mapping).
    """

    __slots__ = ("_values", "path")

    def __init__(self, values: Mapping[str, Any], path: Path | None = None) -> None:
        object.__setattr__(self, "_values", dict(values))
        object.__setattr__(self, "path", path)

    def __getitem__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            if key in KEYS:
                raise self._missing(key) from None
            raise

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise self._missing(key) from None

    @staticmethod
    def _missing(key: str) -> Exception:
        if key in KEYS:  # a required key left out of a partial config (config_from_mapping)
            return MissingKeyError(f"config has no {key!r}; it is required here")
        return AttributeError(f"config has no key {key!r}{_suggest(key)}")

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in KEYS:
            raise ConfigError(f"unknown key {key!r}{_suggest(key)}")
        self._values[key] = check_value(key, value)

    def __repr__(self) -> str:
        source = f" from {self.path}" if self.path else ""
        return f"<Config{source}: arch={self.get('arch')} layers={self.get('layers')} classes={self.get('classes')}>"

    def to_dict(self) -> dict[str, Any]:
        """A plain `{key: value}` copy (lists copied), e.g. to store inside a checkpoint."""
        return {k: list(v) if isinstance(v, list) else v for k, v in self._values.items()}

    def merged(self, overrides: Sequence[str] | Mapping[str, Any]) -> Config:
        """A new Config with overrides applied (`KEY VALUE` list or a `{key: value}` mapping)."""
        values = dict(self._values)
        if isinstance(overrides, Mapping):
            for key, value in overrides.items():
                if key not in KEYS:
                    raise ConfigError(f"unknown key {key!r}{_suggest(key)}")
                values[key] = check_value(key, value)
        else:
            values.update(parse_overrides(overrides))
        _check_consistency(values)
        return Config(values, self.path)

    def to_yaml(self) -> str:
        """The config as YAML in the original sectioned layout (loads back to an equal Config)."""
        sections: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
        for key, spec in KEYS.items():
            if key in self._values:  # a partial config leaves its missing required keys out
                sections[spec.section][key] = self.to_dict()[key]
        return yaml.safe_dump(sections, sort_keys=False, default_flow_style=False)


def defaults() -> dict[str, Any]:
    """The default of every optional key (required keys are absent)."""
    return {
        k: (list(s.default) if isinstance(s.default, list) else s.default)
        for k, s in KEYS.items()
        if not s.required
    }


def config_from_mapping(values: Mapping[str, Any], path: Path | None = None, *, partial: bool = False) -> Config:
    """Validate a flat `{key: value}` mapping (e.g. a config stored in a checkpoint) into a Config.

    `partial=True` is for library functions that need only some keys (the data transforms, the
    scoring of predictions): the keys given are validated, the others take the schema's defaults,
    and the required keys (classes, arch, layers) may be missing; reading one then raises
    AttributeError / KeyError naming it.
    """
    merged = defaults()
    for key, value in values.items():
        if key not in KEYS:
            raise ConfigError(f"unknown key {key!r}{_suggest(str(key))}")
        merged[key] = check_value(key, value)
    missing = [k for k, s in KEYS.items() if s.required and k not in merged]
    if missing and not partial:
        raise ConfigError(f"missing required key{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    _check_consistency(merged)
    return Config(merged, path)


def load_config(path: str | Path, overrides: Sequence[str] | None = None) -> Config:
    """Load a YAML config (original format) and apply `KEY VALUE` overrides.

    Args:
        path: a YAML file with sections DATA, TRAIN, Distributed, TEST, or the name of a shipped
            config (`ade20k_pspnet50`; see `find_config`).
        overrides: e.g. `["TRAIN.base_lr", "0.005", "epochs", "2"]`.

    Returns:
        A Config holding every known key; sceneparse additions missing from the file take
        their defaults, so the original files load unchanged.

    Raises:
        ConfigError naming the file, line and key for unknown keys, wrong types, bad values,
        missing required keys (classes, arch, layers) and malformed overrides.
    """
    path = find_config(path)
    data, lines = _read_yaml(path)
    values = _flatten(data, path, lines)
    values.update(parse_overrides(overrides or []))
    try:
        return config_from_mapping(values, path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def as_config(value: Any, *, partial: bool = False) -> Config:
    """The one conversion public entry points make: whatever came in, as a validated Config.

    A Config is returned as is; a flat `{key: value}` mapping (e.g. the config stored in a
    checkpoint) is validated with `config_from_mapping` (`partial` as there); a path or a shipped
    config's name is read with `load_config`; any other object is read as the mapping of its
    attributes (`types.SimpleNamespace(arch="psp", ...)`). Internals then take a Config and read
    `cfg.key`: the defaults live in `schema.KEYS` only. Raises ConfigError for invalid content.
    """
    if isinstance(value, Config):
        return value
    if isinstance(value, Mapping):
        return config_from_mapping(value, partial=partial)
    if isinstance(value, (str, os.PathLike)):
        return load_config(value)
    try:
        attributes = vars(value)
    except TypeError:
        raise ConfigError(f"a config is a YAML path, a mapping or a Config, not {type(value).__name__}") from None
    return config_from_mapping(attributes, partial=partial)


__all__ = [
    "ADDITIONS",
    "Config",
    "ConfigError",
    "as_config",
    "check_value",
    "config_from_mapping",
    "defaults",
    "load_config",
    "parse_overrides",
]
