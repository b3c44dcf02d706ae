"""Where a test pipeline's output lies in the original picture (to draw maps on the original).

Results in model-input pixels (``AnomalyResult`` maps) cover the canvas the pipeline made:
after ``Resize`` the whole picture, after ``Resize`` + ``CenterCrop`` only its centre, after
``Pad`` the picture plus a border. :func:`input_frame` finds that region by sending
coordinate ramps through the pipeline itself, so every geometric transform torchvision
applies to images is followed without knowing the transforms one by one.
"""
from __future__ import annotations

import logging
import weakref
from typing import Any, Callable

import numpy as np
import torch
from torchvision import tv_tensors

logger = logging.getLogger("defectkit")
_CACHE: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def _fit_span(u: np.ndarray, n: int) -> tuple[float, float] | None:
    """Affine fit ``u[j] = a * (j + 0.5) + b`` over the interior of one row -> span at 0 and n."""
    j = np.flatnonzero(np.isfinite(u))
    if len(j) < 2:
        return None
    if len(j) >= 8:                       # antialiased resizes blur the outermost pixels
        j = j[len(j) // 8: len(j) - len(j) // 8]
    a, b = np.polyfit(j + 0.5, u[j], 1)
    lo, hi = float(b), float(a * n + b)
    return (lo, hi) if np.isfinite([lo, hi]).all() and hi - lo > 1e-6 else None


def input_frame(pipeline: Callable[[dict], dict] | None, height: int,
                width: int) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)``: the region of a ``height`` x ``width`` original picture, in its
    pixels (floats, may reach outside it when the pipeline pads), that the canvas made by
    ``pipeline`` (a sample-dict transform, e.g. ``build_pipeline(cfg.data.test.pipeline)``)
    covers. The whole picture when ``pipeline`` is None or the probe cannot tell (a pipeline
    that mixes colour channels or needs keys other than ``image``; logged at DEBUG).

    Cost: three passes of the pipeline over a float (3, H, W) image (about 1 s for
    4000x3000), once per pipeline and size (cached).
    """
    whole = (0.0, 0.0, float(width), float(height))
    if pipeline is None or height < 1 or width < 1:
        return whole
    try:
        cache = _CACHE.setdefault(pipeline, {})
    except TypeError:                 # not weak-referenceable: no cache
        cache = {}
    if (height, width) not in cache:
        cache[(height, width)] = _probe(pipeline, height, width) or whole
    return cache[(height, width)]


def _probe(pipeline, height: int, width: int) -> tuple[float, float, float, float] | None:
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) / width
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) / height
    ramp = torch.stack([xs.expand(height, width), ys[:, None].expand(height, width),
                        torch.full((height, width), 0.5)])
    outs: list[Any] = []
    try:
        for img in (torch.zeros(3, height, width), torch.ones(3, height, width), ramp):
            sample = {"image": tv_tensors.Image(img), "meta": {"orig_size": (height, width)}}
            outs.append(torch.as_tensor(pipeline(sample)["image"]).float())
    except Exception as e:            # a visual aid only: fall back to the whole picture
        logger.debug("input_frame: probe through the pipeline failed (%s); using the whole image", e)
        return None
    zero, one, r = outs
    den = one - zero
    frac = torch.where(den.abs() > 1e-6, (r - zero) / den, torch.nan).numpy()   # NaN: padding
    oh, ow = frac.shape[-2:]
    sx = _fit_span(frac[0, oh // 2], ow)
    sy = _fit_span(frac[1, :, ow // 2], oh)
    sx, sy = sx or (0.0, 1.0), sy or (0.0, 1.0)    # a 1-pixel side has no ramp: all of it
    return (sx[0] * width, sy[0] * height, sx[1] * width, sy[1] * height)
