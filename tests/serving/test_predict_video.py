"""`sceneparse predict` on videos (PyAV): size, frame rate and frame count kept, each frame's mask
that of the same picture as an image, --every, a broken file skipped, outputs a video cannot have."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest

from serving import predict
from serving.backends.onnxruntime import OnnxRuntimeBackend
from serving.rendering import color_mask, overlay
from serving.segmentation import SegmentOptions, segment_image
from tests.serving.conftest import encode, scene_array

av = pytest.importorskip("av")

RATE = Fraction(12)


def write_video(path, frames: list[np.ndarray], rate=RATE) -> None:
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv444p"  # odd sizes too; and colours kept close for the comparison below
        stream.options = {"crf": "10"}
        for index, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts = index
            container.mux(stream.encode(picture))
        container.mux(stream.encode(None))


def read_video(path) -> tuple[list[np.ndarray], Fraction, tuple[int, int]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return frames, stream.average_rate, (stream.codec_context.width, stream.codec_context.height)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """Six frames of 37x45 (odd sides): three different scenes, each held for two frames."""
    folder = tmp_path_factory.mktemp("videos")
    scenes = [scene_array(37, 45, seed=seed) for seed in (30, 31, 32)]
    path = folder / "clip.mp4"
    write_video(path, [scenes[i // 2] for i in range(6)])
    return path


@pytest.fixture(scope="module")
def model(gateway_source_repository, psp_model_name):
    meta = gateway_source_repository.read_metadata(psp_model_name)
    runner = OnnxRuntimeBackend(device="cpu", threads=1).open(gateway_source_repository, meta)
    return meta, runner


def run(repository, model_name, out, *inputs, extra=()) -> int:
    return predict.main(["--model", model_name, "--repository", str(repository.root), "--out", str(out),
                         *extra, *map(str, inputs)])


def expected_masks(clip, meta, runner) -> list[np.ndarray]:
    """The label of each frame as PyAV decodes it, segmented as an image."""
    frames, _, _ = read_video(clip)
    return [segment_image(frame, runner, meta, SegmentOptions.defaults_for(meta)) for frame in frames]


def test_a_color_video_keeps_size_rate_and_frames_and_shows_each_frames_mask(
        gateway_source_repository, psp_model_name, clip, model, tmp_path, capsys):
    meta, runner = model
    out = tmp_path / "out"
    assert run(gateway_source_repository, psp_model_name, out, clip, extra=["--output", "color"]) == 0
    assert "frame" in capsys.readouterr().err  # the bar over frames
    frames, rate, size = read_video(out / "clip.mp4")
    assert (len(frames), rate, size) == (6, RATE, (45, 37))
    labels = expected_masks(clip, meta, runner)
    assert len({label.tobytes() for label in labels}) == 3  # three different masks to tell apart
    for index, frame in enumerate(frames):
        errors = [np.abs(frame.astype(np.int16) - color_mask(label, meta.palette)).mean() for label in labels]
        # The frame's own mask, through a lossy codec, and clearly not another frame's.
        assert errors[index] < 6 and errors[index] == min(errors), (index, errors)


def test_every_nth_frame_is_segmented_and_an_overlay_blends_the_last_mask(
        gateway_source_repository, psp_model_name, clip, model, tmp_path):
    meta, runner = model
    out = tmp_path / "out"
    extra = ["--output", "overlay", "--alpha", "0.7", "--every", "4", "--no-progress"]
    assert run(gateway_source_repository, psp_model_name, out, clip, extra=extra) == 0
    frames, _, _ = read_video(out / "clip.mp4")
    inputs, _, _ = read_video(clip)
    labels = expected_masks(clip, meta, runner)
    assert len(frames) == 6
    for index, frame in enumerate(frames):
        shown = labels[index // 4 * 4]  # frames 0-3 carry frame 0's mask, 4-5 frame 4's
        expected = overlay(inputs[index], shown, meta.palette, 0.7)
        own = overlay(inputs[index], labels[index], meta.palette, 0.7)
        error = np.abs(frame.astype(np.int16) - expected).mean()
        assert error < 10, (index, error)  # H.264 of a noisy photo: about 5-7 here
        if index in (2, 3):  # another scene than frame 0: its own mask would look quite different
            assert np.abs(frame.astype(np.int16) - own).mean() > error + 20


def test_a_broken_video_is_skipped_and_listed_and_a_rerun_skips_the_done_one(
        gateway_source_repository, psp_model_name, clip, tmp_path, capsys):
    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / "clip.mp4").write_bytes(clip.read_bytes())
    (folder / "broken.mov").write_bytes(b"\x00\x00\x00\x18ftypqt  " + bytes(range(256)) * 4)
    (folder / "still.png").write_bytes(encode(scene_array(30, 40, seed=5)))
    out = tmp_path / "out"
    assert run(gateway_source_repository, psp_model_name, out, folder, extra=["--output", "overlay", "--no-progress"]) == 1
    failures = json.loads((out / "failures.json").read_text())
    assert [entry["name"] for entry in failures] == ["broken"] and "PyAV" in failures[0]["error"]
    assert (out / "clip.mp4").is_file() and (out / "still.png").is_file() and not (out / "broken.mp4").exists()
    assert not list(out.rglob("*.partial"))
    capsys.readouterr()
    stamp = (out / "clip.mp4").stat().st_mtime_ns
    assert run(gateway_source_repository, psp_model_name, out, folder, extra=["--output", "overlay", "--no-progress"]) == 1
    assert "2 already complete, skipped" in capsys.readouterr().err
    assert (out / "clip.mp4").stat().st_mtime_ns == stamp
    (out / "clip.mp4").write_bytes((out / "clip.mp4").read_bytes()[:200])  # cut short: redone
    assert run(gateway_source_repository, psp_model_name, out, folder, extra=["--output", "overlay", "--no-progress"]) == 1
    assert len(read_video(out / "clip.mp4")[0]) == 6


@pytest.mark.parametrize(("extra", "message"), [
    (["--output", "label"], "videos take --output overlay or color"),
    (["--output", "coco"], "videos take --output overlay or color"),
    (["--output", "color", "--probabilities"], "--probabilities is for images only"),
    (["--output", "color", "--every", "0"], "--every must be at least 1"),
])
def test_outputs_a_video_cannot_have_are_usage_errors(gateway_source_repository, psp_model_name, clip, tmp_path,
                                                       capsys, extra, message):
    assert run(gateway_source_repository, psp_model_name, tmp_path / "out", clip, extra=extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0
    assert not (tmp_path / "out").exists()
