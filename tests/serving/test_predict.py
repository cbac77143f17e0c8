"""`sceneparse predict`: files and folders through the gateway's pipeline, bad files skipped and reported."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serving import predict
from serving.backends.onnxruntime import OnnxRuntimeBackend
from serving.imaging import decode_image
from serving.segmentation import SegmentOptions, segment_image
from tests.serving.conftest import encode, scene_array


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "photos"
    (folder / "street").mkdir(parents=True)
    (folder / "a.png").write_bytes(encode(scene_array(40, 50, seed=1)))
    (folder / "street" / "a.jpg").write_bytes(encode(scene_array(30, 44, seed=2), "JPEG"))
    (folder / "notes.txt").write_text("not an image, and not picked up from a folder")
    single = tmp_path / "single.webp"
    single.write_bytes(encode(scene_array(36, 36, seed=3), "WEBP", lossless=True))
    return folder, single


def test_files_and_folders_give_label_pngs_equal_to_the_pipeline(gateway_source_repository, model_name,
                                                                  inputs, tmp_path, capsys):
    folder, single = inputs
    out = tmp_path / "out"
    argv = ["--model", model_name, "--repository", str(gateway_source_repository.root), "--out", str(out),
            "--output", "label", str(folder), str(single)]
    assert predict.main(argv) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["a.png", "single.png", "street/a.png"]  # folder structure kept, no name clash
    meta = gateway_source_repository.read_metadata(model_name)
    runner = OnnxRuntimeBackend(device="cpu", threads=1).open(gateway_source_repository, meta)
    expected = segment_image(decode_image((folder / "street" / "a.jpg").read_bytes(), 10**7), runner, meta,
                             SegmentOptions.defaults_for(meta))
    assert np.array_equal(np.asarray(Image.open(out / "street" / "a.png")), expected)
    assert "3 of 3 images" in capsys.readouterr().err


@pytest.mark.parametrize("output", ["color", "overlay"])
def test_color_and_overlay_outputs(gateway_source_repository, model_name, inputs, tmp_path, output):
    _, single = inputs
    out = tmp_path / output
    argv = ["--model", model_name, "--repository", str(gateway_source_repository.root), "--out", str(out),
            "--output", output, "--no-progress", str(single)]
    assert predict.main(argv) == 0
    image = Image.open(out / "single.png")
    assert image.size == (36, 36) and image.mode == ("P" if output == "color" else "RGB")


def test_unreadable_files_are_reported_skipped_and_fail_the_run(gateway_source_repository, model_name,
                                                                  inputs, tmp_path, capsys):
    folder, _ = inputs
    (folder / "broken.png").write_bytes(encode(scene_array(40, 40))[:100])
    (folder / "fake.jpg").write_bytes(b"plain text")
    out = tmp_path / "out"
    code = predict.main(["--model", model_name, "--repository", str(gateway_source_repository.root),
                         "--out", str(out), str(folder)])
    assert code == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "fake.jpg" in err and "2 of 4 images" in err
    assert (out / "a.png").is_file() and (out / "street" / "a.png").is_file()
    assert not (out / "broken.png").exists()


def test_usage_errors_are_one_line(gateway_source_repository, model_name, tmp_path, capsys):
    root = str(gateway_source_repository.root)
    cases = [
        (["--model", "nope", "--repository", root, "--out", str(tmp_path), str(tmp_path)], "nope"),
        (["--model", model_name, "--repository", root, "--out", str(tmp_path), str(tmp_path / "missing.png")],
         "does not exist"),
        (["--model", model_name, "--repository", str(tmp_path / "none"), "--out", str(tmp_path), str(tmp_path)],
         "does not exist"),
        (["--model", model_name, "--repository", root, "--out", str(tmp_path), "--scales", "9", str(tmp_path)],
         "scales"),
        (["--model", model_name, "--repository", root, "--out", str(tmp_path), str(tmp_path)], "no image files"),
    ]
    for argv, message in cases:
        assert predict.main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err


def test_an_unwritable_output_is_reported_and_the_rest_still_written(gateway_source_repository, model_name,
                                                                    inputs, tmp_path, capsys):
    folder, _ = inputs
    out = tmp_path / "out"
    (out / "a.png").mkdir(parents=True)  # a folder where a.png's mask would go: that one write fails
    code = predict.main(["--model", model_name, "--repository", str(gateway_source_repository.root),
                         "--out", str(out), "--no-progress", str(folder)])
    assert code == 1
    err = capsys.readouterr().err
    assert "cannot write" in err and "a.png" in err
    assert (out / "street" / "a.png").is_file()
    assert not list(out.rglob(".*.partial"))


# --- resuming, the out folder, inputs ----------------------------------------------------------
def _run(repository, model_name, out, *inputs, extra=()) -> int:
    return predict.main(["--model", model_name, "--repository", str(repository.root), "--out", str(out),
                         "--output", "label", "--no-progress", *extra, *map(str, inputs)])


def test_a_rerun_skips_complete_outputs_and_redoes_cut_ones(gateway_source_repository, model_name, inputs,
                                                            tmp_path, capsys):
    folder, single = inputs
    out = tmp_path / "out"
    assert _run(gateway_source_repository, model_name, out, folder, single) == 0
    first = {p.name: p.read_bytes() for p in out.rglob("*.png")}
    assert json.loads((out / "failures.json").read_text()) == []
    capsys.readouterr()
    (out / "single.png").write_bytes(first["single.png"][:-12])  # cut short, as by a full disk
    (out / ".a.png.5eed.partial").write_bytes(b"left by a killed writer")
    stamp = (out / "a.png").stat().st_mtime_ns
    assert _run(gateway_source_repository, model_name, out, folder, single) == 0
    err = capsys.readouterr().err
    assert "3 of 3 images written" in err and "2 already complete, skipped" in err
    assert (out / "a.png").stat().st_mtime_ns == stamp  # skipped, not rewritten
    assert {p.name: p.read_bytes() for p in out.rglob("*.png")} == first
    assert not list(out.rglob("*.partial"))


def test_an_out_folder_of_another_job_is_refused_unless_overwrite(gateway_source_repository, model_name, inputs,
                                                                  tmp_path, capsys):
    _, single = inputs
    out = tmp_path / "out"
    assert _run(gateway_source_repository, model_name, out, single) == 0
    label = (out / "single.png").read_bytes()
    capsys.readouterr()
    color = ["--output", "color"]
    assert _run(gateway_source_repository, model_name, out, single, extra=color) == 2
    err = capsys.readouterr().err.strip()
    assert "another job" in err and "--overwrite" in err and err.count("\n") == 0
    assert (out / "single.png").read_bytes() == label  # untouched
    assert _run(gateway_source_repository, model_name, out, single, extra=[*color, "--overwrite"]) == 0
    assert Image.open(out / "single.png").mode == "P"


def test_one_job_per_out_folder(gateway_source_repository, model_name, inputs, tmp_path, capsys):
    from filelock import FileLock

    from serving.batch.job import LOCK_FILE

    _, single = inputs
    out = tmp_path / "out"
    out.mkdir()
    with FileLock(str(out / LOCK_FILE)):
        assert _run(gateway_source_repository, model_name, out, single) == 2
    assert "another sceneparse predict job is writing to" in capsys.readouterr().err
    assert not (out / "single.png").exists()


def test_clashing_output_names_are_refused_before_anything_runs(gateway_source_repository, model_name, tmp_path,
                                                                capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes(encode(scene_array(30, 30, seed=1)))
    (folder / "a.jpg").write_bytes(encode(scene_array(30, 30, seed=2), "JPEG"))
    out = tmp_path / "out"
    assert _run(gateway_source_repository, model_name, out, folder) == 2
    err = capsys.readouterr().err
    assert "a.jpg" in err and "a.png" in err and "both be written as a" in err
    assert not out.exists()


def test_the_out_folder_inside_an_input_folder_is_not_read(gateway_source_repository, model_name, inputs,
                                                           tmp_path, capsys):
    folder, _ = inputs
    out = folder / "masks"
    assert _run(gateway_source_repository, model_name, out, folder) == 0
    assert _run(gateway_source_repository, model_name, out, folder) == 0
    assert not (out / "masks").exists()
    assert "2 of 2 images" in capsys.readouterr().err


def test_list_files_in_the_original_format(gateway_source_repository, model_name, inputs, tmp_path):
    folder, _ = inputs
    listing = tmp_path / "val.txt"
    listing.write_text("photos/a.png labels/a.png\n\nphotos/street/a.jpg\n")
    out = tmp_path / "out"
    assert _run(gateway_source_repository, model_name, out, extra=["--list", str(listing), "--data-root",
                                                                   str(tmp_path)]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["photos/a.png", "photos/street/a.png"]
    listing.write_text("photos/a.png\nphotos/missing.png\n")
    assert _run(gateway_source_repository, model_name, tmp_path / "o2", extra=["--list", str(listing),
                                                                               "--data-root", str(tmp_path)]) == 2


def test_file_uris_read_through_pyarrow_give_the_same_files(gateway_source_repository, model_name, inputs, tmp_path):
    pytest.importorskip("pyarrow")
    folder, _ = inputs
    by_path, by_uri = tmp_path / "by_path", tmp_path / "by_uri"
    assert _run(gateway_source_repository, model_name, by_path, folder) == 0
    assert _run(gateway_source_repository, model_name, by_uri, folder.resolve().as_uri()) == 0
    assert {p.relative_to(by_path): p.read_bytes() for p in by_path.rglob("*.png")} == \
        {p.relative_to(by_uri): p.read_bytes() for p in by_uri.rglob("*.png")}
    assert _run(gateway_source_repository, model_name, tmp_path / "o", (tmp_path / "nothing").as_uri()) == 2


def test_ray_flags_without_ray_and_a_path_as_address_are_usage_errors(gateway_source_repository, model_name, inputs,
                                                                      tmp_path, capsys):
    folder, _ = inputs
    assert _run(gateway_source_repository, model_name, tmp_path / "o", folder, extra=["--workers", "2"]) == 2
    assert "--workers only apply to Ray jobs" in capsys.readouterr().err
    argv = ["--model", model_name, "--repository", str(gateway_source_repository.root), "--out", str(tmp_path / "o"),
            "--ray", str(folder)]
    assert predict.main(argv) == 2
    assert "not a Ray address" in capsys.readouterr().err


NO_RAY_PROBE = textwrap.dedent("""
    import importlib, pkgutil, sys

    class BlockRay:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"ray", "pyarrow", "torch"}:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, BlockRay())
    import serving
    for module in pkgutil.walk_packages(serving.__path__, "serving."):
        importlib.import_module(module.name)
    from serving import predict
    common = ["--model", sys.argv[2], "--repository", sys.argv[1], "--no-progress", sys.argv[3]]
    assert predict.main([*common, "--out", sys.argv[4]]) == 0
    assert predict.main([*common, "--out", sys.argv[4] + "_ray", "--ray"]) == 2
    assert not any(m.split(".")[0] in {"ray", "pyarrow", "torch"} for m in sys.modules)
""")


def test_serving_and_single_process_predict_work_without_ray(gateway_source_repository, model_name, inputs,
                                                             tmp_path):
    _, single = inputs
    result = subprocess.run([sys.executable, "-c", NO_RAY_PROBE, str(gateway_source_repository.root), model_name,
                             str(single), str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "install the ray extra: pip install 'sceneparse[ray]'" in result.stderr
    assert (tmp_path / "out" / "single.png").is_file()
