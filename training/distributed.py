"""Distributed plumbing for training: process-group set-up, rank queries and reductions.

The training loop calls these helpers so that it never does rank arithmetic itself. Three ways
to run, all ending in the same `DistributedState`:

- a single process (one GPU, or the CPU): no process group, every helper is a no-op;
- `torchrun` (also multi-node): RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR come from the
  environment and the group is initialised with `env://`;
- `sceneparse train` spawning one process per listed `train_gpu` (or `cpu_processes` processes
  on the CPU), as the original did: `spawn_workers` starts them and each joins via `dist_url`.

On the CPU the backend is always gloo (nccl needs CUDA).
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistributedState",
    "all_gather_objects",
    "all_reduce_sum",
    "barrier",
    "cleanup",
    "find_free_port",
    "get_rank",
    "get_world_size",
    "init_distributed_mode",
    "is_dist_avail_and_initialized",
    "is_main_process",
    "launched_by_torchrun",
    "reduce_mean",
    "save_on_master",
    "spawn_workers",
]


@dataclass(frozen=True)
class DistributedState:
    """Where this process stands in the job.

    Attributes:
        rank: global rank, 0..world_size-1.
        world_size: number of processes taking part (1 when not distributed).
        local_rank: rank within this node; indexes the GPU list on CUDA.
        local_world_size: processes on this node (splits the data-loader workers).
        device: the device this process trains on.
        distributed: True when a process group is initialised.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")
    distributed: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when torchrun (or any env:// launcher) set RANK and WORLD_SIZE for this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def find_free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for single-node spawned runs and tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pick_backend(requested: str | None, use_cuda: bool) -> str:
    if not use_cuda:
        if requested not in (None, "", "gloo"):
            print(f"note: dist_backend {requested!r} needs CUDA; using gloo on the CPU", file=sys.stderr)
        return "gloo"
    backend = requested or "nccl"
    # NCCL takes CUDA tensors only: a group made with plain "nccl" refuses the CPU tensors the
    # loop reduces (reduce_mean of the epoch's losses: "No backend type associated with device
    # type cpu"). Gloo carries those; SyncBatchNorm and the metric areas stay on NCCL.
    return "cpu:gloo,cuda:nccl" if backend == "nccl" else backend


def init_distributed_mode(
    gpus: list[int] | None,
    *,
    dist_url: str | None = None,
    dist_backend: str | None = None,
    spawn_rank: int | None = None,
    spawn_world_size: int | None = None,
) -> DistributedState:
    """Join the process group this process belongs to, if any, and pick its device.

    Args:
        gpus: CUDA device ids to use on this node; None or [] trains on the CPU.
        dist_url: rendezvous for spawned workers (e.g. tcp://127.0.0.1:6789); torchrun uses env://.
        dist_backend: nccl/gloo; forced to gloo on the CPU.
        spawn_rank: this worker's index when started by `spawn_workers` (None otherwise).
        spawn_world_size: how many workers `spawn_workers` started.

    Returns:
        The `DistributedState`; with one process and no torchrun, no group is created.
    """
    use_cuda = bool(gpus) and torch.cuda.is_available()
    if launched_by_torchrun():
        rank = int(os.environ["RANK"])
        world_size = int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        init_method = "env://"
    elif spawn_rank is not None:
        rank, local_rank = spawn_rank, spawn_rank
        world_size = local_world_size = int(spawn_world_size or 1)
        init_method = dist_url or f"tcp://127.0.0.1:{find_free_port()}"
    else:
        device = torch.device(f"cuda:{gpus[0]}") if use_cuda else torch.device("cpu")
        if use_cuda:
            torch.cuda.set_device(device)
        return DistributedState(device=device)

    if use_cuda:
        # One GPU per process: the local rank indexes the listed GPUs when there are enough of
        # them, else (torchrun with the default train_gpu [0]) it is the CUDA device index itself.
        device_index = gpus[local_rank] if local_rank < len(gpus) else local_rank
        device = torch.device(f"cuda:{device_index}")
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    backend = _pick_backend(dist_backend, use_cuda)
    dist.init_process_group(backend=backend, init_method=init_method, world_size=world_size, rank=rank)
    return DistributedState(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        local_world_size=local_world_size,
        device=device,
        distributed=True,
    )


def spawn_workers(worker: Callable[..., Any], nprocs: int, args: tuple) -> None:
    """Start `nprocs` processes running `worker(index, *args)` and wait for all of them.

    A worker that fails makes this raise (torch.multiprocessing's ProcessRaisedException).
    """
    import torch.multiprocessing as mp

    mp.spawn(worker, nprocs=nprocs, args=args, join=True)


def is_dist_avail_and_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist_avail_and_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist_avail_and_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in a single process): the one that logs, writes files and saves."""
    return get_rank() == 0


def save_on_master(save: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call `save(*args, **kwargs)` on rank 0 only; other ranks get None."""
    if is_main_process():
        return save(*args, **kwargs)
    return None


def barrier() -> None:
    if is_dist_avail_and_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all processes in place (no-op with one process); returns it."""
    if is_dist_avail_and_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def reduce_mean(values: torch.Tensor, count: float) -> torch.Tensor:
    """Average of per-process means weighted by `count` (e.g. samples): sum(v*n) / sum(n).

    Args:
        values: 1-D float tensor of this process's means (e.g. [loss, main_loss, aux_loss]).
        count: how many items this process's means cover.

    Returns:
        A new tensor with the weighted means over all processes.
    """
    packed = torch.cat([values.detach().double() * count, values.new_tensor([count], dtype=torch.float64)])
    all_reduce_sum(packed)
    return (packed[:-1] / packed[-1].clamp_min(1e-12)).to(values.dtype)


def all_gather_objects(obj: Any) -> list[Any]:
    """Gather one picklable object from every process (a one-element list with one process)."""
    if not is_dist_avail_and_initialized():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def cleanup() -> None:
    """Leave the process group (if one was created)."""
    if is_dist_avail_and_initialized():
        dist.destroy_process_group()
