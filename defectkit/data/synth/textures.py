"""Defect-free backgrounds, one function per preset.

Each function is ``fn(rng, h, w) -> (image, scene)``: ``image`` is float32 (h, w, 3) in
0..255 and ``scene`` a dict the painters may use (e.g. where the bottle cap is, the
thread period of the fabric, which defect classes make sense on this picture under
``"classes"``). Everything is vectorised numpy / PIL / scipy.ndimage.
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

F32 = np.float32


# ---------------------------------------------------------------------------- noise helpers
def smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Band-limited noise (std ~1): a coarse Gaussian grid upsampled bicubically."""
    cell = max(float(cell), 1.0)
    gh, gw = int(np.ceil(h / cell)) + 3, int(np.ceil(w / cell)) + 3
    grid = rng.standard_normal((gh, gw)).astype(F32)
    up = Image.fromarray(grid).resize((int(round(gw * cell)), int(round(gh * cell))),
                                      Image.BICUBIC)
    out = np.asarray(up, dtype=F32)[int(cell):int(cell) + h, int(cell):int(cell) + w]
    return out * F32(1.0 / 0.62)          # bicubic keeps ~0.62 of the grid's std


def fbm(rng: np.random.Generator, h: int, w: int, cell: float, octaves: int = 4,
        gain: float = 0.5) -> np.ndarray:
    out = np.zeros((h, w), F32)
    amp, total = 1.0, 0.0
    for _ in range(octaves):
        out += F32(amp) * smooth_noise(rng, h, w, cell)
        total += amp * amp
        amp *= gain
        cell /= 2.0
    return out / F32(np.sqrt(total))


def grid(h: int, w: int):
    return (np.arange(h, dtype=F32)[:, None], np.arange(w, dtype=F32)[None, :])


def colorize(lum: np.ndarray, rgb) -> np.ndarray:
    """(h, w) luminance factor x base colour -> (h, w, 3) float32."""
    return lum[..., None] * np.asarray(rgb, F32)[None, None, :]


def _jitter_color(rng, rgb, amount=12.0):
    return np.clip(np.asarray(rgb, F32) + rng.normal(0, amount, 3), 20, 245).astype(F32)


# ---------------------------------------------------------------------------- fabric
FABRIC_COLORS = [(218, 208, 188), (200, 200, 196), (150, 170, 200), (225, 222, 215),
                 (205, 180, 170), (120, 135, 160), (190, 200, 170)]


def fabric(rng, h, w):
    """Woven textile: warp (vertical) and weft (horizontal) threads, plain or twill."""
    period = rng.uniform(4.5, 8.0)
    twill = rng.random() < 0.4
    y, x = grid(h, w)
    wave_u = smooth_noise(rng, h, w, 48) * F32(period * 0.12)
    wave_v = smooth_noise(rng, h, w, 48) * F32(period * 0.12)
    skew = F32(rng.uniform(-0.015, 0.015))
    u = (x + wave_u + skew * y) / F32(period)
    v = (y + wave_v - skew * x) / F32(period)
    iu = np.floor(u)
    iv = np.floor(v)
    fu = u - iu
    fv = v - iv
    iu = iu.astype(np.int64)
    iv = iv.astype(np.int64)
    n = 4096
    warp_b = (1.0 + rng.normal(0, 0.05, n)).astype(F32)
    weft_b = (1.0 + rng.normal(0, 0.05, n)).astype(F32)
    if twill:
        over = ((iu - iv) % 3) != 0
    else:
        over = ((iu + iv) & 1) == 0
    su = np.sin(F32(np.pi) * fu)
    sv = np.sin(F32(np.pi) * fv)
    prof_u = np.sqrt(su)            # across a warp thread: dark gap at the edges
    prof_v = np.sqrt(sv)
    warp_val = prof_u * (F32(0.62) + F32(0.38) * sv) * warp_b[iu % n]
    weft_val = prof_v * (F32(0.62) + F32(0.38) * su) * weft_b[iv % n]
    val = np.where(over, warp_val, weft_val)
    fiber = rng.standard_normal((h, w)).astype(F32)
    fiber = np.where(over, ndimage.uniform_filter1d(fiber, 3, axis=0),
                     ndimage.uniform_filter1d(fiber, 3, axis=1))
    light = smooth_noise(rng, h, w, max(h, w) / 3.0)
    lum = F32(0.42) + F32(0.58) * val + F32(0.05) * fiber + F32(0.035) * light
    color = _jitter_color(rng, FABRIC_COLORS[rng.integers(len(FABRIC_COLORS))], 8)
    img = colorize(lum, color)
    return img, {"period": float(period), "color": color, "gray": float(color.mean())}


