"""Registered transforms: thin wrappers over ``torchvision.transforms.v2``.

Each transform takes the whole sample dict (see docs/architecture.md). The
tv_tensors in it (``image``, ``boxes``, ``mask``) are transformed together, so
boxes and masks follow resizes, flips and crops; plain values (``labels``,
``is_defective``, ``label``, ``meta``) pass through untouched, except where noted
(``Resize``/``Pad`` record ``meta['scale_factor']``, ``img_shape``, ``pad_shape``;
``SanitizeBoundingBoxes`` filters ``labels`` and ``grades`` with the boxes).

Sizes are written ``(w, h)`` like mmdet's ``scale`` (an int means a square), for
every transform here, also the crops (torchvision itself uses ``(h, w)``).
Images are float in [0, 1] until ``Normalize``; use ImageNet mean/std on that
range (mmdet's 0-255 values divided by 255 are the same normalisation).
Random transforms draw from torch's global RNG, which the dataset seeds per
sample from ``(seed, epoch, index)``.

Constructors check their values (sizes > 0, probabilities in [0, 1], known names)
and raise ``ValueError`` with ``key: problem``; ``validate_config`` builds every
pipeline step at load, so such an error names the split and the step before any
work starts (``data.train.pipeline.2 (RandomFlip): direction: ...``).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..registry import TRANSFORMS


def _wh(size: int | Sequence[int], name: str) -> tuple[int, int]:
    """``(w, h)`` from an int (a square) or a pair; both must be positive."""
    if isinstance(size, (int, float)) and not isinstance(size, bool):
        wh = int(size), int(size)
    elif isinstance(size, (list, tuple)) and len(size) == 2:
        wh = int(size[0]), int(size[1])
    else:
        raise ValueError(f"{name}: expected an int or (w, h), got {size!r}")
    if min(wh) <= 0:
        raise ValueError(f"{name}: sizes must be > 0, got {size!r}")
    return wh


def _prob(p: float, name: str = "prob") -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"{name}: must be a number in [0, 1], got {p!r}")
    return float(p)


def _one_of(value: Any, options: Sequence[str], name: str) -> Any:
    if value not in options:
        raise ValueError(f"{name}: {value!r} is not one of {list(options)}")
    return value


def _range(pair: Sequence[float], name: str, low: float = 0.0) -> tuple[float, float]:
    """A ``(min, max)`` pair with ``low <= min <= max``."""
    if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not low <= pair[0] <= pair[1]:
        raise ValueError(f"{name}: expected (min, max) with {low} <= min <= max, got {pair!r}")
    return float(pair[0]), float(pair[1])


def _hw_list(size) -> list[int]:
    w, h = _wh(size, "size")
    return [h, w]


def _query_hw(flat_inputs: list[Any]) -> tuple[int, int]:
    for t in (tv_tensors.Image, tv_tensors.Mask, tv_tensors.BoundingBoxes):
        for x in flat_inputs:
            if isinstance(x, t):
                h, w = F.get_size(x)
                return int(h), int(w)
    raise ValueError("transform: the sample has no image, mask or boxes to size from")


def _image_hw(sample: Any) -> tuple[int, int] | None:
    if isinstance(sample, dict) and isinstance(sample.get("image"), torch.Tensor):
        return tuple(sample["image"].shape[-2:])
    return None


def _set_meta(sample: Any, **values: Any) -> None:
    if isinstance(sample, dict) and isinstance(sample.get("meta"), dict):
        sample["meta"] = {**sample["meta"], **values}


def _interp(name: str) -> v2.InterpolationMode:
    try:
        return v2.InterpolationMode(name)
    except ValueError:
        raise ValueError(f"interpolation: {name!r} is not one of "
                         f"{[m.value for m in v2.InterpolationMode]}") from None


class _Wrapped(nn.Module):
    """Calls one torchvision v2 transform on the whole sample."""

    def __init__(self, t: nn.Module):
        super().__init__()
        self.t = t

    def forward(self, sample: Any) -> Any:
        return self.t(sample)

    def extra_repr(self) -> str:
        return repr(self.t)


# ------------------------------------------------------------------------- geometry
@TRANSFORMS.register()
class Resize(v2.Transform):
    """mmdet ``Resize``. ``keep_ratio=True``: scale factor
    ``min(max(scale) / long_edge, min(scale) / short_edge)`` and new size
    ``int(x * factor + 0.5)`` (2446x1000 with (1333, 800) -> 1333x545);
    ``keep_ratio=False``: exactly ``scale = (w, h)``. Images use ``interpolation``
    with antialias, masks nearest. Updates ``meta['scale_factor']`` (w, h factors
    from the original image) and ``meta['img_shape']`` (h, w)."""

    def __init__(self, scale: int | Sequence[int] = (1333, 800), keep_ratio: bool = True,
                 interpolation: str = "bilinear", antialias: bool = True):
        super().__init__()
        self.scale = _wh(scale, "scale")
        self.keep_ratio = bool(keep_ratio)
        self.interpolation = _interp(interpolation)
        self.antialias = bool(antialias)

    def target_size(self, h: int, w: int) -> tuple[int, int]:
        """(new_h, new_w) for an image of (h, w)."""
        if not self.keep_ratio:
            return self.scale[1], self.scale[0]
        long_max, short_max = max(self.scale), min(self.scale)
        factor = min(long_max / max(h, w), short_max / min(h, w))
        return int(h * factor + 0.5), int(w * factor + 0.5)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"size": list(self.target_size(*_query_hw(flat_inputs)))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.resize, inpt, params["size"], interpolation=self.interpolation,
                                 antialias=self.antialias)

    def forward(self, *inputs: Any) -> Any:
        sample = inputs[0] if len(inputs) == 1 else inputs
        before = _image_hw(sample)
        out = super().forward(*inputs)
        after = _image_hw(out)
        if before and after:
            sx, sy = (out.get("meta") or {}).get("scale_factor", (1.0, 1.0))
            _set_meta(out, scale_factor=(sx * after[1] / before[1], sy * after[0] / before[0]),
                      img_shape=after)
        return out


@TRANSFORMS.register()
class Pad(v2.Transform):
    """Pad bottom/right to a multiple of ``size_divisor`` or to ``size = (w, h)``
    (an image larger than ``size`` is an error). Images get ``fill``, masks
    ``mask_fill`` (0 = background; 255 if your loss ignores 255). Sets
    ``meta['pad_shape']`` (h, w)."""

    def __init__(self, size_divisor: int | None = None, size: int | Sequence[int] | None = None,
                 fill: float = 0, mask_fill: int = 0):
        super().__init__()
        if (size_divisor is None) == (size is None):
            raise ValueError("give exactly one of size_divisor and size")
        if size_divisor is not None and not size_divisor >= 1:
            raise ValueError(f"size_divisor: must be >= 1, got {size_divisor!r}")
        self.size_divisor = int(size_divisor) if size_divisor is not None else None
        self.size = _wh(size, "size") if size is not None else None
        self.fill = fill
        self.mask_fill = mask_fill

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = _query_hw(flat_inputs)
        if self.size_divisor:
            d = self.size_divisor
            th, tw = math.ceil(h / d) * d, math.ceil(w / d) * d
        else:
            tw, th = self.size
            if w > tw or h > th:
                raise ValueError(f"Pad: image {w}x{h} is larger than size {tw}x{th}; "
                                 f"resize it first")
        return {"padding": [0, 0, tw - w, th - h]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["padding"][2] == 0 and params["padding"][3] == 0:
            return inpt
        fill = self.mask_fill if isinstance(inpt, tv_tensors.Mask) else self.fill
        return self._call_kernel(F.pad, inpt, params["padding"], fill=fill)

    def forward(self, *inputs: Any) -> Any:
        out = super().forward(*inputs)
        hw = _image_hw(out)
        if hw:
            _set_meta(out, pad_shape=hw)
        return out


@TRANSFORMS.register()
class RandomFlip(_Wrapped):
    """Flip with probability ``prob``; ``direction`` 'horizontal' or 'vertical'."""

    def __init__(self, prob: float = 0.5, direction: str = "horizontal"):
        flips = {"horizontal": v2.RandomHorizontalFlip, "vertical": v2.RandomVerticalFlip}
        super().__init__(flips[_one_of(direction, list(flips), "direction")](p=_prob(prob)))


@TRANSFORMS.register()
class CenterCrop(_Wrapped):
    """Crop ``size = (w, h)`` from the centre (pads when the image is smaller).
    Follow with ``SanitizeBoundingBoxes`` for detection data."""

    def __init__(self, size: int | Sequence[int]):
        super().__init__(v2.CenterCrop(_hw_list(size)))


@TRANSFORMS.register()
class RandomCrop(_Wrapped):
    """Random ``size = (w, h)`` crop; ``pad_if_needed`` pads smaller images with ``fill``."""

    def __init__(self, size: int | Sequence[int], pad_if_needed: bool = True, fill: float = 0):
        super().__init__(v2.RandomCrop(_hw_list(size), pad_if_needed=pad_if_needed,
                                       fill={tv_tensors.Mask: 0, "others": fill}))


@TRANSFORMS.register()
class RandomResizedCrop(_Wrapped):
    """torchvision's RandomResizedCrop to ``size = (w, h)``."""

    def __init__(self, size: int | Sequence[int], scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3), antialias: bool = True):
        super().__init__(v2.RandomResizedCrop(_hw_list(size), scale=_range(scale, "scale"),
                                              ratio=_range(ratio, "ratio", low=1e-6),
                                              antialias=antialias))


