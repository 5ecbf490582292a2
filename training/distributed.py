"""Multi-GPU helpers over ``torch.distributed``.

Launch with ``torchrun --nproc_per_node=N -m ganstack train ...``, ``ganstack train --gpus N`` (which
runs torch.distributed.run for you), or as the tasks of a SLURM job step (``srun``, or
``ganstack train --launcher slurm``): :func:`init_from_env` reads torchrun's variables, and failing
those SLURM's. Every rank runs the same loop on its slice of the batch; gradients and every reported
statistic are all-reduced, so plugin decisions (ADA p, Diffusion-GAN T) are identical on all ranks. On
one process every helper is the identity.
"""
from __future__ import annotations

import os
import re
from typing import Any

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def first_host(nodelist: str) -> str:
    """The first host of a SLURM host list: ``gpu[03-05,9],cpu1`` -> ``gpu03``."""
    depth, end = 0, len(nodelist)
    for i, ch in enumerate(nodelist):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            end = i
            break
    first = nodelist[:end].strip()
    m = re.match(r"^([^\[]*)\[([^\],-]+)[^\]]*\](.*)$", first)
    return m.group(1) + m.group(2) + m.group(3) if m else first


def slurm_env(environ=None) -> dict:
    """torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) for a task of a SLURM
    job step with several tasks (``srun``); ``{}`` elsewhere (a batch script itself has no step)."""
    env = os.environ if environ is None else environ
    try:
        ntasks = int(env.get("SLURM_STEP_NUM_TASKS", "0") or 0)
    except ValueError:
        return {}
    if ntasks <= 1 or "SLURM_PROCID" not in env:
        return {}
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "localhost"
    job = int(re.sub(r"\D", "", env.get("SLURM_JOB_ID", "0")) or 0)
    restarts = int(env.get("SLURM_RESTART_COUNT", "0") or 0)
    # One port per job and attempt, the same on every task (a requeued job may find the old one in TIME_WAIT).
    port = env.get("MASTER_PORT") or str(20000 + (job * 7 + restarts) % 20000)
    return dict(RANK=env["SLURM_PROCID"], WORLD_SIZE=str(ntasks), LOCAL_RANK=env.get("SLURM_LOCALID", "0"),
                LOCAL_WORLD_SIZE=str(env.get("SLURM_NTASKS_PER_NODE", "")).split("(")[0] or str(ntasks),
                MASTER_ADDR=env.get("MASTER_ADDR") or first_host(nodelist), MASTER_PORT=port)


def init_from_env(device_kind: str) -> tuple[int, int, int]:
    """Join the process group that ``torchrun`` (or else a SLURM job step) describes in the environment.

    Returns ``(rank, world_size, local device index)``. Uses NCCL on CUDA and Gloo on the CPU.
    """
    if "WORLD_SIZE" not in os.environ:
        os.environ.update(slurm_env())  # torch's env:// initialisation then reads them, as under torchrun
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return 0, 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device_kind == "cuda":
        # Tasks that see only their own GPU (SLURM's per-task binding) use device 0.
        local_rank %= max(1, torch.cuda.device_count())
    if not is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if device_kind == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), local_rank


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
