"""What a model repository stores about each version: the files' names, `ModelMetadata`
(`sceneparse.json`), the tensor contract its versions share, valid model names and the errors.

The contract between export (which writes it) and serving, evaluation and retraining (which read
it); `serving/repository.py` is where versions are published and found. Its own module so that
the repository and its scanner (serving/repository_scan.py) both import it without importing each
other. Torch-free.
"""

from __future__ import annotations

import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

METADATA_FILE = "sceneparse.json"
LABELS_FILE = "labels.txt"
COLORS_FILE = "colors.txt"
CONFIG_FILE = "config.pbtxt"
DEPLOYMENT_FILE = "deployment.json"
LOCK_FILE = ".publish.lock"
SCHEMA_VERSION = 1

# Names become directory names and appear in URLs: keep them to a safe, boring alphabet.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class RepositoryError(Exception):
    """A model repository, model or version is missing, malformed or unsafe to use."""


class ModelNotFoundError(RepositoryError):
    """The named model (or version) does not exist in the repository."""


# What one config.pbtxt fixes for every version of a model (Triton reads one per model).
TENSOR_CONTRACT = ("platform", "input_name", "output_name", "crop_h", "crop_w", "num_classes", "output_hw",
                   "precision", "max_batch_size")


@dataclass
class ModelMetadata:
    """Everything a deployed model needs, stored with each version as `sceneparse.json`.

    mean/std are in the 0-255 pixel scale, as in the original configs. The network input is
    `(N, 3, crop_h, crop_w)` float32 (or float16 when precision is fp16) in RGB order,
    normalised as (pixel - mean) / std; the output is logits `(N, num_classes, out_h, out_w)`
    where `(out_h, out_w)` is `output_hw` (the crop size when upsampling is inside the graph).
    """

    name: str
    version: int
    arch: str  # "psp" or "psa"
    layers: int
    dataset: str
    classes: list[str]
    palette: list[list[int]]
    crop_h: int
    crop_w: int
    mean: list[float]
    std: list[float]
    ignore_label: int = 255
    base_size: int = 512
    test_scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = True
    stride_rate: float = 2.0 / 3.0
    input_name: str = "input"
    output_name: str = "logits"
    output_hw: list[int] | None = None  # None: same as the crop
    max_batch_size: int = 8
    precision: str = "fp32"
    platform: str = "onnxruntime_onnx"
    files: dict[str, str] = field(default_factory=lambda: {"onnx": "model.onnx"})
    checkpoint_sha256: str = ""
    checkpoint_name: str = ""
    checkpoint_path: str = ""  # absolute path at export time; `pipeline --from-deployed` fine-tunes from it
    tools: dict[str, str] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    schema_version: int = SCHEMA_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "metadata") -> ModelMetadata:
        known = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        missing = sorted(required - data.keys())
        if missing:
            raise RepositoryError(f"{source}: missing required field(s): {', '.join(missing)}")
        meta = cls(**{k: v for k, v in data.items() if k in known})
        meta.validate(source)
        return meta

    def validate(self, source: str = "metadata") -> None:
        problems = []
        if self.arch not in {"psp", "psa"}:
            problems.append(f"arch must be 'psp' or 'psa', got {self.arch!r}")
        if not self.classes:
            problems.append("classes is empty")
        if len(self.palette) < len(self.classes):
            problems.append(f"palette has {len(self.palette)} colours for {len(self.classes)} classes")
        if any(len(c) != 3 or not all(0 <= int(v) <= 255 for v in c) for c in self.palette):
            problems.append("palette entries must be [R, G, B] with values 0-255")
        if self.crop_h <= 0 or self.crop_w <= 0:
            problems.append(f"crop size must be positive, got {self.crop_h}x{self.crop_w}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            problems.append("mean and std need 3 values each, std > 0")
        if self.max_batch_size < 1:
            problems.append("max_batch_size must be >= 1")
        if not self.test_scales or any(s <= 0 for s in self.test_scales):
            problems.append("test_scales must be positive")
        if problems:
            raise RepositoryError(f"{source}: " + "; ".join(problems))


def validate_model_name(name: str) -> str:
    """Return `name` if it is a safe model name (letters, digits, `_.-`, not starting with a dot)."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise RepositoryError(
            f"invalid model name {name!r}: use letters, digits, '_', '.', '-' (max 128, no leading dot, no '..')"
        )
    return name