class _PerBoxGetter:
    """The per-box tensors of a sample (a class, not a closure, so datasets pickle)."""

    def __init__(self, keys: tuple[str, ...]):
        self.keys = keys

    def __call__(self, sample: dict):
        found = tuple(sample[k] for k in self.keys if isinstance(sample.get(k), torch.Tensor))
        return found or None


@TRANSFORMS.register()
class SanitizeBoundingBoxes(nn.Module):
    """Remove boxes smaller than ``min_size``/``min_area`` or outside the image
    (after crops), with their ``labels`` and ``grades`` (severity, when the sample has
    them) and any other per-box tensor named in ``per_box_keys`` (a key the sample lacks is
    skipped). A semantic ``mask`` is never indexed. ``is_defective`` is recomputed: 1 iff
    a box is left (or the mask has a non-zero pixel)."""

    def __init__(self, min_size: float = 1.0, min_area: float = 1.0,
                 per_box_keys: Sequence[str] = ("labels", "grades")):
        super().__init__()
        self.t = v2.SanitizeBoundingBoxes(min_size=min_size, min_area=min_area,
                                          labels_getter=_PerBoxGetter(tuple(per_box_keys)))

    def forward(self, sample: dict) -> dict:
        if not isinstance(sample, dict) or "boxes" not in sample:
            return sample
        rest = {k: sample[k] for k in ("mask", "image") if k in sample}
        out = self.t({k: v for k, v in sample.items() if k not in rest})
        out.update(rest)
        if "is_defective" in out:
            defective = len(out["boxes"]) > 0
            if not defective and isinstance(out.get("mask"), torch.Tensor):
                defective = bool(out["mask"].bool().any())
            out["is_defective"] = int(defective)
        return {k: out[k] for k in sample}


