"""Vector shapes for defects and their rasterisation.

Every defect is one simple polygon in pixel coordinates with PIL's convention (pixel
centres on integers, ``(0, 0)`` is the centre of the top-left pixel). Its mask is that
polygon rasterised by ``PIL.ImageDraw.polygon(fill=1, outline=1)``, which is exactly what
LabelMe's ``shape_to_mask`` does, so the LabelMe file and the masks agree pixel for pixel.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw


@dataclass
class Region:
    """A placed defect: its polygon and its tight boolean mask crop at (x0, y0)."""

    polygon: np.ndarray          # (K, 2) float64, x/y, clipped to the image
    mask: np.ndarray             # (h, w) bool, tight crop (no empty border rows/cols)
    x0: int
    y0: int

    @property
    def x1(self) -> int:         # exclusive
        return self.x0 + self.mask.shape[1]

    @property
    def y1(self) -> int:         # exclusive
        return self.y0 + self.mask.shape[0]

    @property
    def box(self) -> tuple[int, int, int, int]:
        """Tight box of the mask, xyxy with exclusive x1/y1 (pixel edges)."""
        return self.x0, self.y0, self.x1, self.y1

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    @property
    def area(self) -> int:
        return int(self.mask.sum())


def clip_polygon(poly: np.ndarray, h: int, w: int) -> np.ndarray:
    """Clamp the vertices into the image (pixel centres 0..w-1, 0..h-1)."""
    poly = np.asarray(poly, dtype=np.float64).reshape(-1, 2).copy()
    np.clip(poly[:, 0], 0.0, w - 1.0, out=poly[:, 0])
    np.clip(poly[:, 1], 0.0, h - 1.0, out=poly[:, 1])
    return poly


def rasterize(poly: np.ndarray, h: int, w: int):
    """Rasterise a polygon already clipped to the image.

    Returns ``(mask, x0, y0)`` with ``mask`` the tight bool crop, or ``None`` when empty.
    """
    xmin = int(np.floor(poly[:, 0].min())) - 1
    ymin = int(np.floor(poly[:, 1].min())) - 1
    xmax = int(np.ceil(poly[:, 0].max())) + 2
    ymax = int(np.ceil(poly[:, 1].max())) + 2
    xmin, ymin = max(xmin, 0), max(ymin, 0)
    xmax, ymax = min(xmax, w), min(ymax, h)
    if xmax <= xmin or ymax <= ymin:
        return None
    canvas = Image.new("L", (xmax - xmin, ymax - ymin), 0)
    shifted = poly - np.array([xmin, ymin], dtype=np.float64)
    ImageDraw.Draw(canvas).polygon([(float(x), float(y)) for x, y in shifted], fill=1, outline=1)
    m = np.asarray(canvas, dtype=bool)
    rows = np.flatnonzero(m.any(axis=1))
    cols = np.flatnonzero(m.any(axis=0))
    if rows.size == 0:
        return None
    m = m[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    return np.ascontiguousarray(m), xmin + int(cols[0]), ymin + int(rows[0])


def blob(rng: np.random.Generator, cx: float, cy: float, rx: float, ry: float,
         irregularity: float = 0.25, angle: float = 0.0, n: int | None = None) -> np.ndarray:
    """A star-shaped irregular closed outline (a few random radial harmonics)."""
    if n is None:
        n = int(np.clip(2 * np.pi * max(rx, ry) / 2.5, 10, 64))
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    k = np.arange(1, 6)[:, None]
    amps = rng.normal(0.0, irregularity, (5, 1)) / k
    phases = rng.uniform(0.0, 2 * np.pi, (5, 1))
    r = 1.0 + (amps * np.cos(k * t + phases)).sum(axis=0)
    r = np.clip(r, 0.4, 1.8)
    x, y = rx * r * np.cos(t), ry * r * np.sin(t)
    ca, sa = np.cos(angle), np.sin(angle)
    return np.stack([cx + ca * x - sa * y, cy + sa * x + ca * y], axis=1)


def stroke(points: np.ndarray, half_width) -> np.ndarray:
    """Outline of a thick polyline: left offsets then right offsets reversed.

    ``half_width`` is a scalar or one value per point (tapering). Keep turns gentle
    (under ~60 degrees between segments) so the outline does not self-intersect.
    """
    p = np.asarray(points, dtype=np.float64)
    hw = np.broadcast_to(np.asarray(half_width, dtype=np.float64), (len(p),))
    d = np.gradient(p, axis=0)
    d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)
    nrm = np.stack([-d[:, 1], d[:, 0]], axis=1)
    left = p + nrm * hw[:, None]
    right = p - nrm * hw[:, None]
    return np.concatenate([left, right[::-1]], axis=0)


def curve(rng: np.random.Generator, x: float, y: float, length: float, angle: float,
          wiggle: float = 0.05, n: int | None = None) -> np.ndarray:
    """A smooth random polyline starting at (x, y): a random walk in direction."""
    if n is None:
        n = int(np.clip(length / 4.0, 6, 80))
    turns = rng.normal(0.0, wiggle, n)
    turns = np.convolve(turns, np.ones(3) / 3.0, mode="same")
    ang = angle + np.cumsum(turns)
    step = length / (n - 1)
    dx = np.concatenate([[0.0], np.cos(ang[:-1]) * step])
    dy = np.concatenate([[0.0], np.sin(ang[:-1]) * step])
    return np.stack([x + np.cumsum(dx), y + np.cumsum(dy)], axis=1)


def jagged(rng: np.random.Generator, x: float, y: float, length: float, angle: float,
           roughness: float = 0.5, n: int | None = None) -> np.ndarray:
    """A zig-zag polyline (cracks): random turns of up to ``roughness`` radians."""
    if n is None:
        n = int(np.clip(length / 6.0, 5, 60))
    turns = rng.uniform(-roughness, roughness, n)
    ang = angle + turns + 0.3 * np.cumsum(rng.normal(0.0, 0.15, n))
    seg = rng.uniform(0.6, 1.4, n)
    seg *= length / seg.sum()
    dx = np.concatenate([[0.0], np.cos(ang[:-1]) * seg[:-1]])
    dy = np.concatenate([[0.0], np.sin(ang[:-1]) * seg[:-1]])
    return np.stack([x + np.cumsum(dx), y + np.cumsum(dy)], axis=1)


def inside_run(points: np.ndarray, h: int, w: int, margin: float = 0.0) -> slice:
    """Slice of the longest run of consecutive points inside the image (so a stroke
    leaving the picture is cut at the border instead of being squashed along it)."""
    p = np.asarray(points, dtype=np.float64)
    ok = ((p[:, 0] >= margin) & (p[:, 0] <= w - 1 - margin)
          & (p[:, 1] >= margin) & (p[:, 1] <= h - 1 - margin))
    best, start, best_se = 0, None, (0, 0)
    for i, v in enumerate(np.append(ok, False)):
        if v and start is None:
            start = i
        elif not v and start is not None:
            if i - start > best:
                best, best_se = i - start, (start, i)
            start = None
    return slice(*best_se)


def rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Rectangle covering pixel centres x0..x1, y0..y1 (inclusive)."""
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Andrew's monotone chain; returns the hull counter-clockwise."""
    pts = sorted(set(map(tuple, np.asarray(points, dtype=np.float64).tolist())))
    if len(pts) <= 2:
        return np.array(pts)

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.array(lower[:-1] + upper[:-1])
