"""onnxslim is kept only when it is faster and changes nothing; otherwise the file is left as it was."""

from __future__ import annotations

import shutil

import numpy as np
import onnx

from export.onnx_file import OrtRunner, try_onnxslim


def test_slim_kept_or_refused_by_the_rules(tiny_repository, tmp_path):
    source = tiny_repository.models["tiny_psp"].path / "model.onnx"
    probe = np.random.default_rng(0).standard_normal((1, 3, 65, 65)).astype(np.float32)
    expected = OrtRunner(source, threads=1)(probe)

    refused = tmp_path / "refused.onnx"
    shutil.copyfile(source, refused)
    report = try_onnxslim(refused, probe, threads=1, repeats=1, min_gain=1.0)  # a 100% gain is impossible
    assert report["available"] and not report["kept"] and "no measurable gain" in report["reason"]
    assert refused.read_bytes() == source.read_bytes()
    assert report["nodes"]["slim"] <= report["nodes"]["original"]
    assert report["max_abs_delta"] <= 1e-5
    assert not list(tmp_path.glob("*.slim.onnx"))

    kept = tmp_path / "kept.onnx"
    shutil.copyfile(source, kept)
    report = try_onnxslim(kept, probe, threads=1, repeats=1, min_gain=-1.0)  # any speed is enough
    assert report["kept"]
    onnx.checker.check_model(str(kept))
    assert len(onnx.load(str(kept)).graph.node) == report["nodes"]["slim"]
    np.testing.assert_allclose(OrtRunner(kept, threads=1)(probe), expected, atol=1e-5)
