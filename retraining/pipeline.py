"""`sceneparse pipeline`: retrain, export, evaluate, gate, publish, notify — safe to kill at any step.

Each run lives in `<runs>/<name>/<timestamp>/` (checkpoints, a staged export, its evaluation and
the report). Export writes into a staging repository inside the run, so a failed export or a
failed gate never touches the real repository; publishing copies the staged version into the
real one through `ModelRepository.publish_version` (lock + staging directory + atomic rename), so
a kill at any moment leaves either the old set of versions or the old set plus one complete new
version.

The gates judge the artifact about to be published, not the eager checkpoint: the evaluate step
runs the staged version's own file through the serving pipeline (`sceneparse test --repository`,
training.evaluate_deployed). With `--precision int8` the export quantizes and applies the int8
gate (agreement with fp32 on held-out crops, mIoU drop through the pipeline); a refusal there
is a failed gate (exit 3) whose message gives both figures.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retraining.gates import GatePolicy, GateResult, check_gates, int8_check
from retraining.report import write_report
from retraining.versions import apply_retention
from sceneparse.atomic import atomic_write_text
from serving.repository import (
    COLORS_FILE,
    CONFIG_FILE,
    LABELS_FILE,
    METADATA_FILE,
    ModelMetadata,
    ModelRepository,
    RepositoryError,
)

if TYPE_CHECKING:  # export (and torch) is imported only when a run exports
    from export.quantize import QuantizationOptions

STEPS = ("train", "export", "evaluate", "gate", "publish", "notify")


class PipelineError(RuntimeError):
    """A step failed; the message names the step and the cause."""


@dataclass
class PipelineRequest:
    config: str
    name: str
    repository: Path = Path("model_repository")
    overrides: list[str] = field(default_factory=list)
    from_deployed: bool = False
    policy: GatePolicy = field(default_factory=GatePolicy)
    dry_run: bool = False
    keep_last: int = 3
    runs: Path = Path("runs/pipeline")
    gateway_urls: list[str] = field(default_factory=list)
    admin_key: str | None = None
    triton_url: str | None = None
    triton_protocol: str = "http"
    cpu_processes: int = 1
    formats: tuple[str, ...] = ("onnx",)
    max_batch_size: int | None = None  # None: the deployed version's (a model's versions share it), else 4
    int8: QuantizationOptions | None = None  # export int8 with these calibration and gate settings

    @property
    def precision(self) -> str:
        return "fp32" if self.int8 is None else "int8"


@dataclass
class PipelineOutcome:
    outcome: str  # "published", "gate-failed", "dry-run", "failed"
    run_dir: Path
    report: dict[str, Any]
    published_version: int | None = None

    @property
    def exit_code(self) -> int:
        return {"published": 0, "dry-run": 0, "gate-failed": 3}.get(self.outcome, 1)


class _Step:
    """One running step; set `status` to record how it ended ("ok" unless told otherwise)."""

    def __init__(self, name: str):
        self.name = name
        self.status = "ok"


class _Run:
    """Bookkeeping of one run: the state file (what step is running) and step timings."""

    def __init__(self, run_dir: Path):
        self.dir = run_dir
        self.steps: list[dict[str, Any]] = []
        self.current = ""  # the step running or last run, named in the report's error
        run_dir.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[_Step]:
        """`with run.step("export") as step:` records the step's time and status ("FAIL" when it raises)."""
        self.current = name
        atomic_write_text(self.dir / "state.json", json.dumps({"step": name, "pid": os.getpid(), "time": time.time()}) + "\n")
        print(f"[pipeline] {name} ...", flush=True)
        # Operators (and the kill-at-every-step tests) can freeze a run at the start of a step
        # to inspect the repository or to kill it there.
        if os.environ.get("SCENEPARSE_PIPELINE_HOLD") == name:
            print(f"[pipeline] holding before {name} (SCENEPARSE_PIPELINE_HOLD)", flush=True)
            while True:
                time.sleep(3600)
        step = _Step(name)
        started = time.perf_counter()
        try:
            yield step
        except BaseException:
            step.status = "FAIL"
            raise
        finally:
            self.steps.append({"step": name, "seconds": time.perf_counter() - started, "status": step.status})


