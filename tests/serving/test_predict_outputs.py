"""`sceneparse predict` outputs of issue 12: confidence, --classes, rle and coco, --probabilities.

Each is checked against the label output of the same inputs (a `--output label` run), the
pipeline's own probabilities, or pycocotools' decoder.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from serving import predict
from serving.backends.onnxruntime import OnnxRuntimeBackend
from serving.imaging import decode_image
from serving.pipeline import PipelineSpec, predict_probabilities
from serving.segmentation import SegmentOptions
from tests.serving.conftest import encode, scene_array


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    (folder / "sub").mkdir()
    (folder / "a.png").write_bytes(encode(scene_array(40, 50, seed=1)))
    (folder / "sub" / "b.jpg").write_bytes(encode(scene_array(30, 44, seed=2), "JPEG"))
    (folder / "c.webp").write_bytes(encode(scene_array(36, 36, seed=3), "WEBP", lossless=True))
    return folder


def run(repository, model, out, *inputs, extra=()) -> int:
    return predict.main(["--model", model, "--repository", str(repository.root), "--out", str(out), "--no-progress",
                         *extra, *map(str, inputs)])


def pngs(folder, suffix=".png") -> dict[str, np.ndarray]:
    return {p.relative_to(folder).as_posix()[: -len(suffix)]: np.asarray(Image.open(p))
            for p in sorted(folder.rglob(f"*{suffix}"))}


@pytest.fixture(scope="module")
def labels(gateway_source_repository, psp_model_name, photos, tmp_path_factory) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("labels")
    assert run(gateway_source_repository, psp_model_name, out, photos, extra=["--output", "label"]) == 0
    found = pngs(out)
    assert set(found) == {"a", "sub/b", "c"}
    return found


def decode_rle(rle) -> np.ndarray:
    return coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def test_confidence_pngs_are_the_winning_probabilities(gateway_source_repository, psp_model_name, photos, labels,
                                                       tmp_path):
    out = tmp_path / "out"
    assert run(gateway_source_repository, psp_model_name, out, photos, extra=["--output", "confidence"]) == 0
    found = pngs(out)
    meta = gateway_source_repository.read_metadata(psp_model_name)
    runner = OnnxRuntimeBackend(device="cpu", threads=1).open(gateway_source_repository, meta)
    image = decode_image((photos / "sub" / "b.jpg").read_bytes(), 10**7)
    probs = predict_probabilities(image, runner, PipelineSpec.from_metadata(meta),
                                  SegmentOptions.defaults_for(meta).pipeline_options())
    assert np.array_equal(probs.argmax(axis=2), labels["sub/b"])
    assert np.array_equal(found["sub/b"], np.rint(probs.max(axis=2) * 255).astype(np.uint8))
    assert all(found[name].shape == labels[name].shape for name in labels)


def test_classes_filter_the_label_pngs(gateway_source_repository, psp_model_name, photos, labels, tmp_path):
    meta = gateway_source_repository.read_metadata(psp_model_name)
    present = np.unique(np.concatenate([label.ravel() for label in labels.values()]))
    chosen = [int(present[0]), int(present[-1])]
    out = tmp_path / "out"
    extra = ["--output", "label", "--classes", f"{meta.classes[chosen[0]]},{chosen[1]}"]
    assert run(gateway_source_repository, psp_model_name, out, photos, extra=extra) == 0
    for name, filtered in pngs(out).items():
        assert np.array_equal(filtered, np.where(np.isin(labels[name], chosen), labels[name], 255)), name


def test_unknown_classes_are_a_one_line_usage_error(gateway_source_repository, psp_model_name, photos, tmp_path,
                                                    capsys):
    meta = gateway_source_repository.read_metadata(psp_model_name)
    assert run(gateway_source_repository, psp_model_name, tmp_path / "out", photos,
               extra=["--classes", "road,99"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown class 'road', '99'" in err
    assert f"0 {meta.classes[0]}" in err
    assert not (tmp_path / "out").exists()


def test_coco_results_decode_to_the_label_maps(gateway_source_repository, psp_model_name, photos, labels, tmp_path):
    out = tmp_path / "out"
    assert run(gateway_source_repository, psp_model_name, out, photos, extra=["--output", "coco"]) == 0
    meta = gateway_source_repository.read_metadata(psp_model_name)
    categories = json.loads((out / "categories.json").read_text())
    assert [(c["id"], c["name"], c["color"]) for c in categories] == \
        [(i, name, list(meta.palette[i])) for i, name in enumerate(meta.classes)]
    results = json.loads((out / "results.json").read_text())
    assert {entry["file_name"] for entry in results} == {"a.png", "sub/b.jpg", "c.webp"}
    ids = {entry["file_name"]: entry["image_id"] for entry in results}
    assert sorted(ids.values()) == [1, 2, 3] and ids["a.png"] == 1  # the job's input order
    for file_name, image_id in ids.items():
        label = labels[file_name.rsplit(".", 1)[0]]
        entries = [entry for entry in results if entry["image_id"] == image_id]
        assert sorted(entry["category_id"] for entry in entries) == np.unique(label).tolist()
        covered = np.zeros(label.shape, dtype=np.int32)
        for entry in entries:
            mask = decode_rle(entry["segmentation"])
            assert np.array_equal(mask, label == entry["category_id"])
            covered += mask
        assert (covered == 1).all()
    # Each image's own file is the gateway's rle document.
    document = json.loads((out / "sub" / "b.rle.json").read_text())
    assert (document["model"], document["height"], document["width"]) == (psp_model_name, 30, 44)
    assert [entry["rle"] for entry in document["classes"]] == \
        [entry["segmentation"] for entry in results if entry["image_id"] == ids["sub/b.jpg"]]


def test_a_resumed_coco_job_writes_the_same_results(gateway_source_repository, psp_model_name, photos, tmp_path):
    out = tmp_path / "out"
    assert run(gateway_source_repository, psp_model_name, out, photos, extra=["--output", "coco"]) == 0
    first = (out / "results.json").read_bytes()
    (out / "c.rle.json").write_text('{"cut": ')  # cut short: redone; the two others are skipped
    (out / "results.json").unlink()
    assert run(gateway_source_repository, psp_model_name, out, photos, extra=["--output", "coco"]) == 0
    assert (out / "results.json").read_bytes() == first


def test_rle_with_classes_lists_only_those(gateway_source_repository, psp_model_name, photos, labels, tmp_path):
    out = tmp_path / "out"
    assert run(gateway_source_repository, psp_model_name, out, photos, extra=["--output", "rle", "--classes", "0"]) == 0
    assert not (out / "results.json").exists()
    document = json.loads((out / "a.rle.json").read_text())
    assert [entry["id"] for entry in document["classes"]] == ([0] if (labels["a"] == 0).any() else [])
    for entry in document["classes"]:
        assert np.array_equal(decode_rle(entry["rle"]), labels["a"] == 0)


def test_probabilities_npz_beside_each_output(gateway_source_repository, psp_model_name, photos, labels, tmp_path):
    out = tmp_path / "out"
    extra = ["--output", "confidence", "--probabilities"]
    assert run(gateway_source_repository, psp_model_name, out, photos, extra=extra) == 0
    confidence = pngs(out)
    meta = gateway_source_repository.read_metadata(psp_model_name)
    for name, label in labels.items():
        with np.load(out / f"{name}.npz") as archive:
            assert archive.files == ["probabilities"]
            probs = archive["probabilities"]
        assert probs.dtype == np.float16 and probs.shape == (meta.num_classes, *label.shape)
        assert np.allclose(probs.astype(np.float32).sum(axis=0), 1.0, atol=5e-3)
        winner = np.take_along_axis(probs, label[None].astype(np.intp), axis=0)[0]
        assert (winner == probs.max(axis=0)).all()  # the label is the argmax (float16 ties allowed)
        assert np.abs(winner.astype(np.float32) * 255 - confidence[name]).max() <= 0.5 + 255 * 2**-11
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.npz")) == ["a.npz", "c.npz", "sub/b.npz"]


def test_a_cut_npz_is_redone_on_resume(gateway_source_repository, psp_model_name, photos, tmp_path, capsys):
    out = tmp_path / "out"
    extra = ["--output", "label", "--probabilities"]
    assert run(gateway_source_repository, psp_model_name, out, photos, extra=extra) == 0
    whole = (out / "a.npz").read_bytes()
    (out / "a.npz").write_bytes(whole[: len(whole) // 2])
    capsys.readouterr()
    assert run(gateway_source_repository, psp_model_name, out, photos, extra=extra) == 0
    assert "2 already complete, skipped" in capsys.readouterr().err
    assert (out / "a.npz").read_bytes() == whole  # and byte-identical: the archive has no timestamps
