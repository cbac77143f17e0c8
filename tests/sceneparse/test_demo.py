"""The demo model that `make serve` builds on a fresh machine: make-synthetic, train, export, serve.

Sized down (fewer, smaller images, one epoch, 33x33 crops) so it runs in seconds; the steps and
the code path are `make serve`'s own (`python -m sceneparse.demo`).
"""

from __future__ import annotations

import io

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from sceneparse.demo import build_demo, main
from serving.main import create_app
from serving.repository import ModelRepository
from serving.settings import Settings

TINY = ["epochs", "1", "train_h", "33", "train_w", "33", "test_h", "33", "test_w", "33", "base_size", "48",
        "batch_size", "4", "batch_size_val", "2"]


def test_demo_is_built_once_and_served(tmp_path):
    repository = tmp_path / "model_repository"
    assert build_demo(repository, tmp_path / "work", synthetic_args=["--train", "8", "--val", "2", "--size", "40x48",
                                                                     "--quiet"], overrides=TINY)
    repo = ModelRepository(repository)
    assert repo.list_models() == ["demo"] and repo.list_versions("demo") == [1]
    meta = repo.read_metadata("demo")
    assert meta.dataset and len(meta.classes) == 6 and meta.crop_h == 33
    # A repository with a model is left alone (what `make serve` relies on to start quickly).
    assert not build_demo(repository, tmp_path / "work2")
    assert main(["--repository", str(repository), "--workdir", str(tmp_path / "work3")]) == 0
    assert repo.list_versions("demo") == [1] and not (tmp_path / "work3").exists()

    image = Image.open(next((tmp_path / "work" / "synthetic").rglob("*.jpg"), None)
                       or next((tmp_path / "work" / "synthetic").rglob("*.png")))
    body = io.BytesIO()
    image.convert("RGB").save(body, format="PNG")
    with TestClient(create_app(Settings(repository=repository, poll_interval=0, ort_threads=1))) as client:
        assert client.get("/readyz").status_code == 200
        response = client.post("/v1/segment", params={"output": "color"}, content=body.getvalue())
        assert response.status_code == 200 and response.headers["x-model-name"] == "demo"
        mask = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))
        assert mask.shape[:2] == (image.height, image.width)
        palette = {tuple(color) for color in meta.palette}
        assert {tuple(color) for color in mask.reshape(-1, 3)} <= palette


def test_demo_build_failure_is_one_line(tmp_path, capsys):
    (tmp_path / "repo_is_a_file").write_text("not a directory")
    assert main(["--repository", str(tmp_path / "repo_is_a_file"), "--workdir", str(tmp_path / "w")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("demo: ")
