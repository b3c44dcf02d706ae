"""Checkpoint files: atomic writes, ``latest.pth`` / ``last_checkpoint``, tolerant loading.

Format (a dict saved with ``torch.save``; every value is a tensor or a plain Python type,
so ``torch.load(..., weights_only=True)`` reads it)::

    {"meta": {"config": <resolved config dict>, "epoch": int, "iter": int, "seed": int,
              "versions": {"torch", "torchvision", "defectkit", "python"}, "classes": [...],
              "best_metric": {"name", "value", "epoch", "iter"} | None, "time": ISO-8601},
     "state_dict": model weights (no ``module.`` prefix),
     "optimizer": optimizer.state_dict() | None,
     "scheduler": lr schedule description | None,
     "scaler": GradScaler.state_dict() | None,
     "rng": {"torch", "numpy", "python", "cuda"?}}

A file is first written to ``.<name>.tmp-<pid>`` in the same directory, flushed and
fsynced, then ``os.replace``-d onto its final name, so a crash or a kill leaves either
the old file or the new one, never a half-written file under a final name.
"""
from __future__ import annotations

import datetime as _dt
import os
import pickle
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .distributed import unwrap_model

LATEST = "latest.pth"
LAST_CHECKPOINT = "last_checkpoint"


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be found, read or applied; the message names the file."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    pass


# ----------------------------------------------------------------------------- writing
def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _write(obj: Any, f) -> None:
    """Serialise ``obj`` into the open binary file ``f`` (tests patch this to simulate crashes)."""
    torch.save(obj, f)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:       # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(checkpoint: dict, path: str | os.PathLike) -> Path:
    """Write ``checkpoint`` to ``path`` atomically (temp file + fsync + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            _write(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Make ``dst`` an identical file to ``src`` atomically: a hard link when the file
    system allows it, else a copy; either way through a temp name and ``os.replace``."""
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        return dst
    tmp = _tmp_name(dst)
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(dst.parent)
    return dst


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = _tmp_name(path)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def update_latest(work_dir: str | os.PathLike, ckpt_path: str | os.PathLike) -> None:
    """Point ``latest.pth`` and ``last_checkpoint`` at ``ckpt_path`` (a file in ``work_dir``)."""
    work_dir, ckpt_path = Path(work_dir), Path(ckpt_path)
    link_or_copy(ckpt_path, work_dir / LATEST)
    name = ckpt_path.name if ckpt_path.parent.resolve() == work_dir.resolve() else str(ckpt_path.resolve())
    _write_text_atomic(work_dir / LAST_CHECKPOINT, name + "\n")


def find_latest_checkpoint(work_dir: str | os.PathLike) -> Path | None:
    """The checkpoint named by ``work_dir/last_checkpoint``, else ``latest.pth``, else None."""
    work_dir = Path(work_dir)
    marker = work_dir / LAST_CHECKPOINT
    if marker.is_file():
        name = marker.read_text(encoding="utf-8").strip()
        if name:
            p = Path(name)
            p = p if p.is_absolute() else work_dir / p
            if p.is_file():
                return p
    latest = work_dir / LATEST
    return latest if latest.is_file() else None


# ----------------------------------------------------------------------------- reading
def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu",
                    weights_only: bool = True) -> dict:
    """``torch.load`` with errors that name the file.

    ``weights_only=True`` (the default) is enough for every checkpoint defectkit writes;
    pass ``False`` only for a trusted file that holds other pickled objects.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint file not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if weights_only and "Unsupported global" in msg:
            detail = msg[msg.index("Unsupported global"):].split(" was not")[0]
            raise CheckpointError(
                f"{path}: holds objects that torch.load(weights_only=True) refuses to unpickle "
                f"({detail}); if you trust this file, load it with weights_only=False") from e
        detail = msg.split("WeightsUnpickler error:")[-1].strip().splitlines()[0] if msg else ""
        raise CheckpointError(f"{path}: corrupt, truncated or not a PyTorch checkpoint "
                              f"(UnpicklingError: {detail})") from e
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path}: corrupt, truncated or not a PyTorch checkpoint "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    return obj


def extract_state_dict(ckpt: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Model weights from a defectkit checkpoint (``state_dict``), a torchvision/detectron2
    one (``model``) or a bare state dict."""
    if isinstance(ckpt, dict):
        for key in ("state_dict", "model"):
            if isinstance(ckpt.get(key), dict):
                return ckpt[key]
        if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            return ckpt
    raise CheckpointError(f"{source}: no model weights found (expected a 'state_dict' or "
                          f"'model' entry, or a plain state dict)")


@dataclass
class LoadReport:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)   # "name: ckpt shape vs model shape"

    @property
    def clean(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        if self.clean:
            return "all keys matched"
        parts = []
        for label, keys in (("missing keys", self.missing), ("unexpected keys", self.unexpected),
                            ("shape mismatches (skipped)", self.mismatched)):
            if keys:
                shown = ", ".join(keys[:20]) + (f", ... ({len(keys)} in all)" if len(keys) > 20 else "")
                parts.append(f"{label}: {shown}")
        return "; ".join(parts)


def strip_prefix(state_dict: dict, prefix: str = "module.") -> dict:
    """Remove ``prefix`` when every key has it (weights saved from a DDP-wrapped model)."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def load_state_dict(model: torch.nn.Module, state_dict: dict, strict: bool = True,
                    source: str = "checkpoint") -> LoadReport:
    """Load weights into ``model`` (DDP unwrapped, ``module.`` stripped).

    ``strict=True`` raises :class:`CheckpointError` listing every difference;
    ``strict=False`` skips shape-mismatched tensors and returns what did not match.
    """
    model = unwrap_model(model)
    state_dict = strip_prefix(dict(state_dict))
    own = model.state_dict()
    report = LoadReport()
    skipped = set()
    for k, v in list(state_dict.items()):
        if k in own and isinstance(v, torch.Tensor) and v.shape != own[k].shape:
            report.mismatched.append(f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}")
            skipped.add(k)
            del state_dict[k]
    report.missing = [k for k in own if k not in state_dict and k not in skipped]
    report.unexpected = [k for k in state_dict if k not in own]
    if strict and not report.clean:
        raise CheckpointError(f"{source}: weights do not match the model: {report}")
    model.load_state_dict(state_dict, strict=False)
    return report


# ----------------------------------------------------------------------------- content
def versions() -> dict[str, str]:
    import torchvision

    import defectkit

    # str(): torch.__version__ is a TorchVersion, which weights_only loading rejects
    return {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "defectkit": str(defectkit.__version__), "python": platform.python_version(),
            "cuda": str(torch.version.cuda)}


def make_meta(config: dict | None, epoch: int, iteration: int, seed: int | None,
              classes: list[str] | None, best_metric: dict | None = None, **extra: Any) -> dict:
    meta = {"config": config, "epoch": int(epoch), "iter": int(iteration), "seed": seed,
            "versions": versions(), "classes": list(classes) if classes is not None else None,
            "best_metric": best_metric,
            "time": _dt.datetime.now().astimezone().isoformat(timespec="seconds")}
    meta.update(extra)
    return meta


def make_checkpoint(model: torch.nn.Module, meta: dict, optimizer=None, scheduler=None,
                    scaler=None, rng: dict | None = None) -> dict:
    """The checkpoint dict; tensors are moved to CPU so the file loads anywhere."""
    sd = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v
          for k, v in unwrap_model(model).state_dict().items()}
    return {
        "meta": meta,
        "state_dict": sd,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": rng,
    }
