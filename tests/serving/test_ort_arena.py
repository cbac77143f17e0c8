"""ONNX Runtime's CPU arena, measured in fresh processes (RSS is per process; an arena or a heap
grown by an earlier test would hide what this one does).

Each child builds a graph whose intermediate is 64 MiB (a 1x1 convolution to 256 channels over
256x256), opens it with the gateway's session options, runs it three times and reports how much
of its RSS stays once the runs are done. With the arena on, ONNX Runtime keeps the intermediate's
block for the session's life; off, it goes back to the system after each run. The gateway's own
softmax session (serving/softmax.py) is checked the same way: it may keep the transposed logits
of one call (its output goes into the caller's array), also when two threads call it at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from serving.backends.factory import create_backend
from serving.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024

CHILD = r"""
import json, sys
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

def rss():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))

what = sys.argv[1]
if what == "softmax":
    from serving import softmax
    import threading
    logits = np.ones((1, 150, 256, 256), dtype=np.float32)  # 38 MiB in, 38 out, 38 transposed between
    first = softmax.channel_softmax_nhwc(logits[:, :, :8, :8])  # the session exists before the baseline
    assert np.allclose(first, 1 / 150)
    def run():
        threads = [threading.Thread(target=softmax.channel_softmax_nhwc, args=(logits,)) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
else:
    from serving.backends.onnxruntime import OnnxRuntimeBackend
    weight = helper.make_tensor("w", TensorProto.FLOAT, [256, 3, 1, 1], [0.01] * 768)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["features"]),
         helper.make_node("ReduceMean", ["features"], ["y"], axes=[1], keepdims=1)],
        "wide", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 256, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 256, 256])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    options = OnnxRuntimeBackend(device="cpu", threads=1, cpu_arena=what == "on").session_options()
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = np.ones((1, 3, 256, 256), dtype=np.float32)
    run = lambda: session.run(None, {"x": x})
before = rss()
for _ in range(3):
    out = run()
del out
print(json.dumps({"retained": rss() - before}))
"""


def retained_bytes(what: str) -> int:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", CHILD, what], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])["retained"]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc (Linux)")
def test_the_arena_setting_decides_what_a_session_keeps_after_its_runs():
    kept_on, kept_off = retained_bytes("on"), retained_bytes("off")
    assert kept_on >= 48 * MIB, f"arena on kept only {kept_on / MIB:.0f} MiB: the setting has no effect"
    assert kept_off <= 16 * MIB, f"arena off kept {kept_off / MIB:.0f} MiB"


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc (Linux)")
def test_the_softmax_session_keeps_at_most_one_calls_transposed_logits():
    kept = retained_bytes("softmax")
    assert kept <= 48 * MIB, f"the softmax session kept {kept / MIB:.0f} MiB after its runs (one call's: 38)"


def test_the_gateway_setting_reaches_the_session_options():
    options = create_backend(Settings(ort_device="cpu")).session_options()
    assert options.enable_cpu_mem_arena == Settings.model_fields["ort_cpu_arena"].default
    # Threads stop spinning when a run ends: the softmax and stitching of its batch come next.
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    assert create_backend(Settings(ort_device="cpu", ort_cpu_arena=True)).session_options().enable_cpu_mem_arena
    assert not create_backend(Settings(ort_device="cpu", ort_cpu_arena=False)).session_options().enable_cpu_mem_arena
