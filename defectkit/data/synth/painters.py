"""Defect painters.

A painter is ``fn(canvas, rng, strength) -> Region | None``. It draws one defect's outline
(a polygon, see ``geometry.py``), asks ``canvas.claim(polygon)`` for the pixels (``None``
when the spot overlaps an earlier defect or falls outside the image: the painter then
gives up and the generator tries again), and paints inside the returned mask.
``strength`` in [0, 1] drives contrast and size from faint/small (0) to obvious/large (1).
Painters only change pixels inside their mask, so the masks are the exact ground truth.
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from . import geometry as G
from .geometry import Region

F32 = np.float32


class Canvas:
    """The image being painted (float32 (h, w, 3), 0..255) plus the occupied-pixel map."""

    def __init__(self, img: np.ndarray, scene: dict):
        self.img = img
        self.h, self.w = img.shape[:2]
        self.scene = scene
        self.occupied = np.zeros((self.h, self.w), bool)
        self.scale = min(self.h, self.w) / 256.0      # size unit: 1 at 256 px
        self.before = None                            # pixels of the last claimed box, unpainted

    def claim(self, polygon: np.ndarray, gap: int = 2, min_area: int = 3) -> Region | None:
        """Rasterise ``polygon``; ``None`` if it is empty, tiny, or within ``gap`` pixels of
        an earlier defect. Vertices are clipped into the image and rounded to 0.01 px
        (the values written to LabelMe/COCO are exactly the rasterised ones)."""
        poly = np.round(G.clip_polygon(polygon, self.h, self.w), 2)
        r = G.rasterize(poly, self.h, self.w)
        if r is None:
            return None
        mask, x0, y0 = r
        if mask.sum() < min_area:
            return None
        y1, x1 = y0 + mask.shape[0], x0 + mask.shape[1]
        ya, xa = max(y0 - gap, 0), max(x0 - gap, 0)
        occ = self.occupied[ya:y1 + gap, xa:x1 + gap]
        if occ.any():
            grown = np.zeros(occ.shape, bool)
            grown[y0 - ya:y0 - ya + mask.shape[0], x0 - xa:x0 - xa + mask.shape[1]] = mask
            grown = ndimage.binary_dilation(grown, iterations=gap)
            if (grown & occ).any():
                return None
        reg = Region(poly, mask, x0, y0)
        self.before = self.img[reg.slices].copy()
        return reg

    def commit(self, region: Region) -> None:
        self.occupied[region.slices] |= region.mask

    def crop(self, region: Region) -> np.ndarray:
        return self.img[region.slices]            # a view: painting it paints the image


# ---------------------------------------------------------------------------- helpers
def lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def soft(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Alpha that fades towards the mask border (zero outside the mask)."""
    m = mask.astype(F32)
    if sigma <= 0:
        return m
    a = ndimage.gaussian_filter(m, sigma, mode="constant", truncate=2.5)
    return np.clip(a * F32(1.6) - F32(0.2), 0, 1) * m


def darken(crop, alpha, k):
    crop *= (F32(1.0) - F32(k) * alpha)[..., None]


def tint(crop, alpha, color, k):
    crop += (np.asarray(color, F32)[None, None, :] - crop) * (F32(k) * alpha)[..., None]


def add(crop, alpha, delta):
    crop += np.asarray(delta, F32) * alpha[..., None]


def signed(rng) -> float:
    return 1.0 if rng.random() < 0.5 else -1.0


def random_point(rng, canvas, margin=0.0):
    m = margin
    return (rng.uniform(m, canvas.w - 1 - m), rng.uniform(m, canvas.h - 1 - m))


def local_noise(rng, shape, sigma):
    n = rng.standard_normal(shape).astype(F32)
    return ndimage.gaussian_filter(n, sigma, truncate=2.5) * F32(sigma * 1.6 + 0.5)


def stroke_in(canvas, pts, half_width, min_points=3):
    """Stroke a centre line cut to its longest run inside the image (None if too short)."""
    hw = np.broadcast_to(np.asarray(half_width, dtype=np.float64), (len(pts),))
    p = np.asarray(pts, dtype=np.float64)
    run = G.inside_run(p, canvas.h, canvas.w, margin=0.5)
    if run.stop - run.start < min_points:
        return None
    return G.stroke(p[run], hw[run])


