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
the old file or the new one, never a half-written file under a final name (a kill
leaves the temp file; :func:`remove_stale_temp_files` clears them when a run starts).
A checkpoint whose weights or buffers hold NaN/Inf is never written
(:class:`NonFiniteCheckpointError`). The model type is the one of ``meta.config.model.type``.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from ..models.weights import (CheckpointError, CheckpointNotFoundError, LoadReport,  # noqa: F401
                              check_model_type, checkpoint_model_type, extract_state_dict, has_ema,
                              load_checkpoint, load_state_dict, select_weights, strip_prefix)
from .distributed import unwrap_model

LATEST = "latest.pth"
LAST_CHECKPOINT = "last_checkpoint"


class NonFiniteCheckpointError(CheckpointError):
    """A checkpoint would hold NaN/Inf weights or buffers, so it was not written."""


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
    """Write ``checkpoint`` to ``path`` atomically (temp file + fsync + ``os.replace``).

    Raises :class:`NonFiniteCheckpointError` (nothing written) when any floating-point
    tensor of ``checkpoint["state_dict"]`` (parameters and buffers) holds NaN or Inf.
    """
    path = Path(path)
    bad = nonfinite_tensors(checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None)
    if bad:
        raise NonFiniteCheckpointError(f"{path}: not written: {describe_nonfinite(bad)}")
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
    """Point ``last_checkpoint`` and then ``latest.pth`` at ``ckpt_path`` (a complete file).

    The pointer is written first: a kill between the two steps leaves the pointer on the
    newest complete file and ``latest.pth`` one save behind, which
    :func:`repair_latest` (run when training starts) and :func:`find_latest_checkpoint`
    both resolve to the newest file.
    """
    work_dir, ckpt_path = Path(work_dir), Path(ckpt_path)
    name = ckpt_path.name if ckpt_path.parent.resolve() == work_dir.resolve() else str(ckpt_path.resolve())
    _write_text_atomic(work_dir / LAST_CHECKPOINT, name + "\n")
    link_or_copy(ckpt_path, work_dir / LATEST)


def _pointer_target(work_dir: Path) -> Path | None:
    marker = work_dir / LAST_CHECKPOINT
    try:
        name = marker.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not name:
        return None
    p = Path(name)
    p = p if p.is_absolute() else work_dir / p
    return p if p.is_file() else None


def _position(path: Path) -> tuple[int, int] | None:
    """``(iter, epoch)`` stored in a checkpoint's meta; None when it cannot be read."""
    try:
        meta = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("meta") or {}
        return int(meta.get("iter", -1)), int(meta.get("epoch", -1))
    except Exception:  # noqa: BLE001 - any unreadable file is simply not a candidate
        return None


def _newest(work_dir: Path) -> tuple[Path | None, Path | None, Path | None]:
    """(newest readable checkpoint, pointer target, latest.pth) of ``work_dir``."""
    target, latest = _pointer_target(work_dir), work_dir / LATEST
    latest = latest if latest.is_file() else None
    if target is None or latest is None or os.path.samefile(target, latest):
        return target or latest, target, latest
    pos_t, pos_l = _position(target), _position(latest)
    if pos_t is None and pos_l is None:
        return target, target, latest
    newest = latest if pos_t is None or (pos_l is not None and pos_l > pos_t) else target
    return newest, target, latest


def find_latest_checkpoint(work_dir: str | os.PathLike) -> Path | None:
    """The newest of the file named by ``work_dir/last_checkpoint`` and ``latest.pth``
    (by the iteration stored in each; the named file on a tie), or None when neither exists."""
    return _newest(Path(work_dir))[0]


def repair_latest(work_dir: str | os.PathLike) -> str | None:
    """Make ``last_checkpoint`` and ``latest.pth`` name the same, newest checkpoint (after a
    run was killed between updating the two). Returns a note of what changed, or None."""
    work_dir = Path(work_dir)
    newest, target, latest = _newest(work_dir)
    if newest is None or (target is not None and latest is not None and newest == target
                          and os.path.samefile(target, latest)):
        return None
    if newest == target:
        update_latest(work_dir, target)
        return f"latest.pth lagged {LAST_CHECKPOINT}: repointed it to {target.name}"
    if target is not None:   # latest.pth is newer than the pointer: name it
        same = sorted((not _PERIODIC_RE.match(p.name), p.name) for p in work_dir.glob("*.pth")
                      if p.name != LATEST and os.path.samefile(p, newest))   # epoch_N before best_*
        same = [work_dir / name for _, name in same]
        _write_text_atomic(work_dir / LAST_CHECKPOINT, (same[0].name if same else LATEST) + "\n")
        return f"{LAST_CHECKPOINT} lagged latest.pth: now names {same[0].name if same else LATEST}"
    return None


