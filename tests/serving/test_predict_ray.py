"""`sceneparse predict --ray`: a real local Ray instance (2 CPUs, one for this module) on the tiny model.

Every Ray job's files are compared byte for byte with the single-process run of the same inputs
(`reference`). The interrupted run, the killed actor and the bad inputs are real: the driver
stops iterating, an actor process gets SIGKILL, the files are broken.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from serving import predict
from serving.batch.inputs import collect_tasks
from serving.batch.job import ModelSpec, PredictJob, run_job
from serving.batch.outputs import FAILURES_FILE, OutputPlan
from serving.segmentation import SegmentOptions
from tests.serving.conftest import encode, scene_array

try:
    import ray
except ImportError:
    if os.environ.get("CI"):  # CI installs the dev extra, which holds the ray extra: never skip there
        raise
    pytest.skip("the ray extra is not installed", allow_module_level=True)


def _processes_of(session_dir: str) -> list[str]:
    listing = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return [line for line in listing.splitlines() if session_dir in line]


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance for the module; after it, no raylet or GCS process of it may survive."""
    # A small object store: the job's rows are a few hundred bytes each.
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
             object_store_memory=256 * 1024 * 1024)
    session_dir = ray._private.worker._global_node.get_session_dir_path()
    try:
        yield ray
    finally:
        ray.shutdown()
        deadline = time.monotonic() + 30
        while _processes_of(session_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _processes_of(session_dir), _processes_of(session_dir)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Eight small images of several formats and sizes, two of them in a subfolder."""
    folder = tmp_path_factory.mktemp("ray_inputs") / "photos"
    (folder / "street").mkdir(parents=True)
    for index in range(6):
        fmt, suffix, params = [("PNG", "png", {}), ("JPEG", "jpg", {"quality": 90}),
                               ("WEBP", "webp", {"lossless": True})][index % 3]
        image = scene_array(30 + 5 * index, 44 - 2 * index, seed=10 + index)
        (folder / f"scene{index}.{suffix}").write_bytes(encode(image, fmt, **params))
    (folder / "street" / "a.png").write_bytes(encode(scene_array(40, 50, seed=1)))
    (folder / "street" / "b.jpg").write_bytes(encode(scene_array(50, 40, seed=2), "JPEG"))
    return folder


def _argv(repository, model_name, out: Path, *inputs) -> list[str]:
    return ["--model", model_name, "--repository", str(repository.root), "--out", str(out), "--output", "label",
            "--no-progress", *map(str, inputs)]


@pytest.fixture(scope="module")
def reference(gateway_source_repository, psp_model_name, photos, tmp_path_factory) -> Path:
    """The single-process run's files."""
    out = tmp_path_factory.mktemp("reference")
    assert predict.main(_argv(gateway_source_repository, psp_model_name, out, photos)) == 0
    return out


def _pngs(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def _assert_same_files(out: Path, reference: Path) -> None:
    expected = _pngs(reference)
    assert len(expected) == 8
    assert _pngs(out) == expected  # byte for byte, and no file more or less
    assert not list(out.rglob("*.partial"))


def _job(repository, model_name, out: Path) -> PredictJob:
    meta = repository.read_metadata(model_name)
    return PredictJob(ModelSpec(str(repository.root), model_name, meta.version), out,
                      OutputPlan.for_kinds(["label"]), SegmentOptions.defaults_for(meta))


def test_ray_job_writes_the_same_bytes_as_one_process(ray_instance, gateway_source_repository, psp_model_name,
                                                      photos, reference, tmp_path, capsys):
    out = tmp_path / "out"
    argv = _argv(gateway_source_repository, psp_model_name, out, photos) + ["--ray", "--workers", "2"]
    assert predict.main(argv) == 0
    _assert_same_files(out, reference)
    assert (out / "street" / "a.png").read_bytes() == (reference / "street" / "a.png").read_bytes()
    err = capsys.readouterr().err
    assert "8 of 8 images written" in err
    table = err[err.index("worker"):]
    assert len([line for line in table.splitlines() if ":" in line.split()[0]]) == 2  # one row per actor
    assert "job (wall time)" in table


def test_every_output_kind_is_byte_identical_to_one_process(ray_instance, gateway_source_repository,
                                                             psp_model_name, photos, tmp_path):
    """COCO RLE with a class filter and the probabilities: per-image files and the job's results.json."""
    extra = ["--output", "coco", "--classes", "0,1,2", "--probabilities"]
    single, distributed = tmp_path / "single", tmp_path / "ray"
    assert predict.main(_argv(gateway_source_repository, psp_model_name, single, photos) + extra) == 0  # the last --output wins
    argv = _argv(gateway_source_repository, psp_model_name, distributed, photos) + extra
    assert predict.main([*argv, "--ray", "--workers", "2"]) == 0

    def files(folder: Path) -> dict[str, bytes]:
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
                if p.is_file() and not p.name.startswith(".")}

    expected = files(single)
    assert len([name for name in expected if name.endswith(".npz")]) == 8
    assert {"results.json", "categories.json", "street/a.rle.json"} <= set(expected)
    assert files(distributed) == expected


def test_bad_inputs_are_listed_in_failures_json_and_the_rest_is_written(ray_instance, gateway_source_repository,
                                                                        psp_model_name, photos, reference,
                                                                        tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "cut.png").write_bytes(encode(scene_array(40, 40))[:120])
    (broken / "text.jpg").write_bytes(b"not a picture at all")
    out = tmp_path / "out"
    argv = _argv(gateway_source_repository, psp_model_name, out, photos, broken) + ["--ray", "--workers", "2"]
    assert predict.main(argv) == 1
    failures = {Path(f["input"]).name: f["error"] for f in json.loads((out / FAILURES_FILE).read_text())}
    assert set(failures) == {"cut.png", "text.jpg"}
    assert "corrupt" in failures["cut.png"] and "not an image" in failures["text.jpg"]
    assert not (out / "cut.png").exists() and not (out / "text.jpg").exists()
    (out / FAILURES_FILE).unlink()
    _assert_same_files(out, reference)
    err = capsys.readouterr().err
    assert "8 of 10 images written" in err and "2 failed" in err


class Interrupt(Exception):
    """Raised from the result callback: the driver stops mid-job, as on Ctrl-C."""


def test_a_rerun_resumes_an_interrupted_job(ray_instance, gateway_source_repository, psp_model_name, photos,
                                            reference, tmp_path):
    out = tmp_path / "out"
    tasks = collect_tasks([photos])
    job = _job(gateway_source_repository, psp_model_name, out)
    from serving.batch.ray_job import RayExecutor, RayOptions

    seen = []

    def stop_after_two(result):
        seen.append(result.name)
        if len(seen) == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_job(job, tasks, RayExecutor(RayOptions(workers=2)), progress=False, on_result=stop_after_two)
    done = sorted(p.relative_to(out).with_suffix("").as_posix() for p in out.rglob("*.png"))
    assert 2 <= len(done) < 8  # what had come back, plus what the actors finished before they were stopped
    # What a crash leaves besides: a killed writer's temporary file and a file cut short by hand.
    (out / "street").mkdir(exist_ok=True)
    (out / "street" / ".a.png.0123abcd.partial").write_bytes(b"\x89PNG half")
    victim = out / f"{done[0]}.png"
    victim.write_bytes(victim.read_bytes()[:-20])

    report = run_job(job, tasks, RayExecutor(RayOptions(workers=2)), progress=False)
    # Every whole file is kept (an actor of the first run may still have finished one after the
    # listing above, hence >=); the cut one is redone, and so is everything else.
    assert len(done) - 1 <= report.skipped < 8
    assert report.written == 8 - report.skipped and report.failed == 0
    _assert_same_files(out, reference)


def test_a_killed_actor_is_replaced_and_its_images_redone(ray_instance, gateway_source_repository, psp_model_name,
                                                          photos, reference, tmp_path):
    out = tmp_path / "out"
    job = _job(gateway_source_repository, psp_model_name, out)
    from serving.batch.ray_job import RayExecutor, RayOptions

    killed = []

    def kill_the_first_worker(result):
        if not killed:
            pid = int(result.worker.rsplit(":", 1)[1])
            assert pid != os.getpid()
            os.kill(pid, signal.SIGKILL)
            killed.append(result.worker)

    report = run_job(job, collect_tasks([photos]), RayExecutor(RayOptions(workers=2)), progress=False,
                     on_result=kill_the_first_worker)
    assert report.processed == 8 and report.written == 8 and report.failed == 0
    _assert_same_files(out, reference)
    # Ray restarted the actor (a new process) and gave it the images the dead one had in flight.
    assert len(report.workers) == 3, report.table()


def test_a_pool_the_local_instance_cannot_hold_is_refused_before_the_out_folder_is_touched(
        ray_instance, gateway_source_repository, psp_model_name, photos, tmp_path, capsys):
    out = tmp_path / "out"
    argv = _argv(gateway_source_repository, psp_model_name, out, photos) + ["--ray"]
    assert predict.main([*argv, "--gpus-per-worker", "1"]) == 2
    assert "has 2 CPUs and 0 GPUs; a worker needs 1 GPU" in capsys.readouterr().err
    assert predict.main([*argv, "--workers", "3"]) == 2
    assert "3 workers of 1 CPU each do not fit" in capsys.readouterr().err
    assert not out.exists()
