"""CPU SyncBN: 2 processes x batch 2 (gloo, DDP) must equal 1 process x batch 4 on the same samples.

The comparison covers the loss, every parameter gradient, the BN running statistics and the
weights after one SGD step, within 1e-5. As a control, plain (unsynchronised) BN under the same
DDP set-up must *not* match, so the test can tell the two apart.
"""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from training.distributed import find_free_port
from training.syncbn import CPUSyncBatchNorm, freeze_batchnorm

TOLERANCE = 1e-5
LR = 0.1


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(inplace=True),
        nn.Conv2d(6, 6, 3, padding=1, bias=False),
        nn.BatchNorm2d(6, momentum=0.3),
        nn.ReLU(inplace=True),
        nn.Conv2d(6, 4, 1),
    )
    # Non-trivial affine parameters so that the weight/bias terms of the backward are exercised.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return model


def _samples() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 9, 9, generator=generator) * 2 + 0.5
    # Distinct per-sample statistics, so that per-process and global BN statistics differ.
    images[2:] = images[2:] * 3 - 1
    labels = torch.randint(0, 4, (4, 9, 9), generator=generator)
    return images, labels


def _one_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Forward, backward, one SGD step; return loss, gradients, buffers and new weights."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
    model.train()
    loss = nn.functional.cross_entropy(model(images), labels)
    optimizer.zero_grad()
    loss.backward()
    bare = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    grads = {name: p.grad.detach().clone() for name, p in bare.named_parameters()}
    optimizer.step()
    return {
        "loss": loss.detach(),
        "grads": grads,
        "buffers": {name: b.detach().clone() for name, b in bare.named_buffers() if "running" in name},
        "weights": {name: p.detach().clone() for name, p in bare.named_parameters()},
    }


def _worker(rank: int, world_size: int, url: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=url, rank=rank, world_size=world_size)
    try:
        images, labels = _samples()
        shard = slice(2 * rank, 2 * rank + 2)
        results = {}
        for variant in ("sync", "plain"):
            model = _tiny_model()
            if variant == "sync":
                model = CPUSyncBatchNorm.convert(model)
            ddp = nn.parallel.DistributedDataParallel(model)
            result = _one_step(ddp, images[shard], labels[shard])
            # The reported loss is the mean over processes, as the training loop logs it.
            dist.all_reduce(result["loss"])
            result["loss"] /= world_size
            results[variant] = result
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("syncbn")
    url = f"tcp://127.0.0.1:{find_free_port()}"
    mp.spawn(_worker, nprocs=2, args=(2, url, str(out_dir)), join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_two_processes_match_one_process_with_the_whole_batch(two_process_results):
    torch.set_num_threads(1)
    images, labels = _samples()
    reference = _one_step(_tiny_model(), images, labels)
    for rank, results in enumerate(two_process_results):
        synced = results["sync"]
        assert abs(float(synced["loss"] - reference["loss"])) < TOLERANCE, rank
        assert _max_diff(synced["grads"], reference["grads"]) < TOLERANCE, rank
        assert _max_diff(synced["buffers"], reference["buffers"]) < TOLERANCE, rank
        assert _max_diff(synced["weights"], reference["weights"]) < TOLERANCE, rank


def test_unsynchronised_bn_does_not_match(two_process_results):
    """The control: per-process statistics give other gradients and running statistics."""
    images, labels = _samples()
    reference = _one_step(_tiny_model(), images, labels)
    plain = two_process_results[0]["plain"]
    assert _max_diff(plain["grads"], reference["grads"]) > 1e-3
    assert _max_diff(plain["buffers"], reference["buffers"]) > 1e-3


def test_single_process_sync_bn_is_plain_bn():
    """Without a process group the converted model computes exactly what BatchNorm2d does."""
    images, labels = _samples()
    reference = _one_step(_tiny_model(), images, labels)
    converted = CPUSyncBatchNorm.convert(_tiny_model())
    assert sum(isinstance(m, CPUSyncBatchNorm) for m in converted.modules()) == 2
    assert list(converted.state_dict()) == list(_tiny_model().state_dict())
    result = _one_step(converted, images, labels)
    assert torch.equal(result["loss"], reference["loss"])
    assert _max_diff(result["weights"], reference["weights"]) == 0.0


def test_frozen_bn_keeps_statistics_and_affine_parameters():
    model = freeze_batchnorm(_tiny_model())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    images, labels = _samples()
    nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()
    after = model.state_dict()
    for key in before:
        if key.startswith(("1.", "4.")):  # the two BN layers
            assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["0.weight"], after["0.weight"])