# ---------------------------------------------------------------------------- ball screw
def ballscrew(rng, h, w):
    """Ball-screw spindle: brushed steel with slanted bright flanks and dark grooves."""
    y, x = grid(h, w)
    period = F32(rng.uniform(0.28, 0.45) * h)
    tilt = F32(rng.uniform(-0.12, 0.12))
    t = (y + tilt * x) / period + F32(rng.uniform(0, 1))
    f = t - np.floor(t)
    groove = np.exp(-((f - F32(0.5)) / F32(0.11)) ** 2)         # dark ball track
    flank = F32(0.5) + F32(0.5) * np.cos(F32(2 * np.pi) * f)    # shading of the flanks
    hl_pos = F32(rng.uniform(0.15, 0.3))
    highlight = np.exp(-((f - hl_pos) / F32(0.035)) ** 2)
    streak = rng.standard_normal((h, w)).astype(F32)
    streak = ndimage.uniform_filter1d(streak, max(9, w // 10), axis=1, mode="wrap")
    streak *= F32(np.sqrt(max(9, w // 10)))                      # back to std ~1
    streak_fine = ndimage.uniform_filter1d(rng.standard_normal((h, w)).astype(F32), 7, axis=1)
    mottle = smooth_noise(rng, h, w, max(h, w) / 4.0)
    lum = (F32(0.42) + F32(0.22) * flank - F32(0.22) * groove + F32(0.35) * highlight
           + F32(0.035) * streak + F32(0.04) * streak_fine + F32(0.04) * mottle)
    img = colorize(lum, _jitter_color(rng, (205, 205, 210), 6))
    if rng.random() < 0.35:                                     # soiled surface (not a defect)
        soil = np.clip(smooth_noise(rng, h, w, max(h, w) / 5.0) - F32(0.8), 0, None)
        img *= (F32(1.0) - F32(0.25) * np.minimum(soil, F32(1.0)))[..., None]
        img[..., 2] *= F32(0.97)
    return img, {"period": float(period), "gray": float(img.mean())}


# ---------------------------------------------------------------------------- sensor
def sensor(rng, h, w):
    """Image-sensor dark frame: offset, temporal noise, column/row pattern noise, amp glow."""
    y, x = grid(h, w)
    base = rng.uniform(10, 22)
    col = rng.normal(0, rng.uniform(0.2, 0.6), w).astype(F32)
    row = rng.normal(0, 0.25, h).astype(F32)
    sigma = F32(rng.uniform(1.2, 2.6))
    noise = rng.standard_normal((h, w)).astype(F32) * sigma
    cx, cy = rng.choice([0, w - 1]), rng.choice([0, h - 1])
    glow = np.exp(-np.sqrt((x - F32(cx)) ** 2 + (y - F32(cy)) ** 2) / F32(0.25 * max(h, w)))
    lum = F32(base) + col[None, :] + row[:, None] + noise + F32(rng.uniform(0, 6)) * glow
    img = np.repeat(lum[..., None], 3, axis=2)
    return img, {"base": float(base), "sigma": float(sigma), "gray": float(base)}


# ---------------------------------------------------------------------------- texture
TEXTURE_COLORS = [(150, 118, 90), (140, 140, 135), (190, 170, 135)]


def texture(rng, h, w):
    """Generic stone/leather-like texture: multi-octave noise, grain and faint veins."""
    s = min(h, w)
    base = fbm(rng, h, w, s / 3.0, octaves=5)
    grain = rng.standard_normal((h, w)).astype(F32)
    grain = ndimage.uniform_filter(grain, 2)
    vein = np.abs(smooth_noise(rng, h, w, s / 4.0))
    vein = np.exp(-(vein / F32(0.08)) ** 2)
    lum = F32(0.72) + F32(0.11) * base + F32(0.06) * grain - F32(0.07) * vein
    color = _jitter_color(rng, TEXTURE_COLORS[rng.integers(len(TEXTURE_COLORS))], 6)
    return colorize(lum, color), {"color": color, "gray": float(color.mean() * 0.72)}


# ---------------------------------------------------------------------------- bottle
CAP_COLORS = [(205, 165, 60), (170, 35, 35), (195, 195, 200), (228, 226, 218), (40, 70, 150)]
BODY_COLORS = [(60, 110, 60), (110, 70, 35), (225, 225, 220), (180, 190, 195)]
LABEL_COLORS = [(235, 228, 205), (200, 40, 40), (245, 245, 245), (30, 50, 110), (220, 190, 90)]


def _plain_background(rng, h, w):
    y, x = grid(h, w)
    level = rng.choice([rng.uniform(35, 70), rng.uniform(170, 205)])
    grad = F32(rng.uniform(-12, 12)) * (x / F32(w) - F32(0.5)) + F32(rng.uniform(-8, 8)) * (
        y / F32(h) - F32(0.5))
    lum = F32(level) + grad + rng.standard_normal((h, w)).astype(F32) * F32(1.5)
    tint = np.asarray([1.0, 1.0, 1.0], F32) + rng.normal(0, 0.03, 3).astype(F32)
    return lum[..., None] * tint[None, None, :]


def bottle(rng, h, w):
    """Either a top view of a bottle cap or a side view of a labelled bottle."""
    if rng.random() < 0.5:
        return _bottle_cap(rng, h, w)
    return _bottle_label(rng, h, w)


def _bottle_cap(rng, h, w):
    bg = _plain_background(rng, h, w)
    y, x = grid(h, w)
    s = min(h, w)
    R = F32(rng.uniform(0.30, 0.40) * s)
    cx = F32(w / 2 + rng.uniform(-0.08, 0.08) * s)
    cy = F32(h / 2 + rng.uniform(-0.08, 0.08) * s)
    dx, dy = x - cx, y - cy
    r = np.sqrt(dx * dx + dy * dy)
    th = np.arctan2(dy, dx)
    light = F32(rng.uniform(0, 2 * np.pi))
    shadow = np.exp(-np.maximum(r - R, 0) / F32(0.08 * R)) * F32(0.35)
    img = bg * (F32(1.0) - shadow)[..., None]
    rr = r / R
    shade = F32(0.82) + F32(0.12) * np.cos(th - light) * rr
    knurl_n = int(rng.integers(48, 110))
    rim = (rr > 0.86).astype(F32)
    shade = shade * (F32(1.0) - rim * F32(0.14) * (F32(0.5) + F32(0.5) * np.cos(F32(knurl_n) * th)))
    groove_r = F32(rng.uniform(0.55, 0.7))
    shade = shade * (F32(1.0) - F32(0.25) * np.exp(-((rr - groove_r) * R / F32(1.3)) ** 2))
    shade = shade * (F32(1.0) - F32(0.2) * np.exp(-((rr - F32(0.86)) * R / F32(1.0)) ** 2))
    hx, hy = np.cos(light) * 0.35, np.sin(light) * 0.35
    shade = shade + F32(0.25) * np.exp(-((dx / R - F32(hx)) ** 2 + (dy / R - F32(hy)) ** 2) / F32(0.03))
    cap = colorize(shade, _jitter_color(rng, CAP_COLORS[rng.integers(len(CAP_COLORS))], 8))
    alpha = np.clip(R - r + F32(0.5), 0, 1)[..., None]
    img = img * (F32(1.0) - alpha) + cap * alpha
    scene = {"kind": "cap", "cx": float(cx), "cy": float(cy), "R": float(R), "bg": bg,
             "gray": float(img.mean()),
             "classes": ["cap_broken", "cap_deformed", "cap_edge_damage"]}
    return img, scene


_GLYPHS = None


def _glyph_bank():
    global _GLYPHS
    if _GLYPHS is None:                      # 24 fixed 5x7 dot-matrix "characters"
        g = np.random.default_rng(12345).random((24, 7, 5)) < 0.5
        g[:, 0, :] |= g[:, 6, :]
        _GLYPHS = g
    return _GLYPHS


def _bottle_label(rng, h, w):
    img = _plain_background(rng, h, w)
    y, x = grid(h, w)
    bw = rng.uniform(0.50, 0.66) * w
    bcx = w / 2 + rng.uniform(-0.05, 0.05) * w
    bx0, bx1 = bcx - bw / 2, bcx + bw / 2
    cyl = np.sqrt(np.clip(1 - ((x - F32(bcx)) / F32(bw / 2)) ** 2, 0, 1))     # (1, w)
    body_shade = F32(0.55) + F32(0.45) * cyl + F32(0.3) * np.exp(-((x - F32(bcx - 0.25 * bw)) / F32(0.04 * bw)) ** 2)
    body = colorize(np.broadcast_to(body_shade, (h, w)),
                    _jitter_color(rng, BODY_COLORS[rng.integers(len(BODY_COLORS))], 8))
    inside = np.clip(np.minimum(x - F32(bx0), F32(bx1) - x) + F32(0.5), 0, 1)[..., None]
    img = img * (F32(1.0) - inside) + body * inside
    body_img = img.copy()
    # label
    lw = int(0.82 * bw)
    lh = int(rng.uniform(0.38, 0.5) * h)
    lx0 = int(round(bcx - lw / 2))
    ly0 = int(round(rng.uniform(0.12, 0.22) * h))
    lcol = _jitter_color(rng, LABEL_COLORS[rng.integers(len(LABEL_COLORS))], 6)
    ink = np.where(lcol.mean() > 128, F32(0.35), F32(1.9)).astype(F32)
    ly, lx = grid(lh, lw)
    lum = np.ones((lh, lw), F32)
    band = max(2, lh // 14)
    lum[:band] *= F32(0.8)
    lum[-band:] *= F32(0.8)
    by0, by1 = int(lh * rng.uniform(0.2, 0.3)), int(lh * rng.uniform(0.45, 0.55))
    bx_0, bx_1 = int(lw * 0.2), int(lw * 0.8)
    lum[by0:by1, bx_0:bx_1] *= ink
    nlines = int(rng.integers(2, 5))
    for i in range(nlines):                      # "text" lines
        ty = int(lh * (0.62 + 0.09 * i))
        th_ = max(1, lh // 40)
        tl = int(lw * rng.uniform(0.3, 0.7))
        tx = (lw - tl) // 2
        if ty + th_ < lh - band:
            lum[ty:ty + th_, tx:tx + tl] *= F32(0.6) if ink < 1 else F32(1.4)
    lshade = (F32(0.55) + F32(0.45) * cyl[:, lx0:lx0 + lw])
    label = colorize(lum * lshade, lcol)
    img[ly0:ly0 + lh, lx0:lx0 + lw] = label
    # code print under the label: a row of dot-matrix glyphs on the body
    dot = max(1, int(round(h / 160)))
    gw_, gh_ = 6 * dot, 8 * dot
    nchar = int(rng.integers(6, 11))
    cw = nchar * gw_
    cx0 = int(round(bcx - cw / 2))
    cy0 = ly0 + lh + max(3, int(0.06 * h))
    glyph_boxes = []
    under_label = body_img.copy()             # what a moved label uncovers: body + code print
    if cy0 + gh_ < h - 2 and cx0 > bx0 + 2 and cx0 + cw < bx1 - 2:
        bank = _glyph_bank()
        ink_c = F32(25.0) if body_img.mean() > 110 else F32(235.0)
        for i in range(nchar):
            gl = bank[rng.integers(len(bank))]
            m = np.kron(gl, np.ones((dot, dot), bool))
            gx = cx0 + i * gw_
            img[cy0:cy0 + 7 * dot, gx:gx + 5 * dot][m] = ink_c
            under_label[cy0:cy0 + 7 * dot, gx:gx + 5 * dot][m] = ink_c
            glyph_boxes.append((gx, cy0, gx + 5 * dot - 1, cy0 + 7 * dot - 1))
    scene = {"kind": "label", "body": body_img, "under_label": under_label, "label": (lx0, ly0, lx0 + lw - 1, ly0 + lh - 1),
             "label_patch": label, "glyphs": glyph_boxes, "gray": float(img.mean()),
             "classes": ["label_skew", "label_wrinkle", "label_bubble"]
             + (["code_abnormal"] if glyph_boxes else [])}
    return img, scene
