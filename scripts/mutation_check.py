"""Break one line on purpose, run the tests that should notice, report whether they did.

    python scripts/mutation_check.py                 # every mutation (about 15-25 min on 2 cores)
    python scripts/mutation_check.py key-startswith loss-negated   # some, by id
    python scripts/mutation_check.py --list          # ids, files and the tests each one runs
    python scripts/mutation_check.py --stale         # does every mutation still apply? (seconds)

A hand-picked list (MUTATIONS below) of regressions that matter: the rows of issue 16's table and
more in serving/api/deps.py, serving/pipeline.py, training/metrics.py and serving/repository.py.
Each mutation replaces exact text in one file of a temporary copy of the working tree (tracked
and untracked, not ignored files), runs only its own tests there with pytest -x, and puts the file
back; the working tree itself is never written. A mutation whose text is no longer in its file is
reported as `stale` (the code moved: update the entry), not silently skipped.

Prints a table: id, file, result (caught / SURVIVED / stale / error), the first failing test,
seconds; exits 1 when a mutation survived or went stale. First the tests of the chosen mutations
run once unmutated: a failing baseline would make every mutation look caught.
Not part of CI (each mutation is its own pytest run); see CONTRIBUTING.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    id: str
    file: str
    edits: tuple[tuple[str, str], ...]  # (exact text, replacement); each text must occur once
    tests: tuple[str, ...]  # pytest node ids (files or file::test)
    what: str


AUTH = "tests/serving/test_auth_routes.py"
LIMITS = "tests/serving/test_limit_boundaries.py"
LEARNS = "tests/training/test_training_learns.py"
IGNORE = "tests/training/test_ignore_label.py"
VERSIONS = "tests/retraining/test_many_versions.py"
GEOMETRY = "tests/serving/test_pipeline_geometry.py"
ESCAPES = "tests/serving/test_repository_escapes.py"

MUTATIONS = [
    # --- issue 16's table -------------------------------------------------------------------------
    Mutation("auth-one-route", "serving/api/routes/models.py",
             (('router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=API_KEY_DEPENDENCIES)',
               'router = APIRouter(prefix="/v1/models", tags=["models"])'),
              ('@router.get("", summary="The served models")',
               '@router.get("", summary="The served models", dependencies=API_KEY_DEPENDENCIES)')),
             (f"{AUTH}::test_every_route_checks_the_key",),
             "API-key check on GET /v1/models only, not on the rest of its router"),
    Mutation("key-startswith", "serving/api/deps.py",
             (("found |= hmac.compare_digest(key.encode(), candidate.encode())",
               "found |= candidate.startswith(key)"),),
             (f"{AUTH}::test_near_misses_of_a_key_are_refused",), "key comparison by prefix"),
    Mutation("body-limit-quarter", "serving/api/middleware.py",
             (("self.max_bytes = max_bytes\n", "self.max_bytes = max_bytes // 4\n"),),
             (f"{LIMITS}::test_a_body_of_exactly_max_body_bytes_is_accepted_one_byte_more_is_413",),
             "body limit enforced at a quarter of its setting"),
    Mutation("pixel-limit-quarter", "serving/imaging.py",
             (('        raise InvalidImage(f"the image has no pixels ({width}x{height})")\n    if width * height > max_pixels:',
               '        raise InvalidImage(f"the image has no pixels ({width}x{height})")\n'
               '    if width * height > max_pixels // 4:'),),
             (f"{LIMITS}::test_an_image_of_exactly_max_pixels_is_accepted_one_pixel_more_is_413",),
             "pixel limit enforced at a quarter of its setting"),
    Mutation("loss-negated", "training/train.py",
             (("scaler.scale(loss).backward()", "scaler.scale(-loss).backward()"),),
             (LEARNS,), "training ascends the loss"),
    Mutation("ignore-index-0", "training/train.py",
             (("nn.CrossEntropyLoss(ignore_index=int(cfg.ignore_label))", "nn.CrossEntropyLoss(ignore_index=0)"),),
             (LEARNS,), "the loss ignores class 0 instead of the ignore label"),
    Mutation("metrics-ignore-255", "training/metrics.py",
             (("    pred = pred.reshape(-1).astype(np.int64, copy=False)\n"
               "    target = target.reshape(-1).astype(np.int64, copy=False)\n"
               "    keep = target != ignore_index\n",
               "    pred = pred.reshape(-1).astype(np.int64, copy=False)\n"
               "    target = target.reshape(-1).astype(np.int64, copy=False)\n"
               "    keep = target != 255\n"),),
             (IGNORE,), "ignore label hard-coded to 255 in the metrics (numpy)"),
    Mutation("version-string-order", "serving/repository_scan.py",
             (("        return sorted(self.metadata)\n", "        return sorted(self.metadata, key=str)\n"),),
             (VERSIONS,), "newest version chosen by string order (10 before 9)"),
    Mutation("flip-not-mirrored-back", "serving/pipeline.py",
             (("p = probs[i][:, ::-1] if flipped else probs[i]", "p = probs[i]"),),
             ("tests/serving/test_pipeline.py::test_matches_the_original_protocol",),
             "flipped windows averaged without mirroring back"),
    Mutation("ignored-counted-correct", "training/metrics.py",
             (("    pred, target = pred[keep], target[keep]\n    bad = (target < 0) | (target >= num_classes)\n    if bad.any():",
               "    pred, target = np.where(keep, pred, 0), np.where(keep, target, 0)\n"
               "    bad = (target < 0) | (target >= num_classes)\n    if bad.any():"),),
             ("tests/training/test_metrics.py",), "ignored pixels scored as correct class-0 pixels"),
    Mutation("syncbn-no-backward-allreduce", "training/syncbn.py",
             (("            dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=ctx.group)\n", ""),),
             ("tests/training/test_syncbn.py",), "SyncBN backward without its all-reduce"),
    # --- the other limits at their boundaries ------------------------------------------------------
    Mutation("body-limit-off-by-one", "serving/api/middleware.py",
             (("                if received > self.max_bytes:\n", "                if received >= self.max_bytes:\n"),),
             (f"{LIMITS}::test_a_body_of_exactly_max_body_bytes_is_accepted_one_byte_more_is_413",),
             "a chunked body of exactly max_body_bytes refused"),
    Mutation("max-side-off-by-one", "serving/api/routes/segment.py",
             (("    if max_side > settings.max_side_limit:\n", "    if max_side >= settings.max_side_limit:\n"),),
             (f"{LIMITS}::test_max_side_at_the_limit_is_accepted_one_over_is_422",), "max_side_limit itself refused"),
    Mutation("queue-off-by-one", "serving/workers.py",
             (("            if self._admitted >= self.capacity:\n", "            if self._admitted > self.capacity:\n"),),
             (f"{LIMITS}::test_queue_size_requests_wait_one_more_is_503",), "one request more than queue_size waits"),
    Mutation("cost-limit-off-by-one", "serving/api/routes/segment.py",
             (("    if cost.total > limit:\n", "    if cost.total >= limit:\n"),),
             (f"{LIMITS}::test_a_request_costing_exactly_max_request_cost_mb_is_accepted_one_byte_more_is_413",),
             "a request costing exactly max_request_cost_mb refused"),
    Mutation("budget-off-by-one", "serving/workers.py",
             (("self._admitted_cost + cost > self.budget", "self._admitted_cost + cost >= self.budget"),),
             (f"{LIMITS}::test_requests_costing_exactly_the_budget_are_admitted_one_byte_more_is_503",),
             "admitted requests may not reach the budget exactly"),
    # --- serving/api/deps.py ----------------------------------------------------------------------
    Mutation("admin-takes-user-keys", "serving/api/deps.py",
             (("        if _matches(key, settings.admin_keys):\n",
               "        if _matches(key, settings.admin_keys + settings.api_keys):\n"),),
             (f"{AUTH}::test_every_route_checks_the_key",), "a user key opens the admin routes"),
    Mutation("first-of-two-keys", "serving/api/deps.py",
             (("    if len(keys) > 1:\n", "    if False:\n"),),
             (f"{AUTH}::test_two_key_headers_are_refused",), "of two key headers, the first is used"),
    Mutation("key-stripped", "serving/api/deps.py",
             (("            keys.append(credentials)\n", "            keys.append(credentials.strip())\n"),),
             (f"{AUTH}::test_near_misses_of_a_key_are_refused",), "bearer tokens stripped of whitespace"),
    Mutation("key-case-folded", "serving/api/deps.py",
             (("hmac.compare_digest(key.encode(), candidate.encode())",
               "hmac.compare_digest(key.lower().encode(), candidate.lower().encode())"),),
             (f"{AUTH}::test_near_misses_of_a_key_are_refused",), "keys compared case-insensitively"),
    Mutation("basic-opens-the-api", "serving/api/deps.py",
             (('presented_keys(request, allow_basic=scheme == "Basic")', "presented_keys(request, allow_basic=True)"),),
             ("tests/serving/test_auth.py::test_the_browser_login_never_opens_the_api",),
             "the browser's cached Basic login opens the API"),
    Mutation("auth-always-off", "serving/api/deps.py",
             (("    if not settings.auth_enabled:\n", "    if True:\n"),),
             (f"{AUTH}::test_every_route_checks_the_key",), "keys configured but never checked"),
    Mutation("admin-user-key-401", "serving/api/deps.py",
             (('            raise ApiError(403, "forbidden", "this route needs an admin key")\n',
               '            raise ApiError(401, "unauthorized", "this route needs an admin key")\n'),),
             (f"{AUTH}::test_every_route_checks_the_key",), "a user key on an admin route is 401, not 403"),
    Mutation("empty-key-matches", "serving/api/deps.py",
             (("    if not key:\n        return False\n", "    if not key:\n        return bool(keys)\n"),),
             (f"{AUTH}::test_near_misses_of_a_key_are_refused",), "an empty key header passes"),
    # --- serving/pipeline.py ----------------------------------------------------------------------
    Mutation("window-stride-full-crop", "serving/pipeline.py",
             (("    stride_h = math.ceil(crop_h * stride_rate)\n", "    stride_h = crop_h\n"),),
             ("tests/serving/test_pipeline.py",), "windows no longer overlap vertically"),
    Mutation("scales-averaged-wrong", "serving/stitching.py",
             (("            band /= len(self.levels)\n", "            band /= max(1, len(self.levels) - 1)\n"),),
             ("tests/serving/test_pipeline.py::test_matches_the_original_protocol",),
             "multi-scale sum divided by the wrong count"),
    Mutation("max-scales-off-by-one", "serving/pipeline.py",
             (("if not 1 <= len(scales) <= allowed_max:", "if not 1 <= len(scales) < allowed_max:"),),
             (f"{LIMITS}::test_max_scales_scales_are_accepted_one_more_is_422",), "max_scales enforced at one less"),
    Mutation("scale-range-open", "serving/pipeline.py",
             (("bad = [s for s in scales if not 0.25 <= s <= 2.0]", "bad = [s for s in scales if not 0.25 < s < 2.0]"),),
             (f"{LIMITS}::test_max_scales_scales_are_accepted_one_more_is_422",), "the scale range loses its ends"),
    Mutation("scaled-size-truncates", "serving/pipeline.py",
             (("    long_size = round(scale * base_size)\n", "    long_size = int(scale * base_size)\n"),),
             ("tests/serving/test_pipeline.py", GEOMETRY), "the scaled long side truncated instead of rounded"),
    Mutation("short-side-truncates", "serving/pipeline.py",
             (("    return max(1, round(long_size / float(w) * h)), long_size\n",
               "    return max(1, int(long_size / float(w) * h)), long_size\n"),),
             ("tests/serving/test_pipeline.py", GEOMETRY), "the scaled short side truncated instead of rounded"),
    Mutation("pad-bottom-right-only", "serving/pipeline.py",
             (("        top, left = pad_h // 2, pad_w // 2\n", "        top, left = 0, 0\n"),),
             ("tests/serving/test_pipeline.py::test_matches_the_original_protocol",),
             "small images padded at the bottom/right only, not centred"),
    Mutation("mean-in-bgr", "serving/pipeline.py",
             (("    mean = np.asarray(spec.mean, dtype=np.float32)\n", "    mean = np.asarray(spec.mean[::-1], dtype=np.float32)\n"),),
             ("tests/serving/test_pipeline.py::test_matches_the_original_protocol",), "mean subtracted in BGR order"),
    Mutation("flip-counted-twice", "serving/pipeline.py",
             (("            if not flipped:\n                counts", "            if True:\n                counts"),),
             ("tests/serving/test_pipeline.py::test_matches_the_original_protocol",),
             "a window and its flip both counted, then divided by two again"),
    Mutation("resize-corner-aligned", "serving/resize.py",
             (("        src = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5\n",
               "        src = np.arange(out_size, dtype=np.float64) * (in_size / out_size)\n"),),
             ("tests/serving/test_pipeline.py", "tests/training/test_evaluate.py"),
             "image resize without half-pixel centres (not cv2.INTER_LINEAR)"),
    # --- training/metrics.py ----------------------------------------------------------------------
    Mutation("union-without-intersection", "training/metrics.py",
             (("    area_union = area_pred + area_target - area_intersection\n"
               "    return area_intersection.astype(np.int64)",
               "    area_union = area_pred + area_target\n    return area_intersection.astype(np.int64)"),),
             ("tests/training/test_metrics.py",), "union double-counts the intersection"),
    Mutation("torch-metrics-ignore-255", "training/metrics.py",
             (("    pred = pred.reshape(-1).long()\n    target = target.reshape(-1).long()\n    keep = target != ignore_index\n",
               "    pred = pred.reshape(-1).long()\n    target = target.reshape(-1).long()\n    keep = target != 255\n"),),
             (IGNORE,), "ignore label hard-coded to 255 in the torch metrics (training validation)"),
    Mutation("absent-classes-count-zero", "training/metrics.py",
             (("    defined = values[~np.isnan(values)]\n", "    defined = np.nan_to_num(values)\n"),),
             ("tests/training/test_metrics.py",), "the exclude policy averages absent classes as 0"),
    Mutation("aacc-over-union", "training/metrics.py",
             (("all_accuracy = float(intersection.sum() / total_target)",
               "all_accuracy = float(intersection.sum() / max(int(union.sum()), 1))"),),
             ("tests/training/test_metrics.py",), "aAcc divided by the union"),
    Mutation("zero-policy-is-nan", "training/metrics.py",
             (('    out = np.full(numerator.shape, np.nan if absent == "exclude" else 0.0, dtype=np.float64)\n',
               '    out = np.full(numerator.shape, np.nan, dtype=np.float64)\n'),),
             ("tests/training/test_metrics.py",), "the original's absent-as-0 policy averages like exclude"),
    Mutation("out-of-range-prediction-correct", "training/metrics.py",
             (("    area_intersection = np.bincount(target[pred == target], minlength=num_classes)\n",
               "    area_intersection = np.bincount(target[(pred == target) | (pred >= num_classes)], minlength=num_classes)\n"),),
             ("tests/training/test_metrics.py",), "a prediction outside the classes counted as right"),
    # --- serving/repository.py and retraining/versions.py -------------------------------------------
    Mutation("newest-by-string", "serving/repository_scan.py",
             (("    newest = max(scan.metadata, default=None)\n", "    newest = max(scan.metadata, key=str, default=None)\n"),),
             (VERSIONS,), "served version: the newest by string order"),
    Mutation("pin-ignored", "serving/repository_scan.py",
             (("        scan.served = newest if scan.pinned is None else scan.pinned\n", "        scan.served = newest\n"),),
             (VERSIONS, "tests/serving/test_repository.py::test_pinned_version_wins_until_unpinned"),
             "a pinned (rolled back) version is not served"),
    Mutation("next-version-by-count", "serving/repository.py",
             (("        return max(used, default=0) + 1\n", "        return len(used) + 1\n"),),
             (VERSIONS,), "after retention, a new version reuses an old number"),
    Mutation("name-escapes", "serving/model_metadata.py",
             (('not _NAME_RE.match(name) or ".." in name', "not _NAME_RE.match(name)"),),
             ("tests/serving/test_repository.py::test_unsafe_names_are_refused",), "'..' allowed in model names"),
    Mutation("metadata-not-validated", "serving/model_metadata.py",
             (("        meta.validate(source)\n", "        pass\n"),),
             ("tests/serving/test_repository.py", "tests/serving/test_repository_scan.py"),
             "a version with invalid metadata is accepted"),
    Mutation("version-overwritten", "serving/repository.py",
             (("                if (directory / str(number)).exists():\n", "                if False:\n"),),
             ("tests/serving/test_repository.py",), "an explicit version number may overwrite a version"),
    Mutation("tensor-contract-unchecked", "serving/repository.py",
             (("        if changed:\n", "        if False:\n"),),
             ("tests/serving/test_repository.py",), "a version changing the shared config.pbtxt contract is published"),
    Mutation("model-file-escapes", "serving/repository.py",
             (("        if path.parent != self.version_dir(name, version).resolve():\n", "        if False:\n"),),
             (ESCAPES,), "a metadata file name may point outside its version directory"),
    Mutation("model-dir-escapes", "serving/repository.py",
             (("        if path.parent != self.root:\n", "        if False:\n"),),
             (ESCAPES,), "a model directory may resolve outside the repository"),
    Mutation("rollback-by-string", "retraining/versions.py",
             (("        older = [v for v in versions if v < served]\n",
               "        older = sorted((v for v in versions if v < served), key=str)\n"),),
             (VERSIONS,), "rollback goes to the 'newest' older version by string order"),
    Mutation("retention-by-string", "retraining/versions.py",
             (("        keep = set(versions[-keep_last:]) | {served}\n",
               "        keep = set(sorted(versions, key=str)[-keep_last:]) | {served}\n"),),
             (VERSIONS,), "retention keeps the newest by string order"),
    # --- other ignore labels ----------------------------------------------------------------------
    Mutation("crop-pads-255", "training/data/transforms.py",
             (("cv2.BORDER_CONSTANT, value=self.ignore_label)", "cv2.BORDER_CONSTANT, value=255)"),),
             (IGNORE,), "Crop pads the label with 255 whatever the setting"),
    Mutation("rotate-fills-255", "training/data/transforms.py",
             (("borderMode=cv2.BORDER_CONSTANT, borderValue=self.ignore_label)",
               "borderMode=cv2.BORDER_CONSTANT, borderValue=255)"),),
             (IGNORE,), "RandRotate fills the label's corners with 255 whatever the setting"),
    Mutation("evaluation-ignore-255", "training/evaluate.py",
             (("            cfg.ignore_label,\n", "            255,\n"),),
             (IGNORE,), "sceneparse test scores with 255 whatever the config says"),
    Mutation("void-stays-255", "training/datasets/label_maps.py",
             (("        mapped[mapped == IGNORE_LABEL] = ignore_label\n", "        pass\n"),),
             (f"{IGNORE}::test_a_mapped_datasets_void_becomes_the_configured_ignore_label",),
             "a mapped dataset's void pixels stay 255 whatever the ignore label"),
    Mutation("training-mapping-ignore-255", "training/train.py",
             (("dataset_label_mapping(cfg.dataset, cfg.ignore_label)", "dataset_label_mapping(cfg.dataset)"),),
             (f"{IGNORE}::test_a_mapped_datasets_void_becomes_the_configured_ignore_label",),
             "training maps void to 255 whatever the ignore label"),
    Mutation("evaluation-mapping-ignore-255", "training/evaluate.py",
             (("            label_mapping(cfg.dataset, cfg.ignore_label),\n", "            label_mapping(cfg.dataset),\n"),),
             (f"{IGNORE}::test_a_mapped_datasets_void_becomes_the_configured_ignore_label",),
             "sceneparse test maps void to 255 whatever the ignore label"),
    Mutation("train-validation-ignore-255", "training/train.py",
             (("evaluate(model_without_ddp, val_loader, cfg.classes, cfg.ignore_label, device",
               "evaluate(model_without_ddp, val_loader, cfg.classes, 255, device"),),
             (IGNORE,), "per-epoch validation scores with 255 whatever the config says"),
]


def copy_tree(destination: Path) -> None:
    """The working tree as git sees it (tracked and untracked, not ignored files) into `destination`."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file() and not source.is_symlink():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    cache = ROOT / ".cache"  # the Triton binary and Chromium: big, read-only for the tests
    if cache.exists():
        (destination / ".cache").symlink_to(cache.resolve())