def claim_stroke(canvas, pts, half_width):
    poly = stroke_in(canvas, pts, half_width)
    return None if poly is None else canvas.claim(poly)


# ---------------------------------------------------------------------------- fabric
def hole(canvas, rng, s):
    r = lerp(2.5, 14.0, s * rng.random() ** 0.5) * canvas.scale
    cx, cy = random_point(rng, canvas, r)
    poly = G.blob(rng, cx, cy, r * rng.uniform(0.7, 1.3), r, 0.35, rng.uniform(0, np.pi))
    reg = canvas.claim(poly)
    if reg is None:
        return None
    crop = canvas.crop(reg)
    a = soft(reg.mask, 0.8)
    darken(crop, a, lerp(0.35, 0.9, s))
    # frayed thread ends along the rim: bright speckles
    rim = reg.mask & ~ndimage.binary_erosion(reg.mask)
    fray = rim & (rng.random(reg.mask.shape) < 0.4)
    add(crop, fray.astype(F32), lerp(15, 50, s))
    return reg


STAIN_COLORS = [(120, 85, 40), (170, 150, 60), (60, 60, 60), (150, 110, 110)]


def stain(canvas, rng, s, colors=None):
    """Soft colour patch; ``colors`` (default STAIN_COLORS) is the palette it draws from."""
    r = lerp(5.0, 36.0, rng.random()) * canvas.scale
    cx, cy = random_point(rng, canvas, r * 0.5)
    poly = G.blob(rng, cx, cy, r * rng.uniform(0.6, 1.5), r, 0.3, rng.uniform(0, np.pi))
    reg = canvas.claim(poly)
    if reg is None:
        return None
    crop = canvas.crop(reg)
    colors = STAIN_COLORS if colors is None else colors
    col = colors[rng.integers(len(colors))]
    a = soft(reg.mask, max(1.0, r / 4)) * (F32(0.75) + F32(0.25) * local_noise(rng, reg.mask.shape, max(1.0, r / 5)))
    tint(crop, np.clip(a, 0, 1), col, lerp(0.12, 0.65, s))
    return reg


def _thread_line(canvas, rng, s, length_frac, vertical=None):
    """Straight line along the warp (vertical) or weft (horizontal) direction."""
    if vertical is None:
        vertical = rng.random() < 0.5
    span = canvas.h if vertical else canvas.w
    length = span * length_frac
    period = canvas.scene.get("period", 6.0)
    if vertical:
        x = rng.uniform(2, canvas.w - 3)
        y = rng.uniform(0, max(span - length, 0))
        pts = np.stack([np.full(8, x), np.linspace(y, y + length, 8)], 1)
    else:
        y = rng.uniform(2, canvas.h - 3)
        x = rng.uniform(0, max(span - length, 0))
        pts = np.stack([np.linspace(x, x + length, 8), np.full(8, y)], 1)
    half = lerp(0.5, 0.35 * period, rng.random() * s)
    return G.stroke(pts, max(half, 0.5)), vertical


def broken_thread(canvas, rng, s):
    frac = lerp(0.2, 1.0, rng.random())
    poly, _ = _thread_line(canvas, rng, s, frac)
    reg = canvas.claim(poly)
    if reg is None:
        return None
    crop = canvas.crop(reg)
    a = reg.mask.astype(F32)
    if rng.random() < 0.7:                       # missing thread: the backing shows
        darken(crop, a, lerp(0.2, 0.7, s))
    else:                                        # broken end lying loose: lighter line
        add(crop, a, lerp(12, 55, s))
    return reg


def loose_thread(canvas, rng, s):
    length = lerp(20, 110, rng.random()) * canvas.scale
    x, y = random_point(rng, canvas)
    pts = G.curve(rng, x, y, length, rng.uniform(0, 2 * np.pi), 0.12)
    half = lerp(0.5, 1.3, rng.random()) * max(canvas.scale, 0.75)
    reg = claim_stroke(canvas, pts, half)
    if reg is None:
        return None
    crop = canvas.crop(reg)
    a = reg.mask.astype(F32)
    add(crop, a, signed(rng) * lerp(14, 60, s))
    return reg


