"""torchrun set-up (NCCL on GPU, gloo on CPU) and differentiable collectives.

Plain ``python script.py`` runs as a world of one, so every caller can use the
same code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device_name: str | None = None) -> DistContext:
    """Join the process group when launched by torchrun; otherwise a world of one.

    Each rank uses ``cuda:LOCAL_RANK`` when CUDA is present (NCCL), else the CPU (gloo).
    """
    from myutils.training.precision import resolve_device

    if not launched_by_torchrun():
        return DistContext(0, 1, 0, resolve_device(device_name))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistContext(rank, world_size, local_rank, device)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward gives each rank the gradient of the sum of every rank's loss
    with respect to its own slice.

    Each rank's loss reads the gathered tensor, so rank r's rows get gradient from every rank's
    loss: the gathered gradients are summed over ranks and each rank keeps its slice. DDP then
    averages parameter gradients over ranks, which makes the step the gradient of the mean of
    the per-rank losses, i.e. of the loss of one big batch.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, tensor.contiguous())
        return torch.cat(gathered, dim=0)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        chunk = grad.shape[0] // dist.get_world_size()
        rank = dist.get_rank()
        return grad[rank * chunk : (rank + 1) * chunk]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (same shape on every rank) over ranks along dim 0, keeping autograd.

    For a per-rank loss on the gathered tensor (e.g. local anchors against every rank's
    candidates); see :class:`_GatherWithGrad` for the gradient it gives.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


def rank_and_world_size() -> tuple[int, int]:
    """``(rank, world size)`` of the current process group; ``(0, 1)`` outside torchrun."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def all_gather_object(obj):
    """Every rank's ``obj`` (plain data, tensors), as a list in rank order; ``[obj]`` in a world of one."""
    _, world_size = rank_and_world_size()
    if world_size == 1:
        return [obj]
    gathered = [None] * world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def all_gather_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` over ranks along dim 0 (no gradient)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)


def all_reduce_mean(value: float, device: torch.device) -> float:
    """Average a Python number over ranks."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return float(value)
    tensor = torch.tensor([float(value)], device=device, dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item()) / dist.get_world_size()


def all_gather_variable(tensor: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Concatenate ``tensor`` over ranks along dim 0 when ranks hold different lengths (no gradient).

    Returns ``(gathered, sizes)``; rank ``r``'s rows are ``gathered[sum(sizes[:r]) : sum(sizes[:r + 1])]``.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor, [tensor.shape[0]]
    size = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
    sizes = [int(s) for s in all_gather_tensor(size)]
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = all_gather_tensor(padded)
    parts = [gathered[r * max(sizes) : r * max(sizes) + n] for r, n in enumerate(sizes)]
    return torch.cat(parts, dim=0), sizes


def broadcast_module_state(module: torch.nn.Module, source: int = 0) -> None:
    """Copy rank ``source``'s parameters and buffers into ``module`` on every rank.

    For modules outside DDP, and before evaluating a DDP model shard-wise: DDP keeps parameters
    equal, but each rank's last forward updates its own BatchNorm running statistics, so every rank
    must embed with the weights that rank 0 saves.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dense = tensor.data if tensor.is_contiguous() else tensor.data.contiguous()
            dist.broadcast(dense, source)
            if dense is not tensor.data:
                tensor.data.copy_(dense)


def all_reduce_gradients(optimizer: torch.optim.Optimizer) -> None:
    """Average the gradients of an optimizer's parameters over ranks (for parameters outside DDP)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)  # every rank must join each all-reduce
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
            parameter.grad.div_(dist.get_world_size())
