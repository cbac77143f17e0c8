"""How much device memory an exported model needs at a batch size, computed from its ONNX graph.

For a machine without a GPU: the shapes of every intermediate tensor are inferred for a fixed
batch, and a walk over the (topologically ordered) nodes keeps each tensor alive from the node
that makes it to the last node that reads it. The peak of the live bytes is what an allocator with
perfect reuse needs for activations; ONNX Runtime's arena is close to that for a chain-shaped
network like PSPNet (its memory pattern planner reuses freed blocks). Weights are added on top.

    python -m serving.memory_budget model_repository/NAME/1/model.onnx --batch 1 2 4 8

Needs the `onnx` package (the `train` extra); the gateway itself does not.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024
_DTYPE_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}


@dataclass
class MemoryEstimate:
    """Bytes for one batch size: weights, peak live activations, and the largest single tensor."""

    batch: int
    weight_bytes: int
    peak_activation_bytes: int
    peak_node: str
    largest_tensor: tuple[str, int]
    unknown_shapes: int

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.peak_activation_bytes


def _tensor_bytes(value_type) -> int | None:
    tensor = value_type.tensor_type
    if not tensor.HasField("shape"):
        return None
    count = 1
    for dim in tensor.shape.dim:
        if not dim.HasField("dim_value"):
            return None
        count *= dim.dim_value
    return count * _DTYPE_BYTES.get(tensor.elem_type, 4)


def estimate(model_path: str | Path, batch: int) -> MemoryEstimate:
    """Weights and peak activation memory of `model_path` run at `batch` (first input axis)."""
    try:
        import onnx
    except ImportError:
        raise RuntimeError("serving.memory_budget needs the onnx package: pip install onnx") from None
    model = onnx.load(str(model_path))
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    weight_bytes = 0
    for init in graph.initializer:
        count = 1
        for dim in init.dims:
            count *= dim
        weight_bytes += count * _DTYPE_BYTES.get(init.data_type, 4)
    for value in graph.input:
        if value.name not in initializers:
            value.type.tensor_type.shape.dim[0].dim_value = batch  # fix the batch axis
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    sizes: dict[str, int | None] = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        sizes[value.name] = _tensor_bytes(value.type)

    nodes = list(inferred.graph.node)
    last_use: dict[str, int] = {}
    for index, node in enumerate(nodes):
        for name in node.input:
            last_use[name] = index
    outputs = {value.name for value in inferred.graph.output}
    live: dict[str, int] = {}
    for value in inferred.graph.input:
        if value.name not in initializers and sizes.get(value.name):
            live[value.name] = sizes[value.name]
    peak, peak_node, largest, unknown = sum(live.values()), "input", ("", 0), 0
    for index, node in enumerate(nodes):
        for name in node.output:
            size = sizes.get(name)
            if size is None:
                unknown += 1
                continue
            # Shape-computing nodes (Shape, Gather of shapes, ...) make tiny tensors; count them all.
            live[name] = size
            if size > largest[1]:
                largest = (name, size)
        current = sum(live.values())
        if current > peak:
            peak, peak_node = current, f"{node.op_type} {node.name or node.output[0]}"
        for name in list(live):
            if last_use.get(name, -1) <= index and name not in outputs:
                del live[name]
    return MemoryEstimate(batch, weight_bytes, peak, peak_node, largest, unknown)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.memory_budget", description=__doc__.split("\n")[0])
    parser.add_argument("model", help="an ONNX file (e.g. model_repository/NAME/1/model.onnx)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4, 8], help="batch sizes (default: 1 2 4 8)")
    args = parser.parse_args(argv)
    if not Path(args.model).is_file():
        print(f"memory_budget: {args.model} is not a file", file=sys.stderr)
        return 2
    print(f"{'batch':>5} {'weights MiB':>12} {'peak activations MiB':>21} {'total MiB':>10}  largest tensor")
    for batch in args.batch:
        try:
            result = estimate(args.model, batch)
        except Exception as exc:  # a malformed or unreadable graph: one line, no traceback
            print(f"memory_budget: {args.model}: {exc}", file=sys.stderr)
            return 2
        name, size = result.largest_tensor
        print(f"{batch:>5} {result.weight_bytes / MIB:>12.0f} {result.peak_activation_bytes / MIB:>21.0f} "
              f"{result.total_bytes / MIB:>10.0f}  {name} ({size / MIB:.0f} MiB)"
              + (f"  [{result.unknown_shapes} shapes unknown]" if result.unknown_shapes else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
