"""Process-group helpers for ``torchrun`` (single-process runs need none of this).

``torchrun --nproc_per_node N tools/train.py cfg.yaml`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` reads them
and joins the group (nccl when CUDA is available, gloo otherwise). Every helper below
also works without a process group (rank 0 of a world of 1).
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    return get_rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(backend: str | None = None, device: str | None = None) -> tuple[int, int, int]:
    """Join the process group described by torchrun's env vars; returns (rank, world, local_rank).

    Does nothing (and returns ``(0, 1, 0)``) when ``WORLD_SIZE`` is unset or 1, and
    nothing more when the group already exists. ``backend`` defaults to nccl when
    training on CUDA, gloo otherwise (``device`` is the configured device string).
    """
    if is_distributed():
        return get_rank(), get_world_size(), get_local_rank()
    if not launched_by_torchrun():
        return 0, 1, 0
    local_rank = get_local_rank()
    use_cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    if backend is None:
        backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, init_method="env://")
    return dist.get_rank(), dist.get_world_size(), local_rank


def destroy_distributed() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed() and get_world_size() > 1:
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj_from_rank0, obj_from_rank1, ...]`` on every rank (``[obj]`` when alone)."""
    if not is_distributed() or get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_distributed() or get_world_size() == 1:
        return obj
    box = [obj if get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_lists(items: list, dst_only: bool = True) -> list | None:
    """Concatenate every rank's list in rank order.

    Returns the concatenation on rank 0 (on every rank when ``dst_only`` is False)
    and ``None`` on the other ranks.
    """
    parts = all_gather_object(list(items))
    if dst_only and not is_main_process():
        return None
    return [x for part in parts for x in part]


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over ranks (in place on a copy); identity when alone."""
    if not is_distributed() or get_world_size() == 1:
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / get_world_size()


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` (or the model)."""
    while isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        model = model.module
    return model
