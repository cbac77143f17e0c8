"""A rendered synthetic scene-parsing dataset in the original list format.

Each scene is a cluttered background (class 0) with rectangles, ellipses, polygons and bands
drawn over it in random order, so later shapes occlude earlier ones. A shape's class decides
its appearance: a hue, a periodic pattern (stripes, checks or dots) with its own orientation and
period. Every instance jitters its colour, phase, period and orientation, and every scene gets a
lighting gradient, pixel noise and JPEG compression, so a model has to learn colour *and* texture
rather than memorise pixels. Background clutter (smooth colour noise, flat blobs, thin lines drawn
over objects) carries no periodic pattern, which is what separates it from the object classes.

Class appearance depends only on the number of classes, never on the seed: datasets written with
different seeds share classes (useful for retraining on "new" data). Scenes depend only on
(seed, split, index), so the first N images of a split are the same whatever the split size.

`sceneparse make-synthetic --out DIR` writes:

    DIR/images/{train,val}_NNNN.jpg     RGB scenes
    DIR/labels/{train,val}_NNNN.png     8-bit class ids (no 255 is ever written)
    DIR/train.txt, DIR/val.txt          `images/... labels/...` per line, relative to DIR
    DIR/list/train.txt, DIR/list/val.txt  the same lists in the original's dataset/<name>/list/ layout
    DIR/synthetic_names.txt             one class name per line
    DIR/synthetic_colors.txt            `R G B` per line (the palette for colourised masks)
"""

from __future__ import annotations

import argparse
import colorsys
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

__all__ = [
    "ClassStyle",
    "SyntheticDataset",
    "class_styles",
    "main",
    "make_synthetic_dataset",
    "render_scene",
]

PATTERNS = ("stripes", "checks", "dots")
_HUE_NAMES = ("red", "orange", "yellow", "lime", "green", "teal", "cyan", "azure", "blue", "violet",
              "magenta", "rose")
MAX_CLASSES = 255  # ids 0..254; 255 is the ignore label
MIN_SIZE, MAX_SIZE = 16, 4096
JPEG_QUALITY = 92


@dataclass(frozen=True)
class ClassStyle:
    """How one object class looks: hue in [0, 1), pattern, orientation (radians), period (px)."""

    name: str
    hue: float
    pattern: str
    orientation: float
    period: float

    @property
    def color(self) -> tuple[int, int, int]:
        """The palette colour (uint8 RGB) used for colourised masks."""
        r, g, b = colorsys.hsv_to_rgb(self.hue, 0.8, 0.9)
        return round(r * 255), round(g * 255), round(b * 255)


@dataclass(frozen=True)
class SyntheticDataset:
    """Where a written synthetic dataset lives (all paths absolute)."""

    root: Path
    train_list: Path
    val_list: Path
    names_path: Path
    colors_path: Path
    classes: int


def class_styles(classes: int) -> list[ClassStyle]:
    """Appearance of object classes 1..classes-1 (index 0 of the result is class 1).

    Hues are spread evenly around the colour wheel; patterns cycle, and orientation and period
    step by incommensurate amounts so that neighbouring classes differ in more than one cue.
    """
    _check_classes(classes)
    count = classes - 1
    styles = []
    for k in range(count):
        hue = (k / count + 0.02) % 1.0
        pattern = PATTERNS[k % len(PATTERNS)]
        # Golden-ratio steps keep orientations of nearby class ids far apart.
        orientation = (k * 0.618034 * math.pi) % math.pi
        period = 5.0 + (k * 2.7) % 7.0
        name = f"{_HUE_NAMES[int(hue * len(_HUE_NAMES)) % len(_HUE_NAMES)]}_{pattern}"
        if count > len(_HUE_NAMES):
            name = f"{name}_{k + 1}"
        styles.append(ClassStyle(name, hue, pattern, orientation, period))
    return styles


