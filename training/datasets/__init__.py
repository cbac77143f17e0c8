"""Dataset metadata: class names, palettes and label-id mappings (torch-free).

>>> from training.datasets import dataset_info, colorize
>>> info = dataset_info("ade20k")
>>> info.num_classes, info.palette.shape
(150, (150, 3))
"""

from training.datasets.colorize import colorize
from training.datasets.label_maps import (
    CITYSCAPES_ID_TO_TRAINID,
    MAPPED_DATASETS,
    label_lut,
    label_mapping,
    map_labels,
)
from training.datasets.metadata import (
    IGNORE_LABEL,
    PACKAGED_DATASETS,
    DatasetError,
    DatasetInfo,
    dataset_info,
    dataset_info_for_config,
    list_datasets,
    packaged_colors_path,
    packaged_names_path,
    palette_for,
    read_colors,
    read_names,
)

__all__ = [
    "CITYSCAPES_ID_TO_TRAINID",
    "IGNORE_LABEL",
    "MAPPED_DATASETS",
    "PACKAGED_DATASETS",
    "DatasetError",
    "DatasetInfo",
    "colorize",
    "dataset_info",
    "dataset_info_for_config",
    "label_lut",
    "label_mapping",
    "list_datasets",
    "map_labels",
    "packaged_colors_path",
    "packaged_names_path",
    "palette_for",
    "read_colors",
    "read_names",
]