def knot(canvas, rng, s):
    r = lerp(2.0, 6.5, rng.random()) * max(canvas.scale, 0.75)
    cx, cy = random_point(rng, canvas, r)
    reg = canvas.claim(G.blob(rng, cx, cy, r * rng.uniform(0.8, 1.6), r, 0.2, rng.uniform(0, np.pi)))
    if reg is None:
        return None
    crop = canvas.crop(reg)
    a = soft(reg.mask, max(0.8, r / 3))
    if rng.random() < 0.6:
        add(crop, a, lerp(15, 60, s))
    else:
        darken(crop, a, lerp(0.15, 0.55, s))
    return reg


def thick_thin_place(canvas, rng, s):
    """A weft-direction band where the yarn is denser (darker) or thinner (lighter)."""
    band = lerp(3.0, 16.0, rng.random()) * canvas.scale
    y = rng.uniform(band, canvas.h - 1 - band)
    frac = lerp(0.5, 1.0, rng.random())
    x0 = rng.uniform(0, canvas.w * (1 - frac))
    n = 12
    pts = np.stack([np.linspace(x0, x0 + canvas.w * frac, n),
                    y + np.cumsum(rng.normal(0, 0.3, n))], 1)
    hw = band / 2 * (1 + 0.15 * rng.standard_normal(n))
    reg = canvas.claim(G.stroke(pts, np.maximum(hw, 1.0)))
    if reg is None:
        return None
    crop = canvas.crop(reg)
    a = soft(reg.mask, max(0.7, band / 6))
    blurred = ndimage.gaussian_filter(crop, (0.8, 0.8, 0))
    crop += (blurred - crop) * a[..., None]
    k = lerp(0.07, 0.35, s)
    if rng.random() < 0.6:
        darken(crop, a, k)
    else:
        add(crop, a, 255 * k * 0.5)
    return reg


# ---------------------------------------------------------------------------- texture
def scratch(canvas, rng, s):
    length = lerp(0.2, 0.7, rng.random()) * min(canvas.h, canvas.w)
    x, y = random_point(rng, canvas)
    pts = G.curve(rng, x, y, length, rng.uniform(0, 2 * np.pi), 0.02)
    half = lerp(0.5, 1.4, rng.random() * s) * max(canvas.scale, 0.75)
    taper = half * np.sqrt(np.sin(np.linspace(0.15, np.pi - 0.15, len(pts))))
    reg = claim_stroke(canvas, pts, np.maximum(taper, 0.5))
    if reg is None:
        return None
    crop = canvas.crop(reg)
    add(crop, reg.mask.astype(F32), signed(rng) * lerp(6, 55, s))
    return reg


def spot(canvas, rng, s):
    r = lerp(2.5, 16.0, rng.random()) * canvas.scale
    cx, cy = random_point(rng, canvas, r)
    reg = canvas.claim(G.blob(rng, cx, cy, r * rng.uniform(0.8, 1.3), r, 0.25, rng.uniform(0, np.pi)))
    if reg is None:
        return None
    crop = canvas.crop(reg)
    a = soft(reg.mask, max(0.8, r / 3))
    if rng.random() < 0.6:
        darken(crop, a, lerp(0.06, 0.5, s))
    else:
        tint(crop, a, (90, 110, 60) if rng.random() < 0.5 else (200, 80, 60), lerp(0.08, 0.5, s))
    return reg


def crack(canvas, rng, s):
    length = lerp(0.15, 0.55, rng.random()) * min(canvas.h, canvas.w)
    x, y = random_point(rng, canvas)
    pts = G.jagged(rng, x, y, length, rng.uniform(0, 2 * np.pi), 0.45)
    half = lerp(0.6, 1.8, rng.random() * s) * max(canvas.scale, 0.75)
    t = np.linspace(0, 1, len(pts))
    taper = half * (0.35 + 0.65 * np.sin(np.pi * t))
    reg = claim_stroke(canvas, pts, np.maximum(taper, 0.5))
    if reg is None:
        return None
    crop = canvas.crop(reg)
    darken(crop, reg.mask.astype(F32), lerp(0.1, 0.7, s))
    return reg