def _deployed(repo: ModelRepository, name: str) -> ModelMetadata | None:
    try:
        return repo.read_metadata(name) if repo.list_versions(name) else None
    except RepositoryError:
        raise
    except FileNotFoundError:
        return None


def _max_batch_size(request: PipelineRequest, deployed: ModelMetadata | None) -> int:
    # All versions of a model share one config.pbtxt, max_batch_size included.
    if request.max_batch_size is not None:
        return request.max_batch_size
    return deployed.max_batch_size if deployed else 4


def _training_config(request: PipelineRequest, run: _Run, deployed: ModelMetadata | None):
    from training.config import find_config, load_config

    overrides = list(request.overrides) + ["save_path", str(run.dir / "train")]
    if request.from_deployed:
        if deployed is None:
            raise PipelineError(f"--from-deployed: model {request.name!r} has no deployed version to fine-tune from")
        source = Path(deployed.checkpoint_path)
        if not deployed.checkpoint_path or not source.is_file():
            raise PipelineError(
                f"--from-deployed: the checkpoint behind {request.name} v{deployed.version} "
                f"({deployed.checkpoint_path or 'not recorded'}) is not on this machine")
        from sceneparse.digest import file_sha256

        if deployed.checkpoint_sha256 and file_sha256(source) != deployed.checkpoint_sha256:
            raise PipelineError(f"--from-deployed: {source} changed since v{deployed.version} was exported (sha256 differs)")
        overrides += ["weight", str(source)]
    return load_config(find_config(request.config), overrides)


def _evaluation_config(cfg, checkpoint: Path, run: _Run):
    """The training config turned into an evaluation of the val list with the standard protocol."""
    return cfg.merged({"test_list": cfg.val_list, "split": "val", "model_path": str(checkpoint),
                       "save_folder": str(run.dir / "eval"), "has_prediction": False,
                       "index_start": 0, "index_step": 0})


def _record_metrics(staged_dir: Path, metrics: dict[str, Any]) -> None:
    """Store the staged version's own evaluation in its metadata before it is published."""
    path = staged_dir / METADATA_FILE
    data = json.loads(path.read_text())
    data["metrics"] = json.loads(json.dumps(metrics, default=str))
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def _publish_staged(repo: ModelRepository, staged_dir: Path, name: str) -> int:
    """Copy a staged version (files + metadata) into the real repository as its next version."""
    staged_model = staged_dir.parent
    staged_meta = json.loads((staged_dir / METADATA_FILE).read_text())

    def populate(staging: Path) -> ModelMetadata:
        for item in staged_dir.iterdir():
            if item.name != METADATA_FILE and item.is_file():
                shutil.copyfile(item, staging / item.name)
        return ModelMetadata.from_dict(staged_meta, source=str(staged_dir / METADATA_FILE))

    # The staged model was exported under the name it is published as (export_checkpoint's
    # name=request.name), so its config.pbtxt, labels and palette are copied as they are.
    model_files = {file_name: (staged_model / file_name).read_text()
                   for file_name in (CONFIG_FILE, LABELS_FILE, COLORS_FILE) if (staged_model / file_name).is_file()}
    version, _ = repo.publish_version(name, populate, model_files=model_files)
    return version


def notify_serving(request: PipelineRequest) -> list[str]:
    from retraining.notify import load_on_triton, reload_gateway

    problems = []
    # Triton first: a gateway on the Triton backend must find the new version loaded.
    if request.triton_url:
        try:
            load_on_triton(request.triton_url, request.name, request.triton_protocol)
        except Exception as exc:  # reported below: the version is published either way
            problems.append(f"Triton {request.triton_url}: {exc}")
    for url in request.gateway_urls:
        try:
            reload_gateway(url, request.admin_key)
        except RuntimeError as exc:
            problems.append(str(exc))
    return problems