# --- rendering ---------------------------------------------------------------------------------
def _pattern_wave(style: ClassStyle, ys: np.ndarray, xs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The class pattern in [-1, 1] at pixel coordinates, with per-instance jitter."""
    theta = style.orientation + rng.uniform(-0.15, 0.15)
    period = style.period * rng.uniform(0.85, 1.15)
    phase = rng.uniform(0, 2 * math.pi)
    k = 2 * math.pi / period
    u = (xs * math.cos(theta) + ys * math.sin(theta)) * k + phase
    if style.pattern == "stripes":
        return np.sin(u)
    v = (-xs * math.sin(theta) + ys * math.cos(theta)) * k + rng.uniform(0, 2 * math.pi)
    if style.pattern == "checks":
        return np.sign(np.sin(u) * np.sin(v)) * 0.8
    # dots: bright round spots on a darker ground
    return np.clip((np.cos(u) + np.cos(v)) - 0.6, -1.0, 1.0)


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth low-saturation colour noise plus fine grain, float32 (h, w, 3) in 0-255."""
    grid = rng.uniform(40, 220, size=(rng.integers(3, 7), rng.integers(3, 7), 3)).astype(np.float32)
    channels = [np.asarray(Image.fromarray(grid[..., c]).resize((w, h), Image.BILINEAR)) for c in range(3)]
    field = np.stack(channels, axis=-1)
    gray = field.mean(axis=-1, keepdims=True)
    saturation = rng.uniform(0.0, 0.35)
    field = gray + saturation * (field - gray)
    return field + rng.normal(0, 6, size=(h, w, 1)).astype(np.float32)


def _shape_xy(kind: str, h: int, w: int, rng: np.random.Generator) -> list[tuple[float, float]] | tuple:
    """Outline of one random shape: a polygon's points, or an ellipse's bounding box."""
    side = min(h, w)
    cy, cx = rng.uniform(-0.1, 1.1) * h, rng.uniform(-0.1, 1.1) * w
    if kind == "ellipse":
        ry, rx = rng.uniform(0.12, 0.4, size=2) * side
        return (cx - rx, cy - ry, cx + rx, cy + ry)
    if kind == "band":
        # a thick band across the whole image (road, river, shelf)
        angle = rng.uniform(0, math.pi)
        half = rng.uniform(0.06, 0.14) * side
        length = 2 * (h + w)
        dx, dy = math.cos(angle), math.sin(angle)
        nx, ny = -dy * half, dx * half
        return [(cx - dx * length + nx, cy - dy * length + ny), (cx + dx * length + nx, cy + dy * length + ny),
                (cx + dx * length - nx, cy + dy * length - ny), (cx - dx * length - nx, cy - dy * length - ny)]
    if kind == "rectangle":
        hy, hx = rng.uniform(0.12, 0.4, size=2) * side
        angle = rng.uniform(0, math.pi)
        corners = [(-hx, -hy), (hx, -hy), (hx, hy), (-hx, hy)]
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in corners]
    # polygon: 3-7 vertices at random radii around the centre, in angular order
    n = int(rng.integers(3, 8))
    angles = np.sort(rng.uniform(0, 2 * math.pi, size=n))
    radii = rng.uniform(0.15, 0.45, size=n) * side
    return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a, r in zip(angles, radii, strict=True)]


