"""PaDiM's ONNX export graph (``PaDiM.export_spec``, traced by ``tools/export.py``)."""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..base import ExportSpec

OUTPUT_NAMES = ("anomaly_map", "pred_score", "raw_map", "raw_score")


class PaDiMExport(nn.Module):
    """Image (B, 3, H, W) float32 in [0, 1] -> (anomaly_map (B, 1, S, S) and pred_score (B,)
    normalised to [0, 1] with 0.5 = fitted threshold, raw_map, raw_score unnormalised).
    Resizes without antialias (ONNX has no antialiased resize)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, image: torch.Tensor):
        raw = self.inner.raw_maps(image, antialias=False)
        raw_score = raw.amax(dim=(1, 2, 3))
        return (self.inner.normalize(raw, "pixel"), self.inner.normalize(raw_score, "image"),
                raw, raw_score)


def padim_export_spec(model: nn.Module) -> ExportSpec:
    """The export graph of a fitted PaDiM; ValueError for float16 statistics."""
    if model.precision_factor.dtype != torch.float32:
        raise ValueError("precision_dtype float16 is not exportable; export a float32 model")
    # the tracer walks state_dict(keep_vars=True) and cannot take the module's extra state
    # (a dict of pre-processing/calibration facts): trace a shallow copy without it
    plain = copy.copy(model)
    plain.__class__ = type(f"{type(model).__name__}Export", (type(model),),
                           {"get_extra_state": nn.Module.get_extra_state})
    return ExportSpec(PaDiMExport(plain).eval(), OUTPUT_NAMES, (model.input_size, model.input_size))
