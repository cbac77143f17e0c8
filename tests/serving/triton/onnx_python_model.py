"""Triton python-backend model that runs a version's exported model.onnx with ONNX Runtime.

The test harness copies this file as `<harness>/<name>/<version>/model.py`, next to a link to
the same model.onnx that export published. It exists only because the tritonserver binary of the
nvidia-pytriton wheel has no onnxruntime backend; a production Triton serves model.onnx directly.

It runs inside Triton's python stub, which uses the system's libpython and ignores PYTHONPATH, so
the project's site-packages come from SCENEPARSE_TRITON_SITE_PACKAGES (os.pathsep-separated),
set by the harness, before numpy and onnxruntime are imported.
"""

import ctypes
import json
import os
import sys

for _path in reversed(os.environ.get("SCENEPARSE_TRITON_SITE_PACKAGES", "").split(os.pathsep)):
    if _path and _path not in sys.path:
        sys.path.insert(0, _path)

import numpy as np  # noqa: E402 - needs the site-packages above
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

_USED_DLTENSOR = ctypes.c_char_p(b"used_dltensor")  # lives as long as the module
ctypes.pythonapi.PyCapsule_SetName.argtypes = [ctypes.py_object, ctypes.c_char_p]


class TritonPythonModel:
    """One ONNX Runtime CPU session per model instance; every request is one session.run."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        options = ort.SessionOptions()
        # The test machines have 2 shared cores; the harness picks the thread count.
        threads = int(os.environ.get("SCENEPARSE_TRITON_ORT_THREADS", "1"))
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            os.path.join(version_dir, _onnx_file(version_dir)), options, providers=["CPUExecutionProvider"]
        )

    def execute(self, requests):
        responses = []
        for request in requests:
            # DLPack, not as_numpy()/Tensor(ndarray): the stub's pybind11 predates numpy 2's
            # array layout and gets element sizes wrong with the project's numpy 2.
            batch = np.from_dlpack(pb_utils.get_input_tensor_by_name(request, self.input_name))
            try:
                (logits,) = self.session.run([self.output_name], {self.input_name: batch})
            except Exception as exc:  # reported to the client as this request's error
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"onnxruntime: {exc}")))
                continue
            tensor = _tensor_from_numpy(self.output_name, np.ascontiguousarray(logits))
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses

    def finalize(self):
        self.session = None


def _tensor_from_numpy(name, array):
    """pb_utils.Tensor from a numpy array through a DLPack capsule.

    The stub takes the capsule's DLManagedTensor (and frees it later) but renames the capsule
    "used_dlpack", not the standard "used_dltensor", so numpy's capsule destructor would report an
    error for every response; give it the standard name once the stub owns the tensor.
    """
    capsule = array.__dlpack__()
    tensor = pb_utils.Tensor.from_dlpack(name, capsule)
    ctypes.pythonapi.PyCapsule_SetName(ctypes.py_object(capsule), _USED_DLTENSOR)
    return tensor


def _onnx_file(version_dir):
    """The model.onnx name recorded in the version's sceneparse.json (export's `files["onnx"]`)."""
    metadata = os.path.join(version_dir, "sceneparse.json")
    if os.path.isfile(metadata):
        with open(metadata) as handle:
            return json.load(handle).get("files", {}).get("onnx", "model.onnx")
    return "model.onnx"