def render_scene(
    styles: Sequence[ClassStyle], h: int, w: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Render one scene.

    Args:
        styles: `class_styles(classes)`; class id k >= 1 looks like `styles[k - 1]`.
        h, w: image size in pixels.
        rng: the only source of randomness (same state, same scene).

    Returns:
        image: uint8 (h, w, 3) RGB; label: uint8 (h, w) class ids in [0, len(styles)].
    """
    image = _background(h, w, rng)
    # Instances are drawn into an id map (1..n, in draw order) so each gets its own jitter.
    instance_map = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(instance_map)
    n_shapes = int(rng.integers(2, 7))
    classes = rng.integers(1, len(styles) + 1, size=n_shapes)
    for i in range(n_shapes):
        kind = ("rectangle", "ellipse", "polygon", "band")[int(rng.integers(0, 4))]
        outline = _shape_xy(kind, h, w, rng)
        if kind == "ellipse":
            draw.ellipse(outline, fill=i + 1)
        else:
            draw.polygon(outline, fill=i + 1)
    instances = np.asarray(instance_map)
    label = np.zeros((h, w), dtype=np.uint8)
    for i in range(n_shapes):
        ys, xs = np.nonzero(instances == i + 1)
        if ys.size == 0:
            continue
        style = styles[classes[i] - 1]
        label[ys, xs] = classes[i]
        hue = (style.hue + rng.uniform(-0.035, 0.035)) % 1.0
        base = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.45, 0.9), rng.uniform(0.5, 0.9)), np.float32)
        wave = _pattern_wave(style, ys.astype(np.float32), xs.astype(np.float32), rng)
        amplitude = rng.uniform(0.25, 0.4)
        image[ys, xs] = 255 * base[None, :] * (1 + amplitude * wave[:, None])
    _draw_clutter(image, label, rng)
    # Lighting: a linear brightness gradient in a random direction, then sensor noise.
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (xx / w - 0.5) * math.cos(angle) + (yy / h - 0.5) * math.sin(angle)
    image *= (rng.uniform(0.8, 1.15) + rng.uniform(0.0, 0.5) * ramp)[..., None]
    image += rng.normal(0, rng.uniform(2, 9), size=image.shape).astype(np.float32)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), label


def _draw_clutter(image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> None:
    """Background-class clutter: flat blobs and thin lines, some over objects (occluders)."""
    h, w = label.shape
    clutter = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(clutter)
    n_items = int(rng.integers(1, 6))
    for i in range(n_items):
        y, x = rng.uniform(0, h), rng.uniform(0, w)
        if rng.random() < 0.5:
            r = rng.uniform(2, 0.08 * min(h, w) + 3)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=i + 1)
        else:
            angle = rng.uniform(0, math.pi)
            length = rng.uniform(0.3, 1.0) * max(h, w)
            draw.line((x, y, x + length * math.cos(angle), y + length * math.sin(angle)),
                      fill=i + 1, width=int(rng.integers(1, 4)))
    items = np.asarray(clutter)
    for i in range(n_items):
        mask = items == i + 1
        color = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.45), rng.uniform(0.2, 0.9)))
        image[mask] = 255 * color.astype(np.float32)
        label[mask] = 0


# --- writing -----------------------------------------------------------------------------------
def _check_classes(classes: int) -> None:
    if not 2 <= classes <= MAX_CLASSES:
        raise ValueError(f"classes must be between 2 and {MAX_CLASSES} (255 is the ignore label), got {classes}")


def make_synthetic_dataset(
    out: str | Path,
    classes: int = 6,
    train: int = 200,
    val: int = 40,
    size: tuple[int, int] = (96, 128),
    seed: int = 0,
    progress: bool = True,
) -> SyntheticDataset:
    """Write a synthetic dataset under `out` (created if missing) and return its paths.

    Args:
        out: output directory; existing files of a previous dataset there are overwritten.
        classes: number of classes including background (class 0), 2..255.
        train, val: number of images per split (train >= 1, val >= 1).
        size: (h, w) of every image, each in 16..4096.
        seed: scenes are a pure function of (seed, split, index).
        progress: show a tqdm progress bar on stderr.
    """
    _check_classes(classes)
    if train < 1 or val < 1:
        raise ValueError(f"train and val need at least 1 image each, got train={train} val={val}")
    h, w = size
    if not (MIN_SIZE <= h <= MAX_SIZE and MIN_SIZE <= w <= MAX_SIZE):
        raise ValueError(f"size must be HxW with each side in {MIN_SIZE}..{MAX_SIZE}, got {h}x{w}")
    root = Path(out).resolve()
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    styles = class_styles(classes)

    jobs = [("train", i) for i in range(train)] + [("val", i) for i in range(val)]
    lines: dict[str, list[str]] = {"train": [], "val": []}
    for split, i in tqdm(jobs, desc="make-synthetic", unit="img", disable=not progress):
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, i])
        image, label = render_scene(styles, h, w, rng)
        image_rel, label_rel = f"images/{split}_{i:04d}.jpg", f"labels/{split}_{i:04d}.png"
        Image.fromarray(image).save(root / image_rel, quality=JPEG_QUALITY)
        Image.fromarray(label).save(root / label_rel)
        lines[split].append(f"{image_rel} {label_rel}")

    # The lists go to DIR/ and, identically, to DIR/list/ (the original's dataset/<name>/list/
    # layout, which the shipped synthetic configs point at); both are relative to DIR.
    (root / "list").mkdir(exist_ok=True)
    for split, split_lines in lines.items():
        text = "\n".join(split_lines) + "\n"
        (root / f"{split}.txt").write_text(text)
        (root / "list" / f"{split}.txt").write_text(text)
    names = ["background"] + [s.name for s in styles]
    colors = [(0, 0, 0)] + [s.color for s in styles]
    names_path, colors_path = root / "synthetic_names.txt", root / "synthetic_colors.txt"
    names_path.write_text("\n".join(names) + "\n")
    colors_path.write_text("\n".join(f"{r} {g} {b}" for r, g, b in colors) + "\n")
    return SyntheticDataset(root, root / "train.txt", root / "val.txt", names_path, colors_path, classes)


# --- command line ------------------------------------------------------------------------------
def _parse_size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"size must look like HxW (e.g. 96x128), got {text!r}")
    return int(parts[0]), int(parts[1])


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad arguments as one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"sceneparse make-synthetic: {message}", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    """`sceneparse make-synthetic`: write a synthetic dataset; returns the exit status."""
    parser = _Parser(prog="sceneparse make-synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--classes", type=int, default=6, help="classes including background (2-255)")
    parser.add_argument("--train", type=int, default=200, help="training images")
    parser.add_argument("--val", type=int, default=40, help="validation images")
    parser.add_argument("--size", type=_parse_size, default=(96, 128), help="image size HxW (default 96x128)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (scenes are deterministic)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        dataset = make_synthetic_dataset(args.out, args.classes, args.train, args.val, args.size, args.seed,
                                         progress=not args.quiet)
    except (ValueError, OSError) as exc:
        print(f"sceneparse make-synthetic: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.train} train + {args.val} val images ({dataset.classes} classes) to {dataset.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
