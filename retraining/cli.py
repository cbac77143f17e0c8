"""Thin CLIs: `sceneparse pipeline`, `sceneparse versions`, `sceneparse rollback`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from export.errors import ExportError
from serving.repository import ModelRepository, RepositoryError


def _notify_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("telling the serving side")
    group.add_argument("--gateway-url", action="append", default=[],
                       help="gateway base URL to POST /v1/admin/reload to (repeatable)")
    group.add_argument("--admin-key", default=os.environ.get("SCENEPARSE_ADMIN_KEY"),
                       help="admin API key for the gateway (default: $SCENEPARSE_ADMIN_KEY)")
    group.add_argument("--triton-url", help="Triton server (explicit model control) to send a load request to")
    group.add_argument("--triton-protocol", choices=("http", "grpc"), default="http")


def _int8_arguments(parser: argparse.ArgumentParser) -> None:
    from export.quantize import MAX_MIOU_DROP, MIN_AGREEMENT, QuantizationOptions

    defaults = QuantizationOptions()
    group = parser.add_argument_group("precision (docs/export.md, int8)")
    group.add_argument("--precision", choices=("fp32", "int8"), default="fp32",
                       help="fp32 (default) or int8; a model's versions share one precision")
    group.add_argument("--calibration", default=None, help="int8: calibration list (default: the config's train_list)")
    group.add_argument("--calibration-images", type=int, default=defaults.calibration_images,
                       help=f"int8: calibration images (default {defaults.calibration_images})")
    group.add_argument("--min-agreement", type=float, default=MIN_AGREEMENT,
                       help=f"int8: lowest argmax agreement with fp32 on held-out crops (default {MIN_AGREEMENT})")
    group.add_argument("--max-miou-drop", type=float, default=MAX_MIOU_DROP,
                       help=f"int8: largest mIoU drop from fp32 through the pipeline (default {MAX_MIOU_DROP})")


def _quantization(args):
    from export.quantize import QuantizationOptions

    if args.precision != "int8":
        return None
    options = QuantizationOptions(calibration_list=args.calibration, calibration_images=args.calibration_images,
                                  min_agreement=args.min_agreement, max_miou_drop=args.max_miou_drop)
    options.check()
    return options


def pipeline_main(argv: Sequence[str] | None = None) -> int:
    from retraining.gates import GatePolicy
    from retraining.pipeline import PipelineRequest, run_pipeline

    parser = argparse.ArgumentParser(
        prog="sceneparse pipeline",
        description="Retrain, evaluate, gate, export, publish and reload. Exit 0: published (or dry run); "
                    "3: a gate failed and the deployment is untouched; 1: a step failed; 2: bad arguments.")
    parser.add_argument("--config", required=True, help="training config (YAML path or shipped name)")
    parser.add_argument("--name", required=True, help="model name in the repository")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--from-deployed", action="store_true",
                        help="fine-tune from the checkpoint behind the deployed version")
    parser.add_argument("--min-miou", type=float, default=None, help="absolute mIoU floor")
    parser.add_argument("--max-regression", type=float, default=0.005, help="allowed mIoU drop vs deployed")
    parser.add_argument("--class-tolerance", type=float, default=0.02, help="allowed IoU drop of any one class")
    parser.add_argument("--keep-last", type=int, default=3, help="versions to keep (and Triton's version_policy)")
    parser.add_argument("--runs", type=Path, default=Path("runs/pipeline"), help="where run folders and reports go")
    parser.add_argument("--cpu-processes", type=int, default=1, help="gloo processes when training on the CPU")
    parser.add_argument("--max-batch-size", type=int, default=None,
                        help="exported model's max batch size (default: the deployed version's, else 4)")
    parser.add_argument("--dry-run", action="store_true", help="train, export, evaluate and gate; publish nothing")
    _int8_arguments(parser)
    _notify_arguments(parser)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="training config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    try:
        policy = GatePolicy(args.min_miou, args.max_regression, args.class_tolerance)
        if args.keep_last < 1:
            raise ValueError("--keep-last must be >= 1")
        request = PipelineRequest(
            config=args.config, name=args.name, repository=args.repository, overrides=list(args.opts or []),
            from_deployed=args.from_deployed, policy=policy, dry_run=args.dry_run, keep_last=args.keep_last,
            runs=args.runs, gateway_urls=args.gateway_url, admin_key=args.admin_key, triton_url=args.triton_url,
            triton_protocol=args.triton_protocol, cpu_processes=args.cpu_processes,
            max_batch_size=args.max_batch_size, int8=_quantization(args))
        outcome = run_pipeline(request)
    except (ValueError, RepositoryError, ExportError) as exc:
        print(f"sceneparse pipeline: {exc}", file=sys.stderr)
        return 2
    report = outcome.report
    print(f"[pipeline] outcome: {outcome.outcome}; report: {outcome.run_dir / 'report.md'}")
    if outcome.outcome == "gate-failed":
        for check in report["gates"]["checks"]:
            if not check["passed"]:
                print(f"sceneparse pipeline: gate {check['name']} failed: {check['detail']}", file=sys.stderr)
    elif outcome.outcome == "failed":
        print(f"sceneparse pipeline: {report.get('error')}", file=sys.stderr)
    elif outcome.published_version:
        print(f"[pipeline] published {args.name} version {outcome.published_version}")
    return outcome.exit_code


def versions_main(argv: Sequence[str] | None = None) -> int:
    from retraining.versions import version_rows

    parser = argparse.ArgumentParser(prog="sceneparse versions", description="List a model's versions.")
    parser.add_argument("--name", required=True)
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    args = parser.parse_args(argv)
    try:
        rows = version_rows(ModelRepository(args.repository), args.name)
    except RepositoryError as exc:
        print(f"sceneparse versions: {exc}", file=sys.stderr)
        return 1
    print(f"{'version':>7}  {'served':<6}  {'mIoU':>7}  {'created':<25}  checkpoint")
    for row in rows:
        served = "yes" + (" (pinned)" if row.pinned else "") if row.served else ""
        miou = "-" if row.miou is None else f"{row.miou:.4f}"
        print(f"{row.version:>7}  {served:<6}  {miou:>7}  {row.created_at or '-':<25}  {row.checkpoint or '-'}")
    return 0


def rollback_main(argv: Sequence[str] | None = None) -> int:
    from retraining.pipeline import PipelineRequest, notify_serving
    from retraining.versions import roll_back

    parser = argparse.ArgumentParser(prog="sceneparse rollback",
                                     description="Make an earlier version the served one (pins it).")
    parser.add_argument("--name", required=True)
    parser.add_argument("--to", type=int, default=None, help="version to serve (default: the one before the served one)")
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    _notify_arguments(parser)
    args = parser.parse_args(argv)
    try:
        done = roll_back(ModelRepository(args.repository), args.name, args.to)
    except RepositoryError as exc:
        print(f"sceneparse rollback: {exc}", file=sys.stderr)
        return 1
    version = done.version
    print(f"{args.name}: now serving version {version} (pinned; the next published version unpins it)")
    if done.widened_policy is not None:
        print(f"{args.name}: config.pbtxt's version_policy did not have Triton load version {version}; it now loads "
              f"versions {done.widened_policy}. Triton in explicit mode loads it on a load request (--triton-url), "
              "in poll mode by itself; a gateway on Triton switches once Triton reports it ready")
    request = PipelineRequest(config="", name=args.name, gateway_urls=args.gateway_url, admin_key=args.admin_key,
                              triton_url=args.triton_url, triton_protocol=args.triton_protocol)
    problems = notify_serving(request)
    for problem in problems:
        print(f"sceneparse rollback: warning: {problem}", file=sys.stderr)
    return 0