# ---------------------------------------------------------------------------- ball screw
def pitting(canvas, rng, s):
    """A cluster of small dark pits inside an irregular patch elongated along the bands."""
    r = lerp(3.0, 16.0, rng.random() ** 1.5) * canvas.scale
    cx, cy = random_point(rng, canvas, r)
    poly = G.blob(rng, cx, cy, r * rng.uniform(1.0, 2.2), r, 0.4, rng.normal(0, 0.15))
    reg = canvas.claim(poly)
    if reg is None:
        return None
    crop = canvas.crop(reg)
    m = reg.mask
    seeds = (rng.random(m.shape) < lerp(0.03, 0.12, rng.random())) & m
    pits = ndimage.gaussian_filter(seeds.astype(F32), lerp(0.7, 1.6, rng.random()) * max(canvas.scale, 0.6))
    pits = np.clip(pits / max(float(pits.max()), 1e-6), 0, 1)
    a = np.clip(F32(0.35) * soft(m, 0.8) + pits, 0, 1) * m
    k = lerp(0.18, 0.75, s)
    darken(crop, a, k)
    tint(crop, a, (90, 70, 50), 0.25 * s)
    # bright rims on the pit edges, catching the light
    edge = np.clip(ndimage.shift(pits, (1, 1), order=1) - pits, 0, 1) * m
    add(crop, edge, 40 * s)
    return reg


# ---------------------------------------------------------------------------- sensor
def dash_col(canvas, rng, s):
    """A faint vertical column line, full height or a long segment, sometimes dashed."""
    width = int(rng.choice([1, 1, 2, 3]))
    x = int(rng.integers(0, canvas.w - width + 1))
    if rng.random() < 0.55:
        y0, y1 = 0, canvas.h - 1
    else:
        length = int(canvas.h * rng.uniform(0.3, 0.9))
        y0 = int(rng.integers(0, canvas.h - length + 1))
        y1 = y0 + length - 1
    reg = canvas.claim(G.rect(x, y0, x + width - 1, y1))
    if reg is None:
        return None
    crop = canvas.crop(reg)
    hgt = reg.mask.shape[0]
    prof = np.ones(hgt, F32)
    if rng.random() < 0.35:                      # dashed: the line fades in and out
        period = rng.uniform(6, 30)
        prof = F32(0.55) + F32(0.45) * np.sign(np.sin(np.arange(hgt) * 2 * np.pi / period)).astype(F32)
    prof *= F32(1.0) + F32(0.15) * rng.standard_normal(hgt).astype(F32)
    a = reg.mask.astype(F32) * prof[:, None]
    sign = -1.0 if rng.random() < 0.2 else 1.0     # mostly bright columns, some dark
    add(crop, a, sign * lerp(2.5, 22.0, s ** 1.3))
    return reg


def blemish(canvas, rng, s):
    r = lerp(6.0, 30.0, rng.random()) * canvas.scale
    cx, cy = random_point(rng, canvas, r * 0.6)
    reg = canvas.claim(G.blob(rng, cx, cy, r * rng.uniform(0.8, 1.3), r, 0.15, rng.uniform(0, np.pi)))
    if reg is None:
        return None
    crop = canvas.crop(reg)
    a = soft(reg.mask, max(1.0, r / 3))
    ring = a * (1 - a) * 4                      # dust-shadow ring brighter than the centre
    add(crop, np.clip(0.5 * a + ring, 0, 1.2).astype(F32), signed(rng) * lerp(2.0, 14.0, s))
    return reg


