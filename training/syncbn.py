"""Synchronised batch normalisation that also works on the CPU (gloo), plus the BN converters.

`torch.nn.SyncBatchNorm` refuses CPU modules, so multi-process CPU training (CI, laptops) needs
its own version to keep the original semantics: batch statistics over the *global* batch. The
autograd function below all-reduces [sum, sum of squares, count] per channel in forward and
[sum dy, sum dy*(x-mean)] in backward, which is exactly what the CUDA kernels do. Together with
DDP's gradient averaging this makes N processes x batch B match 1 process x batch N*B.

Converters:
- `convert_sync_batchnorm(model, device)`: torch's SyncBatchNorm on CUDA, `CPUSyncBatchNorm` on
  the CPU. State-dict keys are unchanged, so checkpoints keep the original layout.
- `freeze_batchnorm(model)`: BN layers in eval mode with frozen affine parameters (fine-tuning on a
  single small GPU, the original FAQ's advice).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = ["CPUSyncBatchNorm", "convert_sync_batchnorm", "freeze_batchnorm", "set_frozen_bn_eval"]


def _channel_dims(x: torch.Tensor) -> list[int]:
    return [d for d in range(x.dim()) if d != 1]


def _per_channel(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Shape a (C,) vector to broadcast against x of shape (N, C, *)."""
    return v.view(1, -1, *([1] * (x.dim() - 2)))


class _SyncBatchNormFunction(torch.autograd.Function):
    """Batch norm over the batch of all processes in `group` (training mode only)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum, group):
        dims = _channel_dims(x)
        # float64 accumulation: the sum-of-squares variance formula loses precision in float32.
        x64 = x.double()
        local_count = x.numel() // x.size(1)
        stats = torch.cat(
            [x64.sum(dims), (x64 * x64).sum(dims), x64.new_tensor([float(local_count)])]
        )
        dist.all_reduce(stats, op=dist.ReduceOp.SUM, group=group)
        channels = x.size(1)
        total_sum, total_sumsq, count = stats[:channels], stats[channels : 2 * channels], stats[-1]
        if count.item() <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
        mean64 = total_sum / count
        var64 = (total_sumsq / count - mean64 * mean64).clamp_min(0.0)
        invstd64 = torch.rsqrt(var64 + eps)

        if running_mean is not None:
            with torch.no_grad():
                unbiased = var64 * count / (count - 1)
                running_mean.mul_(1 - momentum).add_(mean64.to(running_mean.dtype), alpha=momentum)
                running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)

        mean, invstd = mean64.to(x.dtype), invstd64.to(x.dtype)
        x_hat = (x - _per_channel(mean, x)) * _per_channel(invstd, x)
        out = x_hat
        if weight is not None:
            out = out * _per_channel(weight, x) + _per_channel(bias, x)
        ctx.save_for_backward(x_hat, weight, invstd)
        ctx.count = count.item()
        ctx.group = group
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x_hat, weight, invstd = ctx.saved_tensors
        dims = _channel_dims(grad_out)
        channels = grad_out.size(1)
        # Local sums give the affine gradients (DDP averages them across processes); the global
        # sums are what the input gradient needs, because every sample moved the shared statistics.
        sum_dy = grad_out.sum(dims)
        sum_dy_xhat = (grad_out * x_hat).sum(dims)
        grad_weight = sum_dy_xhat if weight is not None and ctx.needs_input_grad[1] else None
        grad_bias = sum_dy if weight is not None and ctx.needs_input_grad[2] else None

        grad_input = None
        if ctx.needs_input_grad[0]:
            packed = torch.cat([sum_dy, sum_dy_xhat]).double()
            dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=ctx.group)
            mean_dy = (packed[:channels] / ctx.count).to(grad_out.dtype)
            mean_dy_xhat = (packed[channels:] / ctx.count).to(grad_out.dtype)
            scale = invstd if weight is None else invstd * weight
            grad_input = (
                grad_out - _per_channel(mean_dy, grad_out) - x_hat * _per_channel(mean_dy_xhat, grad_out)
            ) * _per_channel(scale, grad_out)
        return grad_input, grad_weight, grad_bias, None, None, None, None, None


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training-mode statistics span every process of a (gloo) process group.

    Same parameters, buffers and state-dict keys as `nn.BatchNorm2d`. Without an initialised
    process group, with world size 1 or in eval mode it is plain batch norm.

    Args:
        num_features: channels C of the (N, C, *) input.
        eps, momentum, affine, track_running_stats: as for `nn.BatchNorm2d`.
        process_group: group to synchronise over (default: the whole world).
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: dist.ProcessGroup | None = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def _world_size(self) -> int:
        if not (dist.is_available() and dist.is_initialized()):
            return 1
        return dist.get_world_size(self.process_group)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if not self.training or self._world_size() == 1:
            return super().forward(input)

        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as nn.BatchNorm does
                momentum = 1.0 / float(self.num_batches_tracked)
        running_mean = self.running_mean if self.track_running_stats else None
        running_var = self.running_var if self.track_running_stats else None
        group = self.process_group or dist.group.WORLD
        return _SyncBatchNormFunction.apply(
            input, self.weight, self.bias, running_mean, running_var, self.eps, momentum, group
        )

    @classmethod
    def convert(cls, module: nn.Module, process_group: dist.ProcessGroup | None = None) -> nn.Module:
        """Replace every BatchNorm layer in `module` (recursively) by a `CPUSyncBatchNorm`.

        Parameters and buffers are carried over (same tensors, same keys); returns the module.
        """
        converted = module
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, cls):
            converted = cls(
                module.num_features,
                module.eps,
                module.momentum,
                module.affine,
                module.track_running_stats,
                process_group,
            )
            if module.affine:
                with torch.no_grad():
                    converted.weight = module.weight
                    converted.bias = module.bias
            converted.running_mean = module.running_mean
            converted.running_var = module.running_var
            converted.num_batches_tracked = module.num_batches_tracked
            converted.training = module.training
        for name, child in module.named_children():
            converted.add_module(name, cls.convert(child, process_group))
        return converted


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Synchronised BN for `device`: torch's SyncBatchNorm on CUDA, `CPUSyncBatchNorm` on the CPU."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return CPUSyncBatchNorm.convert(model)


def set_frozen_bn_eval(model: nn.Module) -> None:
    """Put every BN layer in eval mode (use running statistics); call after each `model.train()`."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    """Freeze BN: running statistics stay as loaded and the affine weight/bias get no gradient.

    Returns the model; remember to call `set_frozen_bn_eval` after every `model.train()`.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for param in module.parameters(recurse=False):
                param.requires_grad_(False)
    set_frozen_bn_eval(model)
    return model
