"""The one place where image and mask pixels are decoded (every reader and dataset,
``tools/infer.py`` and the anomaly path go through these functions).

* ``open_image``: a decoded PIL image, turned as it is displayed when
  ``exif_orientation`` (``PIL.ImageOps.exif_transpose``: a phone or line camera held
  sideways stores the raw grid plus an EXIF Orientation tag, and LabelMe, LabelImg,
  CVAT and COCO tools all annotate the displayed image).
  ``exif_orientation=False`` keeps the raw pixel grid (annotations made on it).
* ``decode_mask``: the class-index array of a mask file, from its real pixel values.
* ``exif_hint``: the sentence a size-mismatch error adds when EXIF may explain it.
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .common import DataFormatError, orientation_tag

MASK_MODES = ("1", "L", "P", "LA", "I;16", "I;16L", "I;16B", "I", "RGB", "RGBA")


def open_image(path: str | os.PathLike, exif_orientation: bool = True, what: str = "image",
               convert: Callable[[Image.Image], Image.Image] | None = None) -> Image.Image:
    """The decoded PIL image of ``path`` (mode as stored), EXIF-transposed when
    ``exif_orientation``, then passed through ``convert`` (e.g. to RGB; done while the
    file is open, which saves a copy). DataFormatError naming ``path`` when it is missing
    or cannot be decoded (``what`` names the kind of file in the message)."""
    try:
        with Image.open(path) as im:
            turn = exif_orientation and orientation_tag(im) != 1   # the header's tag, as image_size
            im.load()   # decodes the pixels: a truncated file fails here, by name
            out = ImageOps.exif_transpose(im) if turn else im
            if convert is not None:
                out = convert(out)
            return out if out is not im else im.copy()   # never the closed file's image
    except FileNotFoundError:
        raise DataFormatError(f"{path}: {what} file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataFormatError(f"{path}: cannot decode {what}: {e}") from e


def decode_mask(path: str | os.PathLike, exif_orientation: bool = True) -> np.ndarray:
    """(H, W) int64 class-index array of a mask file, from its real pixel values.

    Modes: ``1`` (0/1), ``L``, ``P`` (the palette indices), ``LA`` (the L band; alpha
    is ignored), ``I;16``, ``I``, and ``RGB``/``RGBA`` when R == G == B at every pixel
    (a grey mask saved in colour; alpha is ignored). Any other mode, a colour mask with
    differing bands, or a mask drawn only in its alpha channel (constant grey values,
    varying alpha) raises DataFormatError naming the file and the mode.
    """
    im = open_image(path, exif_orientation, what="mask")
    mode = im.mode
    if mode not in MASK_MODES:
        raise DataFormatError(f"{path}: mask mode {mode!r} is not supported (a mask must be a "
                              f"single-channel class-index image; modes: {', '.join(MASK_MODES)})")
    if mode in ("LA", "RGBA"):       # alpha is ignored, unless it is where the mask is
        alpha = np.asarray(im.getchannel("A"))
        grey = np.asarray(im.getchannel("L") if mode == "LA" else im.convert("RGB"))
        if alpha.min() != alpha.max() and grey.min() == grey.max():
            raise DataFormatError(f"{path}: mask mode {mode!r} varies only in its alpha channel "
                                  f"(the {'L' if mode == 'LA' else 'RGB'} values are all "
                                  f"{int(grey.flat[0])}); save the class indices in the grey values")
    if mode == "LA":
        im = im.getchannel("L")
    arr = np.asarray(im)
    if mode in ("RGB", "RGBA"):
        rgb = arr[..., :3]
        differ = (rgb[..., 0] != rgb[..., 1]) | (rgb[..., 0] != rgb[..., 2])
        if differ.any():
            y, x = (int(v[0]) for v in np.nonzero(differ))
            raise DataFormatError(f"{path}: mask mode {mode!r} has colour pixels (R, G, B differ, "
                                  f"e.g. {tuple(int(v) for v in rgb[y, x])} at x={x}, y={y}); "
                                  f"a mask must be a single-channel class-index image")
        arr = rgb[..., 0]
    return arr.astype(np.int64)


def exif_hint(path: str | os.PathLike, exif_orientation: bool) -> str:
    """``""``, or a sentence for a size mismatch on an image whose EXIF orientation
    is not the identity: how it was read and which ``exif_orientation`` to set."""
    try:
        with Image.open(path) as im:
            tag = orientation_tag(im)
    except (OSError, UnidentifiedImageError):
        return ""
    if tag == 1:
        return ""
    if exif_orientation:
        return (f" ({path} has EXIF orientation {tag} and is read as displayed, turned from "
                f"its stored pixel grid; if the annotations were made on the raw grid, set "
                f"exif_orientation: false in the dataset config)")
    return (f" ({path} has EXIF orientation {tag} and exif_orientation is false, so its raw "
            f"pixel grid is read; if the annotations were made on the image as displayed, "
            f"set exif_orientation: true in the dataset config)")
