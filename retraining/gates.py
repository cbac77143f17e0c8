"""Quality gates: a candidate model is published only if it is good enough and no worse than what runs.

Metrics are the dicts `sceneparse test` produces (mIoU, mAcc, aAcc, per-class IoU) and that export
records in each version's metadata.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class GatePolicy:
    """min_miou: absolute floor (None: no floor). max_regression: allowed drop in mIoU versus the
    deployed version. class_tolerance: allowed drop in any single class's IoU."""

    min_miou: float | None = None
    max_regression: float = 0.005
    class_tolerance: float = 0.02

    def __post_init__(self) -> None:
        for label, value in (("min-miou", self.min_miou), ("max-regression", self.max_regression),
                             ("class-tolerance", self.class_tolerance)):
            if value is not None and not (0.0 <= value <= 1.0):
                raise ValueError(f"{label} must lie within [0, 1], got {value}")


@dataclass
class GateCheck:
    name: str
    passed: bool
    detail: str


@dataclass
class GateResult:
    passed: bool
    checks: list[GateCheck] = field(default_factory=list)

    def failures(self) -> list[GateCheck]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "checks": [asdict(c) for c in self.checks]}


def per_class_iou(metrics: dict[str, Any]) -> list[float]:
    """The per-class IoU list of a metrics dict (NaN where a class was absent)."""
    if isinstance(metrics.get("per_class"), list):  # training.metrics.summarize's layout
        return [float("nan") if row.get("iou") is None else float(row["iou"]) for row in metrics["per_class"]]
    for key in ("class_iou", "per_class_iou", "iou_per_class"):
        if key in metrics:
            values = metrics[key]
            if isinstance(values, dict):  # {class name: iou}
                values = list(values.values())
            return [float("nan") if v is None else float(v) for v in values]
    return []


def comparable(deployed: dict[str, Any], candidate: dict[str, Any]) -> dict[str, Any]:
    """The deployed metrics averaged the way the candidate's are.

    Metrics record their absent-class policy (`absent`); a deployed version evaluated before they
    did was averaged with the then default, "exclude". When the policies differ and the per-class
    pixel counts are there, the deployed means are recomputed from the counts under the
    candidate's policy, so that a change of default is never mistaken for a regression.
    """
    policy = candidate.get("absent")
    recorded = deployed.get("absent", "exclude" if policy else None)
    rows = deployed.get("per_class")
    counted = isinstance(rows, list) and rows and all(
        all(key in row for key in ("intersection", "union", "target")) for row in rows)
    if policy is None or recorded == policy or not counted:
        return deployed
    from training.metrics import summarize

    again = summarize([row["intersection"] for row in rows], [row["union"] for row in rows],
                      [row["target"] for row in rows], [str(row.get("name", row["id"])) for row in rows], policy)
    return {**deployed, **{key: again[key] for key in ("mIoU", "mAcc", "aAcc", "per_class", "absent")}}


def check_gates(candidate: dict[str, Any], deployed: dict[str, Any] | None, policy: GatePolicy,
                class_names: list[str] | None = None) -> GateResult:
    """Compare candidate metrics with the deployed version's (None when nothing is deployed yet)."""
    checks: list[GateCheck] = []
    if deployed:
        deployed = comparable(deployed, candidate)
    miou = float(candidate["mIoU"])
    if policy.min_miou is not None:
        checks.append(GateCheck("min-miou", miou >= policy.min_miou, f"mIoU {miou:.4f} vs floor {policy.min_miou:.4f}"))
    if deployed and "mIoU" in deployed:
        before = float(deployed["mIoU"])
        drop = before - miou
        checks.append(GateCheck("miou-regression", drop <= policy.max_regression + 1e-12,
                                f"mIoU {before:.4f} -> {miou:.4f} (drop {drop:+.4f}, allowed {policy.max_regression:.4f})"))
        old, new = per_class_iou(deployed), per_class_iou(candidate)
        if old and new and len(old) == len(new):
            worst = []
            for index, (a, b) in enumerate(zip(old, new, strict=True)):
                if math.isnan(a) or math.isnan(b):
                    continue  # class absent from the val set: nothing to compare
                if a - b > policy.class_tolerance + 1e-12:
                    name = class_names[index] if class_names and index < len(class_names) else f"class {index}"
                    worst.append(f"{name} {a:.4f} -> {b:.4f}")
            tolerance = f"{policy.class_tolerance:.4f}"
            detail = f"dropped beyond {tolerance}: {', '.join(worst)}" if worst else f"no class dropped more than {tolerance}"
            checks.append(GateCheck("class-regression", not worst, detail))
        elif old or new:
            checks.append(GateCheck("class-regression", False,
                                    f"per-class IoU lists differ in length ({len(old)} vs {len(new)}): classes changed"))
    return GateResult(all(c.passed for c in checks), checks)


def int8_check(figures: dict[str, Any]) -> GateCheck:
    """The int8 gate of an export (export.quantize.measure_int8's figures) as one check; its detail
    gives both figures: argmax agreement with fp32 on held-out crops and the mIoU drop."""
    from export.quantize import describe_gate

    return GateCheck("int8", bool(figures["passed"]), describe_gate(figures))