_TMP_RE = re.compile(r"^\..+\.tmp-\d+$")
_PERIODIC_RE = re.compile(r"^(epoch|iter)_\d+\.pth$")


def remove_stale_temp_files(work_dir: str | os.PathLike) -> list[str]:
    """Delete the ``.<name>.tmp-<pid>`` files that killed saves left in ``work_dir`` (call it
    only while holding the work dir's lock: no other run is writing there). Returns
    ``"name (N MB)"`` for each file removed."""
    removed = []
    for p in sorted(Path(work_dir).glob(".*.tmp-*")):
        if _TMP_RE.match(p.name) and p.is_file():
            size = p.stat().st_size
            p.unlink(missing_ok=True)
            removed.append(f"{p.name} ({size / 2**20:.1f} MB)")
    return removed


# ----------------------------------------------------------------------------- reading
def nonfinite_tensors(state_dict: dict | None) -> dict[str, str]:
    """``{name: "nan" | "inf" | "nan+inf"}`` for every floating-point tensor of
    ``state_dict`` that holds NaN or +-Inf (empty when all are finite)."""
    bad = {}
    for k, v in (state_dict or {}).items():
        if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex()):
            if not bool(torch.isfinite(v).all()):
                kinds = [n for n, m in (("nan", torch.isnan(v)), ("inf", torch.isinf(v))) if bool(m.any())]
                bad[k] = "+".join(kinds)
    return bad


def describe_nonfinite(bad: dict[str, str], total: int | None = None) -> str:
    """One line about :func:`nonfinite_tensors`' result, e.g. ``2 tensors hold NaN/Inf: bn.running_var (inf), ...``."""
    shown = ", ".join(f"{k} ({v})" for k, v in list(bad.items())[:8])
    more = f", ... ({len(bad)} in all)" if len(bad) > 8 else ""
    of = f" of {total}" if total is not None else ""
    return f"{len(bad)}{of} tensors hold NaN/Inf: {shown}{more}"


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


def load_weights_from(model: torch.nn.Module, path: str | os.PathLike, model_type: str | None,
                      min_match: float, logger) -> LoadReport:
    """``load_from``: non-strict weight loading of ``path`` into ``model``, logged (a warning
    when keys differ or the checkpoint is of another model type than ``model_type``).

    Raises :class:`CheckpointError` (with the matched/total tensor counts and both model
    types) when no tensor, or fewer than the share ``min_match`` (``train.load_from_min_match``)
    of the model's tensors, match."""
    src = str(path)
    ckpt = load_checkpoint(path, map_location="cpu")
    stored = checkpoint_model_type(ckpt)
    types = (f"checkpoint model type '{stored or 'unknown (no defectkit meta)'}', "
             f"config model.type '{model_type}'")
    report = load_state_dict(model, extract_state_dict(ckpt, src), strict=False, source=src)
    if report.total and (report.matched == 0 or report.share < min_match):
        raise CheckpointError(
            f"{src}: load_from matched {report.matched} of the model's {report.total} tensors "
            f"({report.share:.0%}; train.load_from_min_match is {min_match:g}); {types}"
            + ("" if stored in (None, model_type) else ": a checkpoint of another model type")
            + "; give a checkpoint of this model (or of its backbone)"
            + (", or lower train.load_from_min_match" if report.matched else ""))
    if stored not in (None, model_type):
        logger.warning(f"load_from {src}: {types}; {report.matched}/{report.total} tensors matched")
    log = logger.info if report.clean else logger.warning
    log(f"load_from {path}: weights only (optimizer, schedule and counters start fresh); "
        f"{report.matched}/{report.total} model tensors loaded; {report}")
    return report