def spot_sensor(canvas, rng, s):
    """Hot-pixel cluster: a few bright pixels with a small halo, radius 1.5..6 px, +6..+40
    grey levels. Both ranges keep the severity grade (``severity.py``) depending on area AND
    contrast: the contrast stays mostly under the CNR saturation (``CNR_MAX`` 4, about 15 grey
    levels on these frames) and the area spans 0.01..0.1% of a 512x288 frame, so a 200-image
    set has grades 1..4 (earlier +12..+160 levels and radius <= 3.5 px saturated the contrast
    score: grades 2..3 only, set by the area alone)."""
    r = lerp(1.5, 6.0, rng.random()) * max(canvas.scale, 0.75)
    cx, cy = random_point(rng, canvas, r + 1)
    reg = canvas.claim(G.blob(rng, cx, cy, r, r * rng.uniform(0.7, 1.0), 0.2), min_area=2)
    if reg is None:
        return None
    crop = canvas.crop(reg)
    a = soft(reg.mask, 0.7)
    a = np.maximum(a, reg.mask * F32(0.3))
    add(crop, a, lerp(6.0, 40.0, s ** 1.3))
    return reg


# ---------------------------------------------------------------------------- bottle: cap
def _rim_polygon(sc, phi, half_angle, r_out, r_in_fn, n=24):
    t = np.linspace(phi - half_angle, phi + half_angle, n)
    outer = np.stack([sc["cx"] + r_out * np.cos(t), sc["cy"] + r_out * np.sin(t)], 1)
    r_in = r_in_fn(t)
    inner = np.stack([sc["cx"] + r_in * np.cos(t), sc["cy"] + r_in * np.sin(t)], 1)[::-1]
    return np.concatenate([outer, inner], 0)


def cap_broken(canvas, rng, s):
    sc = canvas.scene
    if sc.get("kind") != "cap":
        return None
    R = sc["R"]
    phi = rng.uniform(0, 2 * np.pi)
    half = np.deg2rad(lerp(5, 22, rng.random()))
    depth = lerp(0.06, 0.25, rng.random() * 0.5 + 0.5 * s) * R
    jag = rng.uniform(0.4, 1.0, 24)

    def r_in(t):
        e = np.sin(np.linspace(0, np.pi, len(t))) ** 0.7
        return R + 1 - (depth * e * jag[:len(t)] + 1)

    reg = canvas.claim(_rim_polygon(sc, phi, half, R + 1.0, r_in))
    if reg is None:
        return None
    crop = canvas.crop(reg)
    bg = sc["bg"][reg.slices]
    a = reg.mask.astype(F32) * F32(lerp(0.45, 1.0, s))
    crop += (bg * F32(0.7) - crop) * a[..., None]            # the missing chunk shows the belt
    edge = reg.mask & ~ndimage.binary_erosion(reg.mask)
    add(crop, edge.astype(F32), 30 * s)
    return reg


def _inside_cap(poly, sc, inset=1.0):
    d = poly - [sc["cx"], sc["cy"]]
    r = np.hypot(d[:, 0], d[:, 1])
    k = np.minimum(1.0, (sc["R"] - inset) / np.maximum(r, 1e-9))
    return np.array([sc["cx"], sc["cy"]]) + d * k[:, None]


def cap_deformed(canvas, rng, s):
    sc = canvas.scene
    if sc.get("kind") != "cap":
        return None
    R = sc["R"]
    phi = rng.uniform(0, 2 * np.pi)
    rr = R * rng.uniform(0.72, 0.9)
    cx, cy = sc["cx"] + rr * np.cos(phi), sc["cy"] + rr * np.sin(phi)
    size = lerp(0.08, 0.22, rng.random()) * R
    poly = G.blob(rng, cx, cy, size * rng.uniform(1.4, 2.2), size, 0.15, phi + np.pi / 2)
    reg = canvas.claim(_inside_cap(poly, sc))
    if reg is None:
        return None
    crop = canvas.crop(reg)
    hh, ww = reg.mask.shape
    yy, xx = np.mgrid[0:hh, 0:ww].astype(F32)
    d = (xx - ww / 2) * np.cos(phi) + (yy - hh / 2) * np.sin(phi)
    grad = np.tanh(d / max(size * 0.5, 1.0)).astype(F32)        # dent: one side lit, one shaded
    a = soft(reg.mask, max(1.0, size / 4))
    k = lerp(0.12, 0.45, s)
    crop *= (F32(1.0) + F32(k) * grad * a)[..., None]
    return reg


