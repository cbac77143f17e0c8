"""ONNX Runtime in the gateway's own process: the CPU provider by default, CUDA when present.

CPU: one session per model version with intra-op threads = the cores this process may use and
sequential execution (a segmentation network is one long chain of convolutions; inter-op
parallelism only adds contention). CUDA: the arena grows only by what is asked for and is capped
by `gpu_mem_limit`, and cuDNN picks convolution algorithms heuristically instead of benchmarking
them with large workspaces, so PSPNet-101 at its default batch stays inside a 4 GB card
(docs/serving.md derives the budget). FP16 models get their input cast to float16 and their
logits cast back to float32.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np
import onnxruntime as ort

from serving.backends.base import Backend, ModelRunner
from serving.pipeline import windows_per_batch
from serving.repository import ModelMetadata, ModelRepository, RepositoryError

log = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
MIB = 1024 * 1024


def cuda_provider_options(gpu_mem_limit_mb: int, device_id: int = 0) -> dict[str, Any]:
    """Options of the CUDA execution provider that keep one session inside `gpu_mem_limit_mb`."""
    return {
        "device_id": device_id,
        "gpu_mem_limit": int(gpu_mem_limit_mb) * MIB,
        # The default (kNextPowerOfTwo) can double a 1.1 GB request into 2 GB.
        "arena_extend_strategy": "kSameAsRequested",
        # EXHAUSTIVE benchmarks algorithms with workspaces of their own; HEURISTIC needs none.
        "cudnn_conv_algo_search": "HEURISTIC",
        # By default ORT lets cuDNN take as much workspace as is free; 0 caps it at 32 MiB.
        "cudnn_conv_use_max_workspace": "0",
        "do_copy_in_default_stream": True,
    }


def choose_providers(device: str, gpu_mem_limit_mb: int, device_id: int = 0) -> list[Any]:
    """The provider list for `device` ("auto", "cpu" or "cuda"); the CPU provider always comes last.

    Raises RuntimeError when "cuda" is asked for and this onnxruntime build has no CUDA provider.
    """
    available = ort.get_available_providers()
    if device == "cuda" and CUDA_PROVIDER not in available:
        raise RuntimeError(
            f"ort_device=cuda but onnxruntime {ort.__version__} offers only {available}; install onnxruntime-gpu"
        )
    if device in {"auto", "cuda"} and CUDA_PROVIDER in available:
        return [(CUDA_PROVIDER, cuda_provider_options(gpu_mem_limit_mb, device_id)), CPU_PROVIDER]
    return [CPU_PROVIDER]


class OnnxRuntimeRunner(ModelRunner):
    """One `InferenceSession` for one model version.

    Batches run one at a time: a second concurrent Run would need a second set of activations
    (2 GiB for PSPNet-101 at 713x713, batch 8) while the GPU, or the CPU cores the intra-op pool
    already uses, would not finish either sooner. The gateway's other workers meanwhile decode,
    cut windows, stitch and encode.

    A batch larger than `run_batch` (the pipeline's `windows_per_batch`: at most 128 MiB of
    logits) is run in slices of that size, whoever sends it (a warm-up at max_batch_size, a
    client of the runner other than the pipeline): the session's activations, which its arena
    keeps for the life of the session, are then those of one slice.
    """

    def __init__(self, meta: ModelMetadata, session: ort.InferenceSession):
        super().__init__(meta)
        self.session = session
        inputs = {node.name: node for node in session.get_inputs()}
        outputs = {node.name for node in session.get_outputs()}
        if meta.input_name not in inputs:
            raise RepositoryError(f"{meta.name} v{meta.version}: the graph has no input {meta.input_name!r} ({sorted(inputs)})")
        if meta.output_name not in outputs:
            raise RepositoryError(f"{meta.name} v{meta.version}: the graph has no output {meta.output_name!r} ({sorted(outputs)})")
        graph_fp16 = inputs[meta.input_name].type == "tensor(float16)"
        if (meta.precision == "fp16") != graph_fp16:
            # The metadata says what export meant; the graph says what it takes. Trust the graph.
            log.warning("%s v%d: metadata precision %s but the graph input is %s", meta.name, meta.version,
                        meta.precision, inputs[meta.input_name].type)
        self.input_dtype = np.float16 if graph_fp16 else np.float32
        self.providers = session.get_providers()
        self.run_batch = windows_per_batch(meta.max_batch_size, meta.num_classes, meta.crop_h, meta.crop_w)
        self._run_lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """float32 (N, 3, crop_h, crop_w), N <= max_batch_size -> float32 logits (N, C, h, w)."""
        if batch.ndim != 4 or batch.shape[0] > self.max_batch_size:
            raise ValueError(f"batch of shape {batch.shape} exceeds max_batch_size {self.max_batch_size} or is not NCHW")
        if batch.shape[0] <= self.run_batch:
            return self._run(batch)
        out = None
        for start in range(0, batch.shape[0], self.run_batch):
            logits = self._run(batch[start:start + self.run_batch])
            if out is None:
                out = np.empty((batch.shape[0], *logits.shape[1:]), dtype=np.float32)
            out[start:start + len(logits)] = logits
        return out

    def warm_up(self) -> None:
        """One run of the largest batch the session ever sees: `run_batch` zero crops (a request's
        batch is never larger, and max_batch_size would only run as that many slices)."""
        meta = self.meta
        self(np.zeros((self.run_batch, 3, meta.crop_h, meta.crop_w), dtype=np.float32))

    def _run(self, batch: np.ndarray) -> np.ndarray:
        feed = {self.meta.input_name: np.ascontiguousarray(batch, dtype=self.input_dtype)}
        with self._run_lock:  # per slice: another request's slice may run between two of ours
            (logits,) = self.session.run([self.meta.output_name], feed)
        return logits.astype(np.float32, copy=False)

    def close(self) -> None:
        # Dropping the last reference frees the session and its arena.
        self.session = None


class OnnxRuntimeBackend(Backend):
    """Opens `model.onnx` of a published version in an ONNX Runtime session."""

    kind = "onnxruntime"

    def __init__(self, device: str = "auto", threads: int = 1, gpu_mem_limit_mb: int = 3072, device_id: int = 0,
                 cpu_arena: bool = True):
        self.device = device
        self.threads = max(1, int(threads))
        self.cpu_arena = bool(cpu_arena)
        self.gpu_mem_limit_mb = gpu_mem_limit_mb
        self.providers = choose_providers(device, gpu_mem_limit_mb, device_id)

    @property
    def provider_names(self) -> list[str]:
        return [p[0] if isinstance(p, tuple) else p for p in self.providers]

    def session_options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # warnings about unused initialisers etc. are noise here
        options.enable_cpu_mem_arena = self.cpu_arena
        # The pool's threads would otherwise spin for a while after each run, on the cores where the
        # request's softmax and stitching of that batch run next (one crop a batch for 150 classes).
        options.add_session_config_entry("session.force_spinning_stop", "1")
        return options

    def open(self, repository: ModelRepository, meta: ModelMetadata) -> OnnxRuntimeRunner:
        path = repository.model_file(meta.name, meta.version, "onnx")
        if not path.is_file():
            raise RepositoryError(f"{meta.name} v{meta.version}: model file {path} is missing")
        try:
            session = ort.InferenceSession(str(path), self.session_options(), providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise RepositoryError(f"{path}: onnxruntime cannot load it: {exc}") from exc
        runner = OnnxRuntimeRunner(meta, session)
        log.info("loaded %s v%d with %s (%d threads)", meta.name, meta.version, runner.providers, self.threads)
        return runner
