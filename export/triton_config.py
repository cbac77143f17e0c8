"""Triton's `config.pbtxt` for an exported model, written as protobuf text format.

The config is built as Triton's own schema, `tritonclient.grpc.model_config_pb2.ModelConfig`,
and written with protobuf's `text_format`: a field Triton does not know, or a value of the wrong
type, fails here at export time instead of when Triton loads the model. (Proto3 text leaves out
fields at their default value, e.g. `graphs: false`; Triton reads them as that default.)

Platforms and tensor names:
- `onnxruntime_onnx`: tensors keep the ONNX graph's names (`input`, `logits`).
- `pytorch_libtorch`: TorchScript has no tensor names, so Triton's convention applies:
  `INPUT__0` and `OUTPUT__0` (the position after the double underscore).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from serving.repository import LABELS_FILE

PLATFORMS = {"onnx": "onnxruntime_onnx", "torchscript": "pytorch_libtorch"}
DEFAULT_FILENAMES = {"onnx": "model.onnx", "torchscript": "model.pt"}
TRITON_DTYPES = {"fp32": "TYPE_FP32", "fp16": "TYPE_FP16"}
INSTANCE_KINDS = ("KIND_AUTO", "KIND_GPU", "KIND_CPU")

# Triton's own queue, in requests (each a batch of up to max_batch_size crops from the gateway).
# Past it Triton rejects at once ("Exceeds maximum queue size", HTTP 503 / gRPC UNAVAILABLE) and
# the gateway answers 503 with Retry-After; a request waiting longer than the timeout is rejected
# too (the gateway's own Triton call would have given up by then: SCENEPARSE_TRITON_TIMEOUT, 30 s).
DEFAULT_MAX_QUEUE_SIZE = 16
DEFAULT_QUEUE_TIMEOUT_US = 30_000_000

# Defaults for a 4 GB GPU. ORT's CUDA arena grows to the next power of two by default, which on a
# small card turns a 1.1 GB request into 2 GB; "same as requested" keeps it tight. Exhaustive cuDNN
# algorithm search allocates large workspaces while it benchmarks: heuristic search does not.
DEFAULT_GPU_MEM_LIMIT = 3 * 1024**3  # leaves ~1 GB of a 4 GB card for the CUDA context and cuDNN


def tensor_names(fmt: str) -> tuple[str, str]:
    """(input name, output name) that Triton uses for a model file of format `fmt`."""
    if fmt == "torchscript":
        return "INPUT__0", "OUTPUT__0"
    return "input", "logits"


def preferred_batch_sizes(max_batch_size: int) -> list[int]:
    """Powers of two up to max_batch_size, plus max_batch_size itself (e.g. 8 -> [2, 4, 8], 6 -> [2, 4, 6])."""
    sizes = []
    size = 2
    while size < max_batch_size:
        sizes.append(size)
        size *= 2
    sizes.append(max_batch_size)
    return sizes


@dataclass
class TritonModelConfig:
    """What goes into config.pbtxt.

    `input_dims` is (3, crop_h, crop_w) and `output_dims` (classes, out_h, out_w), both
    without the batch axis (Triton adds it because max_batch_size > 0).
    """

    name: str
    fmt: str  # "onnx" or "torchscript"
    input_dims: tuple[int, int, int]
    output_dims: tuple[int, int, int]
    precision: str = "fp32"
    max_batch_size: int = 8
    max_queue_delay_microseconds: int = 5000
    instance_kind: str = "KIND_AUTO"
    instance_count: int = 1
    num_versions: int = 2  # the newest and the one before it, so a rollback needs no reload
    gpu_mem_limit: int = DEFAULT_GPU_MEM_LIMIT
    intra_op_threads: int = 0  # 0: ONNX Runtime picks (one per core)
    label_file: str | None = LABELS_FILE
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    queue_timeout_microseconds: int = DEFAULT_QUEUE_TIMEOUT_US  # 0: no timeout
    warmup: bool = True  # one max_batch_size batch of zeros at load, before Triton reports the version ready
    extra_parameters: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        if self.fmt not in PLATFORMS:
            raise ValueError(f"unknown model format {self.fmt!r}; expected one of {sorted(PLATFORMS)}")
        if self.precision not in TRITON_DTYPES:
            raise ValueError(f"unknown precision {self.precision!r}; expected fp32 or fp16")
        if self.instance_kind not in INSTANCE_KINDS:
            raise ValueError(f"unknown instance kind {self.instance_kind!r}; expected one of {INSTANCE_KINDS}")
        if self.max_batch_size < 1 or self.instance_count < 1 or self.num_versions < 1 or self.max_queue_size < 1:
            raise ValueError("max_batch_size, instance_count, num_versions and max_queue_size must be >= 1")
        if self.queue_timeout_microseconds < 0:
            raise ValueError(f"queue_timeout_microseconds must be >= 0, got {self.queue_timeout_microseconds}")
        if any(int(d) < 1 for d in (*self.input_dims, *self.output_dims)):
            raise ValueError(f"tensor dims must be positive: {self.input_dims}, {self.output_dims}")

    def to_text(self) -> str:
        """The config.pbtxt text."""
        return text_format.MessageToString(self.to_proto())

    def to_proto(self) -> pb.ModelConfig:
        """The config as Triton's ModelConfig message."""
        self.validate()
        in_name, out_name = tensor_names(self.fmt)
        dtype = pb.DataType.Value(TRITON_DTYPES[self.precision])
        config = pb.ModelConfig(
            name=self.name,
            platform=PLATFORMS[self.fmt],
            default_model_filename=DEFAULT_FILENAMES[self.fmt],
            max_batch_size=self.max_batch_size,
            version_policy=pb.ModelVersionPolicy(latest=pb.ModelVersionPolicy.Latest(num_versions=self.num_versions)),
            input=[pb.ModelInput(name=in_name, data_type=dtype, format=pb.ModelInput.FORMAT_NCHW,
                                 dims=[int(d) for d in self.input_dims])],
            output=[pb.ModelOutput(name=out_name, data_type=dtype, dims=[int(d) for d in self.output_dims],
                                   label_filename=self.label_file or "")],
            dynamic_batching=pb.ModelDynamicBatching(
                preferred_batch_size=preferred_batch_sizes(self.max_batch_size),
                max_queue_delay_microseconds=self.max_queue_delay_microseconds,
                # A bounded queue: Triton's default is unbounded, so a burst from several gateways
                # would pile up input batches in its host memory instead of being refused.
                default_queue_policy=pb.ModelQueuePolicy(
                    timeout_action=pb.ModelQueuePolicy.REJECT,
                    default_timeout_microseconds=int(self.queue_timeout_microseconds),
                    allow_timeout_override=False,
                    max_queue_size=int(self.max_queue_size),
                ),
            ),
            instance_group=[pb.ModelInstanceGroup(count=self.instance_count,
                                                  kind=pb.ModelInstanceGroup.Kind.Value(self.instance_kind))],
        )
        if self.warmup:
            config.model_warmup.append(self._warmup(in_name, dtype))
        if self.fmt == "onnx":
            self._onnx_settings(config)
        else:
            # libtorch: no autograd bookkeeping, and no profiling executor (it re-specialises the
            # graph for every new batch size the dynamic batcher forms).
            _parameters(config, {"INFERENCE_MODE": "true", "ENABLE_JIT_PROFILING": "false", **self.extra_parameters})
        return config

    def _warmup(self, in_name: str, dtype: int) -> pb.ModelWarmup:
        # Triton runs this when it loads each version and reports the version ready only after it:
        # the first real batch then finds the engine's memory planned and its arena grown (on the
        # GPU, cuDNN's algorithms chosen). Zeros at the crop size and the largest batch the gateway
        # sends, the one that sizes the arena.
        return pb.ModelWarmup(
            name="crop_max_batch_zeros",
            batch_size=self.max_batch_size,
            inputs={in_name: pb.ModelWarmup.Input(data_type=dtype, dims=[int(d) for d in self.input_dims],
                                                  zero_data=True)},
        )

    def _onnx_settings(self, config: pb.ModelConfig) -> None:
        # No TensorRT accelerator (building engines needs more than a 4 GB card spares) and no
        # CUDA graphs (they pin one graph per batch size in GPU memory). The "cuda" accelerator
        # entry only passes options to the CUDA execution provider: cuDNN may then take 32 MiB
        # of workspace instead of whatever is free, as the gateway's own sessions do.
        optimization = config.optimization
        optimization.cuda.SetInParent()
        optimization.cuda.graphs = False
        optimization.execution_accelerators.gpu_execution_accelerator.add(
            name="cuda", parameters={"cudnn_conv_use_max_workspace": "0"})
        # Model-level parameters the onnxruntime backend passes to the CUDA execution provider.
        _parameters(config, {
            "cudnn_conv_algo_search": "1",  # HEURISTIC
            "arena_extend_strategy": "1",  # kSameAsRequested
            "gpu_mem_limit": str(int(self.gpu_mem_limit)),
            "intra_op_thread_count": str(int(self.intra_op_threads)),
            **self.extra_parameters,
        })


def _parameters(config: pb.ModelConfig, params: dict[str, str]) -> None:
    for key, value in params.items():
        config.parameters[key].string_value = value


def model_config_text(config: TritonModelConfig) -> str:
    """config.pbtxt text for `config` (see TritonModelConfig)."""
    return config.to_text()
