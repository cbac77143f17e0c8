"""`sceneparse predict`: segment image files and folders offline with a published model.

Same decoding, pipeline and rendering as the gateway, so a file gives the same mask here as
through POST /v1/segment. Unreadable files are reported on stderr and skipped; the exit status
is 1 when any file failed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

from serving.backends.base import Backend, BackendUnavailable
from serving.imaging import ImageError, decode_image
from serving.pipeline import PipelineSpec, validate_scales
from serving.rendering import render_png
from serving.repository import ModelRepository, RepositoryError
from serving.segmentation import SegmentOptions, segment_image
from serving.settings import Settings

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


def collect_inputs(inputs: Iterable[str | Path]) -> list[tuple[Path, Path]]:
    """(file, output path relative to --out) for every input.

    A file given by name is taken whatever its suffix (decoding decides); a folder contributes
    its image files (by suffix, recursively), keeping their relative paths so names cannot clash.
    Raises FileNotFoundError for an input that does not exist.
    """
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file() and child.suffix.lower() in IMAGE_SUFFIXES:
                    found.append((child, child.relative_to(path).with_suffix(".png")))
        elif path.exists():
            found.append((path, Path(path.name).with_suffix(".png")))
        else:
            raise FileNotFoundError(f"input {path} does not exist")
    return found


def predict_files(
    files: list[tuple[Path, Path]],
    repository: ModelRepository,
    model: str,
    backend: Backend,
    out_dir: Path,
    output: str = "color",
    options: SegmentOptions | None = None,
    max_pixels: int = 40_000_000,
    alpha: float = 0.5,
    progress: bool = True,
) -> dict[Path, str]:
    """Segment each file and write `out_dir/<relative>.png`; returns {failed file: reason}."""
    meta = repository.read_metadata(model)
    runner = backend.open(repository, meta)
    spec = PipelineSpec.from_metadata(meta)
    options = options or SegmentOptions.defaults_for(meta)
    failures: dict[Path, str] = {}
    try:
        for source, relative in tqdm(files, desc=f"predict {model} v{meta.version}", unit="img", disable=not progress):
            try:
                image = decode_image(source.read_bytes(), max_pixels)
            except (OSError, ImageError) as exc:
                failures[source] = str(exc)
                tqdm.write(f"sceneparse predict: skipped {source}: {exc}", file=sys.stderr)
                continue
            label = segment_image(image, runner, meta, options, spec=spec)
            target = out_dir / relative
            partial = target.with_name(f".{target.name}.partial")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                # Through a temporary file: an interrupted run never leaves a truncated PNG behind.
                partial.write_bytes(render_png(output, image, label, meta, alpha))
                os.replace(partial, target)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    partial.unlink()
                failures[source] = f"cannot write {target}: {exc}"
                tqdm.write(f"sceneparse predict: skipped {source}: cannot write {target}: {exc}", file=sys.stderr)
    finally:
        runner.close()
    return failures


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sceneparse predict",
        description="Segment image files and folders with a published model (the gateway's pipeline, offline).",
    )
    parser.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    parser.add_argument("--model", required=True, help="model name in the repository")
    parser.add_argument("--repository", default="model_repository", help="model repository (default: model_repository)")
    parser.add_argument("--out", required=True, help="folder for the PNGs (created)")
    parser.add_argument("--output", choices=["color", "label", "overlay"], default="color",
                        help="color: palette PNG; label: class-id PNG; overlay: mask on the photo (default: color)")
    parser.add_argument("--alpha", type=float, default=0.5, help="mask opacity for --output overlay (default: 0.5)")
    parser.add_argument("--scales", help="comma-separated test scales (default: the model's)")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                        help="add mirrored crops (default: the model's)")
    parser.add_argument("--max-side", type=int, default=None,
                        help="shrink images to this long side for inference (default: never)")
    parser.add_argument("--backend", choices=["onnxruntime", "triton"], default="onnxruntime")
    parser.add_argument("--triton-url", default=None, help="Triton host:port for --backend triton")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Returns 0 when every file was segmented, 1 when some failed, 2 on a usage or model error."""
    args = build_parser().parse_args(argv)
    try:
        if not 0.0 <= args.alpha <= 1.0:
            raise ValueError(f"--alpha must lie within [0, 1], got {args.alpha}")
        if args.max_side is not None and args.max_side < 32:
            raise ValueError(f"--max-side must be at least 32, got {args.max_side}")
        repository = ModelRepository(args.repository)
        repository.check_root()
        meta = repository.read_metadata(args.model)
        scales = meta.test_scales
        if args.scales:
            scales = validate_scales([float(s) for s in args.scales.split(",") if s.strip()])
        options = SegmentOptions(
            scales=tuple(scales), flip=meta.flip if args.flip is None else args.flip,
            stride_rate=meta.stride_rate, max_side=args.max_side,
        )
        files = collect_inputs(args.inputs)
        if not files:
            raise ValueError(f"no image files found in {', '.join(args.inputs)}")
        from serving.backends.factory import create_backend

        settings_args = {"backend": args.backend, "repository": args.repository}
        if args.triton_url:
            settings_args["triton_url"] = args.triton_url
        backend = create_backend(Settings(**settings_args))
        failures = predict_files(files, repository, args.model, backend, Path(args.out), args.output, options,
                                 alpha=args.alpha, progress=not args.no_progress)
    except (RepositoryError, FileNotFoundError, ValueError, RuntimeError, BackendUnavailable) as exc:
        print(f"sceneparse predict: {exc}", file=sys.stderr)
        return 2
    done = len(files) - len(failures)
    print(f"sceneparse predict: {done} of {len(files)} images written to {args.out}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
