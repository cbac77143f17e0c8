"""`sceneparse export`: a thin command line over export.export_checkpoint and the manifest runner.

    sceneparse export --config CFG --checkpoint CKPT [--name NAME] [--format onnx,torchscript]
                      [--repository model_repository] [--version N|auto] [--fp16]
                      [--max-batch-size 8] [--opset 17] [--logits crop|feature] [--no-simplify]
                      [--precision fp32|fp16|int8 [--calibration LIST] [--calibration-images N]
                       [--val-list LIST] [--min-agreement 0.99] [--max-miou-drop 0.005] ...]
    sceneparse export --manifest exports.yaml [--repository DIR]

Exit status: 0 published, 1 the export (or any manifest entry) failed, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys

from export.errors import ExportError
from export.triton_config import DEFAULT_MAX_QUEUE_SIZE

DEFAULT_REPOSITORY = "model_repository"


def _formats(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


# Options of one export; a manifest carries them per entry (or in its defaults) instead.
PER_EXPORT_OPTIONS = ("name", "format", "version", "fp16", "max_batch_size", "opset", "logits", "simplify",
                      "num_versions", "instance_kind", "triton_max_queue_size", "precision", "calibration", "calibration_images", "val_list",
                      "holdout_images", "gate_images", "min_agreement", "max_miou_drop", "keep_fp32",
                      "calibration_method")


def _groups(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip() and part.strip() != "none")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sceneparse export",
        description="Export a checkpoint to ONNX/TorchScript, verify it against PyTorch and publish it "
        "as a new version in a Triton model repository.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="model config (YAML, original format)")
    source.add_argument("--manifest", help="YAML list of exports to run in one go (see docs/export.md)")
    parser.add_argument("--checkpoint", help="weights: original release, plain state dict or sceneparse checkpoint")
    parser.add_argument("--name", help="model name in the repository (default <dataset>_<arch><layers>)")
    parser.add_argument("--format", default="onnx", type=_formats,
                        help="comma-separated: onnx, torchscript; the first sets config.pbtxt's platform (default onnx)")
    parser.add_argument("--repository", default=None, help=f"model repository root (default {DEFAULT_REPOSITORY})")
    parser.add_argument("--version", default="auto", help="version number, or auto for the next free one (default)")
    parser.add_argument("--fp16", action="store_true", help="export in half precision (= --precision fp16)")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"), default=None,
                        help="fp32 (default), fp16, or int8 (ONNX Runtime static quantization, gated against fp32)")
    _int8_arguments(parser)
    parser.add_argument("--max-batch-size", type=int, default=8, help="Triton max_batch_size, largest verified batch")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument("--logits", choices=("crop", "feature"), default=None,
                        help="logits zoomed to the crop in the graph (crop, default) or at stride 8 (feature)")
    parser.add_argument("--no-simplify", dest="simplify", action="store_false", help="do not try onnxslim")
    parser.add_argument("--num-versions", type=int, default=2, help="Triton version_policy latest num_versions")
    parser.add_argument("--instance-kind", choices=("KIND_AUTO", "KIND_GPU", "KIND_CPU"), default="KIND_AUTO",
                        help="Triton instance_group kind (default KIND_AUTO: GPU if present)")
    parser.add_argument("--triton-max-queue-size", type=int, default=DEFAULT_MAX_QUEUE_SIZE,
                        help="requests Triton queues for the model before it rejects more (config.pbtxt "
                        f"default_queue_policy; default {DEFAULT_MAX_QUEUE_SIZE})")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for export and verification")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _int8_arguments(parser: argparse.ArgumentParser) -> None:
    from export.quantize import (
        CALIBRATION_METHODS,
        DEFAULT_KEEP_FP32,
        MAX_MIOU_DROP,
        MIN_AGREEMENT,
        QuantizationOptions,
    )

    defaults = QuantizationOptions()
    group = parser.add_argument_group("int8 (with --precision int8; docs/export.md)")
    group.add_argument("--calibration", default=None, help="list file of calibration images (default: the config's train_list)")
    group.add_argument("--calibration-images", type=int, default=defaults.calibration_images,
                       help=f"calibration images, evenly spaced over the list (default {defaults.calibration_images})")
    group.add_argument("--val-list", default=None,
                       help="held-out images for the gate; with labels, the mIoU gate too (default: the config's val_list)")
    group.add_argument("--holdout-images", type=int, default=defaults.holdout_images,
                       help=f"images whose windows measure the argmax agreement (default {defaults.holdout_images})")
    group.add_argument("--gate-images", type=int, default=0, help="val images for the mIoU gate (default 0: all)")
    group.add_argument("--min-agreement", type=float, default=MIN_AGREEMENT,
                       help=f"lowest argmax agreement with fp32 on held-out crops (default {MIN_AGREEMENT})")
    group.add_argument("--max-miou-drop", type=float, default=MAX_MIOU_DROP,
                       help=f"largest mIoU drop from fp32, through the pipeline (default {MAX_MIOU_DROP} = 0.5 points)")
    group.add_argument("--keep-fp32", type=_groups, default=DEFAULT_KEEP_FP32,
                       help=f"node groups left in fp32: classifier, attention, none (default {','.join(DEFAULT_KEEP_FP32)})")
    group.add_argument("--calibration-method", choices=CALIBRATION_METHODS, default="minmax",
                       help="activation range calibration (default minmax)")


def _quantization(args):
    """QuantizationOptions for --precision int8, else None (int8 options without it are an error)."""
    from export.quantize import QuantizationOptions

    if args.precision != "int8":
        return None
    return QuantizationOptions(
        calibration_list=args.calibration, calibration_images=args.calibration_images, val_list=args.val_list,
        holdout_images=args.holdout_images, gate_images=args.gate_images, min_agreement=args.min_agreement,
        max_miou_drop=args.max_miou_drop, keep_fp32=args.keep_fp32, method=args.calibration_method)


def _export_one(args) -> int:
    from tqdm import tqdm

    from export.exporter import export_checkpoint
    from export.options import DEFAULT_LOGITS, ExportOptions

    stages = ["load", *(f"export {f}" for f in args.format), "verify"]
    int8 = _quantization(args)
    stages += ["onnxslim"] if "onnx" in args.format and args.simplify and int8 is None else []
    stages += ["int8", "int8 gate"] if int8 is not None else []
    stages += ["publish"]
    bar = tqdm(total=len(stages), desc="export", unit="stage", disable=args.quiet, dynamic_ncols=True)

    started = []

    def progress(stage: str) -> None:
        if started:
            bar.update(1)  # the previous stage is done
        started.append(stage)
        bar.set_description(stage)

    try:
        options = ExportOptions(
            formats=tuple(args.format), fp16=args.fp16 or args.precision == "fp16", max_batch_size=args.max_batch_size,
            opset=args.opset, logits=args.logits or DEFAULT_LOGITS, simplify=args.simplify,
            num_versions=args.num_versions, instance_kind=args.instance_kind, int8=int8,
            triton_max_queue_size=args.triton_max_queue_size,
        )
        result = export_checkpoint(args.config, args.checkpoint, args.repository or DEFAULT_REPOSITORY, options,
                                   name=args.name, version=args.version, progress=progress)
        bar.update(bar.total - bar.n)
    finally:
        bar.close()
    worst = result.parity["worst"]
    slim = result.parity.get("onnxslim")
    print(f"published {result.name} version {result.version}: {result.path}")
    print(f"  files: {', '.join(result.files.values())}; platform {result.metadata.platform}; "
          f"precision {result.metadata.precision}; output {result.metadata.output_hw or 'crop size'}")
    print(f"  parity ({result.parity['precision']}): max |delta logits| {worst['max_abs_delta']:.2e}, "
          f"argmax agreement {100 * worst['argmax_agreement']:.3f}%")
    if slim:
        print(f"  onnxslim: {'kept' if slim.get('kept') else 'not kept'} ({slim.get('reason', '')})")
    if "int8" in result.parity:
        from export.quantize import describe_gate

        print(f"  int8 gate passed: {describe_gate(result.parity['int8'])}")
    return 0


def _export_manifest(args) -> int:
    from pathlib import Path

    from export.manifest import load_manifest, run_manifest, summary_table

    manifest = load_manifest(args.manifest)
    outcomes = run_manifest(manifest, Path(args.repository) if args.repository else None, progress=not args.quiet)
    print(summary_table(outcomes))
    return 0 if all(o.ok for o in outcomes) else 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config and not args.checkpoint:
        parser.error("--checkpoint is required with --config")
    if args.fp16 and args.precision not in (None, "fp16"):
        parser.error(f"--fp16 contradicts --precision {args.precision}")
    if args.precision != "int8" and not args.manifest:
        defaults = parser.parse_args(["--config", "c", "--checkpoint", "c"])
        given = [f"--{dest.replace('_', '-')}" for dest in PER_EXPORT_OPTIONS[PER_EXPORT_OPTIONS.index("calibration"):]
                 if getattr(args, dest) != getattr(defaults, dest)]
        if given:
            parser.error(f"{', '.join(given)} go(es) with --precision int8")
    if args.manifest and args.checkpoint:
        parser.error("--checkpoint goes with --config; a manifest names its own checkpoints")
    if args.manifest:
        # Per-export options would be silently ignored: a manifest's entries and defaults set them.
        defaults = parser.parse_args(["--manifest", args.manifest])  # defaults after type conversion
        given = [f"--{dest.replace('_', '-')}" for dest in PER_EXPORT_OPTIONS
                 if getattr(args, dest) != getattr(defaults, dest)]
        if given:
            parser.error(f"{', '.join(given)} go(es) with --config; with --manifest, set them in the "
                         "manifest's defaults or entries")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        return _export_manifest(args) if args.manifest else _export_one(args)
    except ExportError as exc:
        print(f"sceneparse export: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sceneparse export: interrupted; nothing was published", file=sys.stderr)
        return 130
    except Exception as exc:  # never a traceback: one line naming the failure
        print(f"sceneparse export: unexpected error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
