"""Seeds, determinism switches and RNG state capture (for exact resume).

RNG states are stored as plain Python types / tensors so a checkpoint still loads with
``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import os
import random
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch


def random_seed() -> int:
    """A fresh seed for runs that did not set one (recorded in the checkpoint)."""
    return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF


def set_seed(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (all devices); optionally force deterministic kernels.

    ``deterministic`` turns on ``torch.use_deterministic_algorithms`` (ops without a
    deterministic implementation then raise), ``cudnn.deterministic`` and switches off
    ``cudnn.benchmark``; it also sets ``CUBLAS_WORKSPACE_CONFIG`` as CUDA requires.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)      # also seeds every CUDA device
    set_deterministic(deterministic)


def set_deterministic(deterministic: bool) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(bool(deterministic))
    torch.backends.cudnn.deterministic = bool(deterministic)
    if deterministic:
        torch.backends.cudnn.benchmark = False


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (e.g. (seed, epoch, rank)), collision-poor."""
    h = 0x12345678
    for p in parts:
        h = (h * 0x9E3779B97F4A7C15 + int(p) + 0x632BE59BD9B4E019) % 2**64
        h ^= h >> 29
    return h % 2**63


def worker_init_fn(worker_id: int) -> None:
    """Seed python and numpy in a DataLoader worker from torch's per-worker seed
    (which the trainer derives from (seed, epoch, rank) through the loader generator)."""
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def get_rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_state[0], "keys": np_state[1].tolist(), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": _py_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state((n["name"], np.asarray(n["keys"], dtype=np.uint32), n["pos"],
                             n["has_gauss"], n["cached_gaussian"]))
    if "python" in state:
        random.setstate(_py_state_from_plain(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


@contextmanager
def preserved_rng():
    """Run a block (e.g. validation) without disturbing the training RNG streams."""
    state = get_rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def _py_state_to_plain(s: tuple) -> list:
    version, internal, gauss = s
    return [version, list(internal), gauss]


def _py_state_from_plain(s: list) -> tuple:
    version, internal, gauss = s
    return (version, tuple(internal), gauss)
