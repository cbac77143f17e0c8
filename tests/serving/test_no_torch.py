"""`serving` works where torch cannot be imported: every module imports and the app builds and answers."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = textwrap.dedent("""
    import importlib, pkgutil, sys

    class BlockTorch:
        # A meta-path finder that makes `import torch` (and torchvision) fail as if not installed.
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "torchvision"}:
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, BlockTorch())
    try:
        import torch  # noqa: F401
        raise SystemExit("the blocker does not work")
    except ModuleNotFoundError:
        pass

    import serving
    names = [m.name for m in pkgutil.walk_packages(serving.__path__, "serving.")]
    for name in names:
        importlib.import_module(name)

    from fastapi.testclient import TestClient
    from serving.main import create_app
    from serving.settings import Settings

    app = create_app(Settings(repository=sys.argv[1], poll_interval=0, ort_threads=1))
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200, client.get("/readyz").text
        model = client.get("/v1/models").json()["models"][0]["name"]
        import io
        from PIL import Image
        buffer = io.BytesIO()
        Image.new("RGB", (40, 30), (90, 140, 200)).save(buffer, "PNG")
        response = client.post("/v1/segment", params={"model": model}, content=buffer.getvalue())
        assert response.status_code == 200, response.text
    from serving import predict  # noqa: F401
    assert not any(m.split(".")[0] in {"torch", "torchvision"} for m in sys.modules), "torch got imported"
    print("imported", len(names), "modules:", " ".join(sorted(names)))
""")


def test_serving_imports_and_serves_without_torch(gateway_source_repository):
    result = subprocess.run([sys.executable, "-c", PROBE, str(gateway_source_repository.root)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    imported = result.stdout.split("modules:")[1].split()
    for module in ("serving.main", "serving.cli", "serving.predict", "serving.backends.onnxruntime",
                   "serving.api.routes.segment", "serving.models", "serving.imaging"):
        assert module in imported
