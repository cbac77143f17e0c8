"""`sceneparse predict`: files and folders through the gateway's pipeline, bad files skipped and reported."""

from __future__ import annotations

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