def cap_edge_damage(canvas, rng, s):
    sc = canvas.scene
    if sc.get("kind") != "cap":
        return None
    R = sc["R"]
    phi = rng.uniform(0, 2 * np.pi)
    half = np.deg2rad(lerp(4, 14, rng.random()))
    band = lerp(0.05, 0.12, rng.random()) * R
    reg = canvas.claim(_rim_polygon(sc, phi, half, R - 0.5, lambda t: np.full(len(t), R - 0.5 - band)))
    if reg is None:
        return None
    crop = canvas.crop(reg)
    scr = (rng.random(reg.mask.shape) < 0.25).astype(F32)
    scr = ndimage.uniform_filter1d(scr, 3, axis=int(abs(np.cos(phi)) > 0.7))
    a = np.clip(scr * 1.5, 0, 1) * reg.mask
    add(crop, a, signed(rng) * lerp(20, 80, s))
    return reg


# ---------------------------------------------------------------------------- bottle: label
def label_skew(canvas, rng, s):
    sc = canvas.scene
    if sc.get("kind") != "label":
        return None
    lx0, ly0, lx1, ly1 = sc["label"]
    angle = signed(rng) * lerp(1.5, 9.0, s)
    shift = rng.normal(0, 2.0 * canvas.scale, 2)
    cx, cy = (lx0 + lx1) / 2 + shift[0], (ly0 + ly1) / 2 + shift[1]
    hw, hh = (lx1 - lx0) / 2, (ly1 - ly0) / 2
    t = np.deg2rad(angle)
    corners = np.array([[-hw, -hh], [hw, -hh], [hw, hh], [-hw, hh]])
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    new = corners @ rot.T + [cx, cy]
    hull = G.convex_hull(np.concatenate([G.rect(lx0, ly0, lx1, ly1), new]))
    reg = canvas.claim(hull)
    if reg is None:
        return None
    crop = canvas.crop(reg)
    m = reg.mask
    # paint: erase the straight label, paste the rotated one, only inside the mask
    region = sc["under_label"][reg.slices].copy()
    patch = Image.fromarray(np.clip(sc["label_patch"], 0, 255).astype(np.uint8))
    rp = patch.rotate(-angle, resample=Image.BILINEAR, expand=True)
    ra = Image.new("L", patch.size, 255).rotate(-angle, resample=Image.BILINEAR, expand=True)
    px = int(round(cx - rp.size[0] / 2)) - reg.x0
    py = int(round(cy - rp.size[1] / 2)) - reg.y0
    big = np.zeros(region.shape, F32)
    alp = np.zeros(region.shape[:2], F32)
    rpa, raa = np.asarray(rp, F32), np.asarray(ra, F32) / 255
    ys, xs = max(py, 0), max(px, 0)
    ye, xe = min(py + rpa.shape[0], m.shape[0]), min(px + rpa.shape[1], m.shape[1])
    if ye > ys and xe > xs:
        big[ys:ye, xs:xe] = rpa[ys - py:ye - py, xs - px:xe - px]
        alp[ys:ye, xs:xe] = raa[ys - py:ye - py, xs - px:xe - px]
    out = region * (1 - alp[..., None]) + big * alp[..., None]
    crop[m] = out[m]
    return reg


def _label_point(rng, sc, margin):
    lx0, ly0, lx1, ly1 = sc["label"]
    return (rng.uniform(lx0 + margin, max(lx1 - margin, lx0 + margin + 1)),
            rng.uniform(ly0 + margin, max(ly1 - margin, ly0 + margin + 1)))


def _inside_label(poly, sc):
    lx0, ly0, lx1, ly1 = sc["label"]
    poly = np.array(poly, dtype=np.float64)
    poly[:, 0] = np.clip(poly[:, 0], lx0, lx1)
    poly[:, 1] = np.clip(poly[:, 1], ly0, ly1)
    return poly


