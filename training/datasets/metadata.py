"""Class names and colour palettes of the supported datasets (torch-free, numpy only).

The data live next to this module in the original project's text format: `<dataset>_names.txt`
(one class name per line) and `<dataset>_colors.txt` (one `R G B` triple per line). A custom
dataset is described by its own pair of files (the config keys `names_path` / `colors_path`).

Where each packaged palette comes from (all class orders are the train-id orders):
- ade20k: the 150-class SceneParsing palette and short names, as in CSAILVision's scene-parsing
  toolkit (color150) and hszhao/semseg's ade20k_colors.txt / ade20k_names.txt.
- voc2012: PASCAL VOC's bit-interleaved colour map (VOCdevkit `VOClabelcolormap`), 21 classes.
- cityscapes: the colours of the 19 evaluated classes in cityscapesScripts'
  `helpers/labels.py`, ordered by trainId.
- camvid: the original project's 11 classes in its order (Building, Tree, Sky, Car, SignSymbol,
  Road, Pedestrian, Fence, Column_Pole, Sidewalk, Bicyclist) with the CamVid colours of those
  classes; id 11 (if a label holds it) is void.
- camvid_segnet: the 11-class SegNet palette and order (alexgkendall/SegNet-Tutorial,
  Scripts/test_segmentation_camvid.py): Sky .. Bicyclist; id 11 (Unlabelled) is void.
- bdd100k: BDD100K semantic segmentation uses the Cityscapes 19 train ids, names and colours
  (bdd100k toolkit, `bdd100k/label/label.py`, `labels`).
- bdd100k_drivable: the original project's drivable-area classes: void (0 0 0), drivable
  (255 0 0), alt (0 0 255), ids 0-2.
- bdd100k_drivable_toolkit: the bdd100k toolkit's `drivables` (direct, alternative, background).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DATA_DIR = Path(__file__).resolve().parent
IGNORE_LABEL = 255

# name -> number of classes; the files `<name>_names.txt` / `<name>_colors.txt` hold the data.
PACKAGED_DATASETS: dict[str, int] = {
    "ade20k": 150,
    "voc2012": 21,
    "cityscapes": 19,
    "camvid": 11,
    "camvid_segnet": 11,
    "bdd100k": 19,
    "bdd100k_drivable": 3,
    "bdd100k_drivable_toolkit": 3,
}


class DatasetError(ValueError):
    """A dataset name is unknown or a names/colors file is missing or malformed."""


@dataclass(frozen=True, eq=False)  # eq=False: the palette is an array, compare fields yourself
class DatasetInfo:
    """Metadata of one dataset.

    Attributes:
        name: dataset name (`ade20k`, ... or a custom name).
        classes: class names, index = train id.
        palette: `(num_classes, 3)` uint8 RGB colours, row = train id.
        ignore_label: the label value that marks void pixels (255).
    """

    name: str
    classes: tuple[str, ...]
    palette: np.ndarray
    ignore_label: int = IGNORE_LABEL

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def list_datasets() -> list[str]:
    """Names of the datasets whose metadata ships with sceneparse."""
    return sorted(PACKAGED_DATASETS)


def _read_lines(path: str | Path, what: str) -> list[str]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{path}: {what} file not found") from None
    except IsADirectoryError:
        raise DatasetError(f"{path}: {what} file is a directory") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"{path}: {what} file is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    lines = text.splitlines()
    # Trailing blank lines are an editor artefact; blank lines inside the list are errors.
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DatasetError(f"{path}: {what} file is empty")
    return lines


def read_names(path: str | Path) -> list[str]:
    """Read class names, one per line (leading/trailing spaces stripped).

    Raises DatasetError naming the file and line for a missing/empty file or a blank line.
    """
    names = []
    for number, line in enumerate(_read_lines(path, "names"), start=1):
        name = line.strip()
        if not name:
            raise DatasetError(f"{path}:{number}: empty class name")
        names.append(name)
    return names


def read_colors(path: str | Path) -> np.ndarray:
    """Read a palette, one `R G B` triple of integers in 0..255 per line.

    Returns a `(num_classes, 3)` uint8 array. Raises DatasetError naming the file and line for
    a line without exactly three integers or a value outside 0..255.
    """
    rows = []
    for number, line in enumerate(_read_lines(path, "colors"), start=1):
        fields = line.split()
        if len(fields) != 3:
            raise DatasetError(f"{path}:{number}: expected 'R G B' (three integers), got {line.strip()!r}")
        try:
            values = [int(field) for field in fields]
        except ValueError:
            raise DatasetError(
                f"{path}:{number}: colour values must be integers, got {line.strip()!r}"
            ) from None
        if any(not 0 <= value <= 255 for value in values):
            raise DatasetError(f"{path}:{number}: colour values must be in 0..255, got {line.strip()!r}")
        rows.append(values)
    return np.asarray(rows, dtype=np.uint8)


def packaged_names_path(name: str) -> Path:
    """Path of the packaged names file of a packaged dataset."""
    return DATA_DIR / f"{_check_packaged(name)}_names.txt"


def packaged_colors_path(name: str) -> Path:
    """Path of the packaged colors file of a packaged dataset."""
    return DATA_DIR / f"{_check_packaged(name)}_colors.txt"


def _check_packaged(name: str) -> str:
    if name not in PACKAGED_DATASETS:
        raise DatasetError(
            f"unknown dataset {name!r}: known datasets are {', '.join(list_datasets())}; "
            "a custom dataset needs names_path and colors_path"
        )
    return name


def dataset_info(
    name: str, names_path: str | Path | None = None, colors_path: str | Path | None = None
) -> DatasetInfo:
    """Metadata of a packaged dataset, or of a custom one read from its two files.

    Given both paths, the files are read (for any name); given neither, `name` must be a
    packaged dataset. The two files must list the same number of classes.
    """
    if (names_path is None) != (colors_path is None):
        raise DatasetError(f"dataset {name!r}: give both names_path and colors_path, or neither")
    if names_path is None:
        return _packaged_info(_check_packaged(name))
    return _read_info(name, names_path, colors_path)


@functools.cache
def _packaged_info(name: str) -> DatasetInfo:
    # Packaged files never change at run time and the palette is read-only: read each once.
    return _read_info(name, packaged_names_path(name), packaged_colors_path(name))


def _read_info(name: str, names_path: str | Path, colors_path: str | Path) -> DatasetInfo:
    names = read_names(names_path)
    palette = read_colors(colors_path)
    if len(names) != len(palette):
        raise DatasetError(
            f"dataset {name!r}: {names_path} lists {len(names)} classes but {colors_path} lists {len(palette)} colours"
        )
    palette.setflags(write=False)
    return DatasetInfo(name=name, classes=tuple(names), palette=palette)


def palette_for(dataset: str) -> np.ndarray:
    """`(num_classes, 3)` uint8 palette of a packaged dataset."""
    return dataset_info(dataset).palette


def _dataset_from_path(path: str) -> str | None:
    # The original configs name their files data/<ds>/<ds>_names.txt: recover <ds> from that.
    stem = Path(path).name
    for suffix in ("_names.txt", "_colors.txt"):
        if stem.endswith(suffix) and stem[: -len(suffix)] in PACKAGED_DATASETS:
            return stem[: -len(suffix)]
    return None


def _resolve(path: str | None, data_root: str | None) -> str | None:
    # A run that moves the data (override `data_root DIR`) finds DIR/<name>_names.txt as well.
    if path and not Path(path).is_file() and data_root:
        candidate = Path(data_root) / Path(path).name
        if candidate.is_file():
            return str(candidate)
    return path


def dataset_info_for_config(cfg: Mapping[str, Any]) -> DatasetInfo:
    """Metadata for a parsed config (keys `dataset`, `names_path`, `colors_path`, `classes`).

    The config's names/colors files are used when both exist (as given, or by file name under
    `data_root`, so overriding `data_root` is enough to move a dataset). Otherwise a packaged dataset is
    used: `dataset` if set, else the one the file names point to (the original configs name
    `data/ade20k/ade20k_names.txt`, which need not exist here). The class count must equal
    `classes` when the config has it.
    """
    data_root = cfg.get("data_root")
    names_path = _resolve(cfg.get("names_path"), data_root)
    colors_path = _resolve(cfg.get("colors_path"), data_root)
    name = cfg.get("dataset")
    if names_path and colors_path and Path(names_path).is_file() and Path(colors_path).is_file():
        info = dataset_info(name or _dataset_from_path(str(names_path)) or "custom", names_path, colors_path)
    else:
        name = name or (names_path and _dataset_from_path(str(names_path)))
        if not name or name not in PACKAGED_DATASETS:
            missing = [str(p) for p in (names_path, colors_path) if p and not Path(p).is_file()]
            where = f" ({', '.join(missing)} not found)" if missing else ""
            raise DatasetError(
                f"config names no usable dataset metadata{where}: set names_path and colors_path to "
                f"existing files, or dataset to one of {', '.join(list_datasets())}"
            )
        info = dataset_info(name)
    classes = cfg.get("classes")
    if classes is not None and classes != info.num_classes:
        raise DatasetError(
            f"config has classes: {classes} but dataset {info.name!r} has {info.num_classes} classes"
        )
    return info
