"""Processes and devices of a run: which process this is, on which device, and how processes combine values.

Under `torchrun` (WORLD_SIZE > 1) there is one process per device: NCCL on CUDA, gloo on CPU. A single process
needs no process group; every function here is then the identity (or plain BatchNorm).

Owns: `Processes`, `resolve_device`, `start_processes` / `stop_processes`, `rank_and_world_size`,
`all_reduce_`, `sum_over_processes`, `CPUSyncBatchNorm` and `convert_sync_batchnorm`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class Processes:
    """This process's place in the run: rank, world size and device. world_size 1 = no process group."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share_of(self, total: int, what: str = "total batch size") -> int:
        """Each process's share of a total batch; ValueError when the processes cannot split it evenly."""
        if total % self.world_size:
            raise ValueError(f"{what} {total} is not divisible by the {self.world_size} processes; choose a batch "
                             "size that is a multiple of the process count")
        return total // self.world_size


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """"auto" -> cuda if available else cpu; a bare "cuda" becomes cuda:local_rank (one device per process)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:  # torch lists every device type it knows; say which ones are meant here
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    elif device.type != "cpu":
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    return device


def launched_rank() -> int:
    """The rank torchrun gave this process (0 without torchrun), known before and after the process group."""
    return int(os.environ.get("RANK", "0"))


def start_processes(device_name: str) -> Processes:
    """Join the process group when launched by torchrun with WORLD_SIZE > 1 (NCCL on CUDA, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = launched_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return Processes(rank, world_size, device)


def stop_processes(processes: Processes) -> None:
    """Leave the process group `start_processes` joined (nothing to do for a single process)."""
    if processes.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) of the current process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_(tensor: Tensor, op: dist.ReduceOp = dist.ReduceOp.SUM) -> Tensor:
    """In-place all-reduce over the default process group; a no-op when torch.distributed is not initialised.

    NCCL only reduces CUDA tensors, so CPU state is moved to the current CUDA device for the reduction.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    if "nccl" in str(dist.get_backend()) and not tensor.is_cuda:
        on_gpu = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(on_gpu, op=op)
        tensor.copy_(on_gpu.cpu())
    else:
        dist.all_reduce(tensor, op=op)
    return tensor


def sum_over_processes(values: Tensor) -> Tensor:
    """Element-wise sum of a float tensor over processes, returned on the CPU (a copy in every case)."""
    return all_reduce_(values.detach().clone()).cpu()


class _SumOverProcesses(torch.autograd.Function):
    """all_reduce(SUM) whose gradient is the all_reduce(SUM) of the incoming gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:  # type: ignore[override]
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm with statistics over the batch of all processes, for CPU tensors (gloo).

    torch.nn.SyncBatchNorm refuses CPU inputs; this computes the same thing with two differentiable
    all-reduces per layer (sum and count, then the centred sum of squares: two passes for the variance,
    avoiding E[x^2] - E[x]^2 cancellation). Like SyncBatchNorm the backward sums gradients of the statistics
    over processes, which with DDP's gradient averaging gives the gradient of the mean loss. Inputs
    (B, C, *) of any rank >= 2; math in float32 (under autocast too). Outside training, or with a single
    process, it is plain BatchNorm. Same parameters and buffers as BatchNorm, so state dicts are identical.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        x = input.float()
        local_count = x.new_tensor([x.numel() / x.shape[1]])
        sums = _SumOverProcesses.apply(torch.cat([x.sum(dims), local_count]))
        count = sums[-1].detach()
        mean = sums[:-1] / count
        centred = x - mean.view(shape)
        var = _SumOverProcesses.apply((centred * centred).sum(dims)) / count
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * (count / (count - 1).clamp(min=1))
                self.running_mean.mul_(1 - momentum).add_(mean.detach().to(self.running_mean.dtype), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.detach().to(self.running_var.dtype), alpha=momentum)
        return out.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> tuple[nn.Module, int]:
    """Every BatchNorm*d of `module` replaced by a synchronised one (SyncBatchNorm on CUDA, CPUSyncBatchNorm on
    CPU), weights and buffers kept. Returns (module, number of layers converted)."""
    if device.type == "cuda":
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return module, sum(isinstance(m, nn.SyncBatchNorm) for m in module.modules())
    return _convert_cpu(module), sum(isinstance(m, CPUSyncBatchNorm) for m in module.modules())


def _convert_cpu(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, CPUSyncBatchNorm):
        synced = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        synced.load_state_dict(module.state_dict())
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        module._modules[name] = _convert_cpu(child)
    return module


def place_for_training(model: nn.Module, processes: Processes, channels_last: bool = False) -> tuple[nn.Module, int]:
    """`model` on this process's device in training mode (channels-last if asked); with several processes its
    BatchNorms synchronised and the whole wrapped in DDP. Returns (module to train, number of synchronised
    BatchNorm layers)."""
    device = processes.device
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the reference; fp32 convolutions without TF32
        torch.backends.cudnn.allow_tf32 = False
    model.train()
    if processes.world_size == 1:
        return model, 0
    model, synced = convert_sync_batchnorm(model, device)
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return ddp, synced


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel (the model itself otherwise)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
