"""The process-group backend: NCCL for CUDA tensors, with gloo beside it for the CPU tensors the loop reduces."""

from __future__ import annotations

import torch
import torch.distributed as dist

from training.distributed import _pick_backend, find_free_port, reduce_mean


def test_nccl_is_paired_with_gloo_for_cpu_tensors():
    assert _pick_backend(None, use_cuda=True) == "cpu:gloo,cuda:nccl"
    assert _pick_backend("nccl", use_cuda=True) == "cpu:gloo,cuda:nccl"
    assert _pick_backend("gloo", use_cuda=True) == "gloo"
    assert _pick_backend("nccl", use_cuda=False) == "gloo"


def test_a_group_without_a_cpu_backend_refuses_the_epoch_loss_reduction_and_the_pairing_fixes_it():
    # No GPU here: gloo stands in for NCCL on the cuda side; the CPU side is what is tested.
    port = find_free_port()
    dist.init_process_group("cuda:gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        try:
            reduce_mean(torch.tensor([2.0, 4.0]), 3)
            refused = False
        except RuntimeError as exc:
            refused = "No backend type associated with device type cpu" in str(exc)
        assert refused
    finally:
        dist.destroy_process_group()
    paired = _pick_backend(None, use_cuda=True).replace("nccl", "gloo")
    dist.init_process_group(paired, init_method=f"tcp://127.0.0.1:{find_free_port()}", rank=0, world_size=1)
    try:
        assert torch.equal(reduce_mean(torch.tensor([2.0, 4.0]), 3), torch.tensor([2.0, 4.0]))
    finally:
        dist.destroy_process_group()