def run_pytest(tree: Path, tests: list[str], timeout: float) -> tuple[int, str, float]:
    env = dict(os.environ, PYTHONPATH=str(tree) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONDONTWRITEBYTECODE="1")
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider", *tests]
    tick = time.monotonic()
    try:
        done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return -1, str(exc.stdout or "")[-4000:], time.monotonic() - tick
    return done.returncode, done.stdout + done.stderr, time.monotonic() - tick


def first_failure(output: str) -> str:
    # "FAILED tests/x.py::test_y[an id with spaces] - AssertionError: ..."
    found = re.search(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", output, re.M)
    return found.group(1) if found else ""


def mutate(mutation: Mutation, text: str) -> tuple[str | None, str]:
    """(the mutated text, "") or (None, why it no longer applies)."""
    for before, after in mutation.edits:
        if text.count(before) != 1:
            return None, f"text found {text.count(before)} times: {before.strip()[:60]!r}"
        text = text.replace(before, after)
    return text, ""


def stale_reason(mutation: Mutation, tree: Path) -> str:
    path = tree / mutation.file
    if not path.is_file():
        return f"{mutation.file} is gone"
    return mutate(mutation, path.read_text())[1]


def check(mutation: Mutation, tree: Path, timeout: float) -> tuple[str, str, float]:
    """(result, first failing test or a note, seconds) of one mutation on the copy at `tree`."""
    if problem := stale_reason(mutation, tree):
        return "stale", problem, 0.0
    path = tree / mutation.file
    original = path.read_text()
    mutated, _ = mutate(mutation, original)
    path.write_text(mutated)
    try:
        code, output, seconds = run_pytest(tree, list(mutation.tests), timeout)
    finally:
        path.write_text(original)
    if code == 0:
        return "SURVIVED", "", seconds
    if code == 1:
        return "caught", first_failure(output), seconds
    if code == -1:
        return "error", f"timed out after {timeout:.0f} s", seconds
    return "error", f"pytest exit {code}: {output.strip().splitlines()[-1] if output.strip() else ''}", seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ids", nargs="*", help="mutation ids to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--stale", action="store_true", help="only check that every mutation still applies")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per pytest run")
    args = parser.parse_args(argv)
    known = {m.id: m for m in MUTATIONS}
    unknown = [i for i in args.ids if i not in known]
    if unknown:
        parser.error(f"unknown mutation id(s) {', '.join(unknown)}; see --list")
    chosen = [known[i] for i in args.ids] if args.ids else MUTATIONS
    if args.list:
        for m in chosen:
            print(f"{m.id:30} {m.file:28} {m.what}\n{'':30} tests: {' '.join(m.tests)}")
        return 0
    if args.stale:
        stale = [(m.id, problem) for m in chosen if (problem := stale_reason(m, ROOT))]
        for mutation_id, problem in stale:
            print(f"{mutation_id}: stale: {problem}")
        print(f"{len(chosen) - len(stale)} of {len(chosen)} apply")
        return 1 if stale else 0
    with tempfile.TemporaryDirectory(prefix="sceneparse-mutation-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        if not args.no_baseline:
            tests = sorted({t for m in chosen for t in m.tests})
            print(f"baseline: {len(tests)} test selections, unmutated ...", file=sys.stderr)
            code, output, seconds = run_pytest(tree, tests, args.timeout * 2)
            if code != 0:
                print(output[-4000:], file=sys.stderr)
                print(f"the unmutated tests fail (exit {code}): fix them first", file=sys.stderr)
                return 2
            print(f"baseline passed in {seconds:.0f} s", file=sys.stderr)
        rows = []
        for mutation in tqdm(chosen, desc="mutations", unit="mutation", file=sys.stderr, dynamic_ncols=True):
            rows.append((mutation, *check(mutation, tree, args.timeout)))
    print(f"| mutation | file | what | result | first failing test | s |\n|{'---|' * 6}")
    for mutation, result, detail, seconds in rows:
        print(f"| {mutation.id} | {mutation.file} | {mutation.what} | {result} | {detail} | {seconds:.0f} |")
    bad = [m.id for m, result, _, _ in rows if result in {"SURVIVED", "stale", "error"}]
    print(f"\n{len(rows) - len(bad)} of {len(rows)} caught" + (f"; not caught: {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