def label_wrinkle(canvas, rng, s):
    sc = canvas.scene
    if sc.get("kind") != "label":
        return None
    lx0, ly0, lx1, ly1 = sc["label"]
    size = lerp(0.12, 0.35, rng.random()) * (lx1 - lx0)
    cx, cy = _label_point(rng, sc, size * 0.3)
    ang = rng.uniform(0, np.pi)
    poly = G.blob(rng, cx, cy, size, size * rng.uniform(0.3, 0.6), 0.2, ang)
    reg = canvas.claim(_inside_label(poly, sc))
    if reg is None:
        return None
    crop = canvas.crop(reg)
    hh, ww = reg.mask.shape
    yy, xx = np.mgrid[0:hh, 0:ww].astype(F32)
    lam = lerp(3.0, 8.0, rng.random()) * max(canvas.scale, 0.75)
    warp = local_noise(rng, reg.mask.shape, max(2.0, size / 6)) * F32(1.5)
    ridges = np.sin((xx * np.cos(ang) + yy * np.sin(ang)) * F32(2 * np.pi / lam) + warp).astype(F32)
    a = soft(reg.mask, max(1.0, size / 8))
    crop *= (F32(1.0) + F32(lerp(0.08, 0.35, s)) * ridges * a)[..., None]
    return reg


def label_bubble(canvas, rng, s):
    sc = canvas.scene
    if sc.get("kind") != "label":
        return None
    lx0, ly0, lx1, ly1 = sc["label"]
    r = lerp(2.5, 0.08 * (lx1 - lx0), rng.random())
    cx, cy = _label_point(rng, sc, r + 1)
    poly = G.blob(rng, cx, cy, r * rng.uniform(1.0, 1.5), r, 0.1, rng.uniform(0, np.pi))
    reg = canvas.claim(_inside_label(poly, sc))
    if reg is None:
        return None
    crop = canvas.crop(reg)
    hh, ww = reg.mask.shape
    yy, xx = np.mgrid[0:hh, 0:ww].astype(F32)
    d = np.sqrt(((xx - ww / 2) / (ww / 2 + 0.5)) ** 2 + ((yy - hh / 2) / (hh / 2 + 0.5)) ** 2)
    hl = np.exp(-(((xx - ww * 0.35) / (ww * 0.2 + 0.5)) ** 2 + ((yy - hh * 0.35) / (hh * 0.2 + 0.5)) ** 2))
    m = reg.mask.astype(F32)
    k = lerp(0.1, 0.5, s)
    darken(crop, np.clip((d - 0.6) * 2.5, 0, 1).astype(F32) * m, k * 0.8)       # shadowed rim
    add(crop, hl.astype(F32) * m, 255 * k * 0.6)                                # highlight
    return reg


def code_abnormal(canvas, rng, s):
    sc = canvas.scene
    glyphs = sc.get("glyphs") or []
    if sc.get("kind") != "label" or not glyphs:
        return None
    n = len(glyphs)
    k = int(rng.integers(1, n + 1))
    i0 = int(rng.integers(0, n - k + 1))
    x0 = glyphs[i0][0] - 1
    y0 = glyphs[i0][1] - 1
    x1 = glyphs[i0 + k - 1][2] + 1
    y1 = glyphs[i0 + k - 1][3] + 1
    reg = canvas.claim(G.rect(x0, y0, x1, y1))
    if reg is None:
        return None
    crop = canvas.crop(reg)
    body = sc["body"][reg.slices]
    mode = rng.integers(3)
    m = reg.mask[..., None].astype(F32)
    if mode == 0:                                   # missing / faded print
        fade = lerp(0.4, 1.0, s)
        crop += (body - crop) * m * F32(fade)
    elif mode == 1:                                 # smeared print
        sm = ndimage.uniform_filter1d(crop, int(3 + 6 * s), axis=1)
        crop += (sm - crop) * m
    else:                                           # ink blot over the characters
        ink = crop.min(axis=(0, 1))
        a = local_noise(rng, reg.mask.shape, 1.5)
        a = (np.clip(a + 0.3, 0, 1) * reg.mask).astype(F32)
        tint(crop, a, ink, lerp(0.4, 1.0, s))
    return reg
