"""bench/gpu_check.py on a machine without a GPU: it exits at once, with status 2 and a clear message."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_without_a_gpu_exits_at_once_with_a_clear_message():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, even on a machine that has one
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("bench/gpu_check.py: no CUDA GPU is visible to PyTorch")
    assert "run this on a machine with an NVIDIA GPU" in line
    assert time.monotonic() - started < 60  # torch's import is the only work