def run_pipeline(request: PipelineRequest) -> PipelineOutcome:
    """Run every step; returns the outcome (the report is written in every case)."""
    repo = ModelRepository(request.repository)
    repo.check_root(create=True)
    repo.model_dir(request.name)  # validates the name before any work
    run = _Run(Path(request.runs) / request.name / time.strftime("%Y%m%d-%H%M%S"))
    report: dict[str, Any] = {"name": request.name, "config": str(request.config), "outcome": "failed",
                              "repository": str(repo.root), "dry_run": request.dry_run,
                              "policy": vars(request.policy), "steps": run.steps}
    deployed = _deployed(repo, request.name)
    report["deployed_version"] = deployed.version if deployed else None
    report["published_version"] = None
    report["deployed_metrics"] = deployed.metrics if deployed else None
    class_names: list[str] = deployed.classes if deployed else []
    outcome = PipelineOutcome("failed", run.dir, report)
    try:
        with run.step("train"):
            if deployed is not None and deployed.precision != request.precision:
                raise PipelineError(
                    f"model {request.name!r} serves {deployed.precision} versions and this run exports "
                    f"{request.precision}; precision is part of a model's tensor contract, so publish it under "
                    f"a name of its own (e.g. --name {request.name}_{request.precision})")
            cfg = _training_config(request, run, deployed)
            from training.train import run_training

            trained = run_training(cfg, cpu_processes=request.cpu_processes)
            checkpoint = Path(trained["checkpoint"])
            report["checkpoint"] = str(checkpoint)

        with run.step("export") as step:
            from export import ExportOptions, export_checkpoint
            from export.quantize import Int8GateError

            try:
                options = ExportOptions(formats=request.formats, max_batch_size=_max_batch_size(request, deployed),
                                        num_versions=request.keep_last, int8=request.int8)
                staged = export_checkpoint(cfg, checkpoint, run.dir / "staged_repository", options, name=request.name)
            except Int8GateError as exc:
                report["int8"] = json.loads(json.dumps(exc.figures, default=str))
                report["gates"] = GateResult(False, [int8_check(exc.figures)]).to_dict()
                step.status = "FAIL"
                outcome.outcome = report["outcome"] = "gate-failed"
                return outcome
            report["parity"] = staged.parity
            report["staged_version"] = {"path": str(staged.path), "precision": staged.metadata.precision}

        with run.step("evaluate"):
            from training.datasets import dataset_info_for_config
            from training.evaluate_deployed import evaluate_deployed

            # The staged version's own file, through the serving pipeline: what would be published.
            candidate = evaluate_deployed(staged.path.parent.parent, staged.name, staged.version,
                                          _evaluation_config(cfg, checkpoint, run), progress=True)
            class_names = list(dataset_info_for_config(cfg).classes)
            report["candidate_metrics"] = {k: candidate[k] for k in ("mIoU", "mAcc", "aAcc", "absent", "per_class")
                                           if k in candidate}
            _record_metrics(staged.path, report["candidate_metrics"])

        with run.step("gate") as step:
            gates = check_gates(report["candidate_metrics"], deployed.metrics if deployed else None,
                                request.policy, class_names)
            if "int8" in staged.parity:  # passed at export (a failure stops there), reported beside the others
                gates = GateResult(gates.passed, [*gates.checks, int8_check(staged.parity["int8"])])
            report["gates"] = gates.to_dict()
            step.status = "pass" if gates.passed else "FAIL"
        if not gates.passed:
            outcome.outcome = report["outcome"] = "gate-failed"
            return outcome
        if request.dry_run:
            outcome.outcome = report["outcome"] = "dry-run"
            return outcome

        with run.step("publish"):
            # publish_version also removes a rollback pin, in the same hold of the publish lock: a pin
            # must not hide the new version.
            version = _publish_staged(repo, staged.path, request.name)
            report["retention_deleted"] = apply_retention(repo, request.name, request.keep_last)
            outcome.published_version = report["published_version"] = version

        with run.step("notify") as step:
            problems = notify_serving(request)
            report["notify_problems"] = problems
            for problem in problems:
                print(f"[pipeline] warning: published v{version}, but {problem}", flush=True)
            step.status = "ok" if not problems else "warning"
        outcome.outcome = report["outcome"] = "published"
        return outcome
    except Exception as exc:
        report["error"] = f"{run.current}: {exc}"
        outcome.outcome = report["outcome"] = "failed"
        return outcome
    finally:
        report["report_files"] = {k: str(v) for k, v in write_report(run.dir, report, class_names).items()}
        atomic_write_text(run.dir / "state.json", json.dumps({"step": "finished", "outcome": report["outcome"]}) + "\n")