@TRANSFORMS.register()
class KeepOriginal(nn.Module):
    """Keep a copy of the image as it is now under ``orig_image`` (a plain tensor, which the
    later v2 transforms pass through untouched), so a model can cut crops from the ORIGINAL
    resolution while its detector sees a resized input (the severity heads: research note
    severity.md §5.5). Place it after flips / crops and ``Normalize`` and before ``Resize``:
    ``[RandomFlip, Normalize, KeepOriginal, Resize, Pad]``; the model maps boxes back with
    ``meta['scale_factor']`` and takes the true size from ``meta['orig_size']``."""

    def forward(self, sample: dict) -> dict:
        if not isinstance(sample, dict) or "image" not in sample:
            raise ValueError("KeepOriginal: expects a sample dict with an 'image'")
        sample = dict(sample)
        sample["orig_image"] = sample["image"].as_subclass(torch.Tensor).clone()
        return sample


# ---------------------------------------------------------------------------- colour
@TRANSFORMS.register()
class Normalize(_Wrapped):
    """``(image - mean) / std`` on the [0, 1] image (ImageNet statistics by default)."""

    def __init__(self, mean: Sequence[float] = (0.485, 0.456, 0.406),
                 std: Sequence[float] = (0.229, 0.224, 0.225)):
        if len(mean) != len(std):
            raise ValueError(f"mean and std: one value per channel each, got {len(mean)} and {len(std)}")
        if not all(s > 0 for s in std):
            raise ValueError(f"std: every value must be > 0, got {list(std)}")
        super().__init__(v2.Normalize(mean=list(mean), std=list(std)))


@TRANSFORMS.register()
class ColorJitter(_Wrapped):
    """torchvision ColorJitter (image only)."""

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0,
                 hue: float = 0.0):
        super().__init__(v2.ColorJitter(brightness=brightness, contrast=contrast,
                                        saturation=saturation, hue=hue))


@TRANSFORMS.register()
class ToGray(_Wrapped):
    """Grayscale with ``prob`` (kept 3-channel so models need no change)."""

    def __init__(self, prob: float = 1.0):
        super().__init__(v2.RandomGrayscale(p=_prob(prob)))


@TRANSFORMS.register()
class GaussianBlur(_Wrapped):
    """torchvision GaussianBlur (sigma drawn from the ``sigma`` range)."""

    def __init__(self, kernel_size: int = 5, sigma: Sequence[float] = (0.1, 2.0)):
        if not kernel_size > 0 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: must be a positive odd int, got {kernel_size!r}")
        super().__init__(v2.GaussianBlur(kernel_size=kernel_size, sigma=_range(sigma, "sigma", low=1e-6)))


# --------------------------------------------------------------------------- compose
def build_pipeline(cfgs: list[dict] | None) -> v2.Compose | None:
    """Build a list of transform config dicts (``None``/``[]`` -> ``None``)."""
    if not cfgs:
        return None
    if not isinstance(cfgs, (list, tuple)):
        raise TypeError(f"pipeline: expected a list of transform dicts, got {cfgs!r}")
    built = []
    for i, c in enumerate(cfgs):
        try:
            built.append(c if callable(c) else TRANSFORMS.build(c))
        except (TypeError, ValueError, KeyError) as e:
            msg = e.args[0] if e.args else e
            name = c.get("type") if isinstance(c, dict) else repr(c)
            raise type(e)(f"pipeline[{i}] ({name}): {msg}") from e
    return v2.Compose(built)


@TRANSFORMS.register()
class Compose(nn.Module):
    """A nested pipeline, e.g. inside another pipeline."""

    config_children = {"pipeline": ("list", TRANSFORMS)}

    def __init__(self, pipeline: list[dict]):
        super().__init__()
        self.pipeline = build_pipeline(pipeline) or nn.Identity()

    def forward(self, sample: Any) -> Any:
        return self.pipeline(sample)
