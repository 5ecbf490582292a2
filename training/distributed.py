"""Multi-GPU helpers over ``torch.distributed``.

Launch with ``torchrun --nproc_per_node=N -m training.cli train ...`` (or the ``ganstack`` script in
place of ``-m training.cli``). Every rank runs the same loop on its slice of the batch; gradients and
every reported statistic are all-reduced, so plugin decisions (ADA p, Diffusion-GAN T) are identical
on all ranks. On one process every helper is the identity.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def init_from_env(device_kind: str) -> tuple[int, int, int]:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Returns ``(rank, world_size, local_rank)``. Uses NCCL on CUDA and Gloo on the CPU.
    """
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return 0, 1, 0
    if not is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if device_kind == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))


def all_reduce_sum_(t: torch.Tensor) -> torch.Tensor:
    if is_initialized() and world_size() > 1:
        dist.all_reduce(t)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if is_initialized() and world_size() > 1:
        t = t.detach().clone()
        dist.all_reduce(t)
        t /= world_size()
    return t


def all_gather_object(obj: Any) -> list:
    if is_initialized() and world_size() > 1:
        out = [None] * world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if is_initialized() and world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


def barrier() -> None:
    if is_initialized() and world_size() > 1:
        dist.barrier()


def sync_gradients(module: torch.nn.Module) -> None:
    """Average gradients over ranks (parameters without a gradient count as zero), then replace
    NaN/Inf as StyleGAN2-ADA does so that one bad batch cannot poison the weights."""
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.flatten() for p in params])
    n = world_size()
    if n > 1:
        dist.all_reduce(flat)
    flat /= n
    torch.nan_to_num(flat, nan=0, posinf=1e5, neginf=-1e5, out=flat)
    offset = 0
    for p in params:
        numel = p.numel()
        p.grad.copy_(flat[offset:offset + numel].view_as(p))
        offset += numel
