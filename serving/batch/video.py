"""Videos through the pipeline: decode with PyAV, segment frames, write an overlay or colour video.

`sceneparse predict clip.mp4 --out DIR --output overlay|color` writes `DIR/clip.mp4`: H.264 in
MP4, the input's size and average frame rate, one output frame per decoded input frame (audio and
other streams dropped). Each segmented frame goes through `segment` exactly as an image does, so
a frame's mask equals the mask of the same picture sent as a PNG (before the video codec's
compression: H.264 is lossy, and 4:2:0 chroma blurs the colours of class boundaries; use images
and `--output label` for exact values). `--every N` segments frames 0, N, 2N, ... and repeats the
last mask on the frames between (an overlay still blends it over each frame's own picture).

PyAV (`pip install 'sceneparse[video]'`, its wheels carry FFmpeg) is imported only here, and
only when a job has a video. The file is written under a temporary name and renamed when whole,
as every other output. A file PyAV cannot open or decode fails that input only.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from tqdm import tqdm

from serving.batch.outputs import atomic_output
from serving.rendering import color_mask, overlay
from serving.segmentation import Prediction

VIDEO_KINDS = ("overlay", "color")
OUTPUT_SUFFIX = ".mp4"
DEFAULT_RATE = Fraction(25)  # for a stream that states no frame rate at all


class VideoError(Exception):
    """A video that cannot be opened, decoded or is too large; the message says which."""


def import_av():
    try:
        import av
    except ImportError:
        raise VideoError("reading videos needs PyAV; install the video extra: pip install 'sceneparse[video]'") from None
    return av


@dataclass(frozen=True)
class VideoOutput:
    """`<name>.mp4`: the mask of kind "overlay" or "color" on every frame; `every`: segment every Nth frame."""

    kind: str
    alpha: float = 0.5
    chosen: tuple[int, ...] | None = None
    every: int = 1
    suffix: str = OUTPUT_SUFFIX

    def is_complete(self, path: Path) -> bool:
        """A renamed file is whole; one cut short afterwards (a full disk, by hand) does not open."""
        if not path.is_file():
            return False
        av = import_av()
        try:
            with av.open(str(path)) as container:
                return bool(container.streams.video)
        except (av.FFmpegError, OSError, ValueError):
            return False

    def frame(self, picture: np.ndarray, label: np.ndarray, palette: list[list[int]]) -> np.ndarray:
        """The output picture of one frame: (H, W, 3) uint8."""
        if self.kind == "overlay":
            return overlay(picture, label, palette, self.alpha, self.chosen)
        colors = color_mask(label, palette)
        if self.chosen is not None:  # no transparency in H.264: other classes are black
            keep = np.isin(label, self.chosen)
            colors = np.where(keep[..., None], colors, 0).astype(np.uint8)
        return colors

    def describe(self) -> dict[str, object]:
        described: dict[str, object] = {"kind": f"video-{self.kind}", "every": self.every}
        if self.kind == "overlay":
            described["alpha"] = self.alpha
        if self.chosen is not None:
            described["classes"] = list(self.chosen)
        return described


def _encoder(av, container, width: int, height: int, rate: Fraction):
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    stream = container.add_stream(codec, rate=rate)
    stream.width, stream.height = width, height
    # x264's 4:2:0 needs even sides; 4:4:4 takes any (fewer players show it).
    stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
    if codec == "libx264":
        stream.options = {"crf": "18", "preset": "veryfast"}
    return stream


def predict_video(
    source: str | bytes,
    output: VideoOutput,
    destination: Path,
    segment: Callable[[np.ndarray], Prediction],
    palette: list[list[int]],
    max_pixels: int,
    progress: bool = False,
    description: str = "",
) -> dict[str, int]:
    """Segment the video at `source` (a local path, or the file's bytes) into `destination`.

    `segment`: one RGB frame -> its Prediction (the job's pipeline). Returns {"frames", "segmented"}.
    Raises VideoError for a file that cannot be opened or decoded, has no video stream, or whose
    frames have more than `max_pixels` pixels; OSError when the output cannot be written.
    """
    av = import_av()
    try:
        container = av.open(io.BytesIO(source) if isinstance(source, bytes) else source, metadata_errors="ignore")
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoError(f"not a video PyAV can open: {exc}") from None
    with container:
        if not container.streams.video:
            raise VideoError("the file holds no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # decode with frame threads: the model is the slow part anyway
        width, height = stream.codec_context.width, stream.codec_context.height
        if width * height > max_pixels:
            raise VideoError(f"its frames have {width}x{height} pixels; the limit is {max_pixels}")
        rate = stream.average_rate or stream.guessed_rate or DEFAULT_RATE
        bar = tqdm(total=stream.frames or None, desc=description or "frames", unit="frame", leave=False,
                   disable=not progress, file=sys.stderr, dynamic_ncols=True)
        frames = segmented = 0
        label: np.ndarray | None = None
        with bar, atomic_output(destination) as tmp, av.open(str(tmp), "w", format="mp4") as target:
            encoder = _encoder(av, target, width, height, Fraction(rate))
            try:
                for frame in container.decode(stream):
                    picture = frame.to_ndarray(format="rgb24")
                    if picture.shape[:2] != (height, width):
                        raise VideoError(f"frame {frames} is {picture.shape[1]}x{picture.shape[0]}, "
                                         f"the stream {width}x{height}: a size change mid-stream is not supported")
                    if label is None or frames % output.every == 0:
                        label = segment(picture).label
                        segmented += 1
                    out = av.VideoFrame.from_ndarray(output.frame(picture, label, palette), format="rgb24")
                    out.pts = frames  # constant frame rate: the encoder's time base is 1/rate
                    target.mux(encoder.encode(out))
                    frames += 1
                    bar.update(1)
            except av.FFmpegError as exc:
                raise VideoError(f"cannot decode frame {frames}: {exc}") from None
            if frames == 0:
                raise VideoError("the video stream has no frame")
            target.mux(encoder.encode(None))
    return {"frames": frames, "segmented": segmented}


def check_video_outputs(kinds: Sequence[str], probabilities: bool) -> None:
    """Raise ValueError when a job with videos asks for an output a video cannot have, or PyAV is missing."""
    try:
        import_av()
    except VideoError as exc:
        raise ValueError(str(exc)) from None
    if any(kind not in VIDEO_KINDS for kind in kinds):
        raise ValueError(f"videos take --output {' or '.join(VIDEO_KINDS)}, not {', '.join(kinds)}")
    if probabilities:
        raise ValueError("--probabilities is for images only, not videos")
