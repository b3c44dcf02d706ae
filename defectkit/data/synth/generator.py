"""Dataset generation: argument checks, the split, per-image rendering in a process pool,
and the dataset-level files (COCO, VOC image sets, dataset.json).

Each image ``i`` gets its own random stream ``SeedSequence(seed, spawn_key=(i,))`` (the
i-th child of ``SeedSequence(seed).spawn``), so the output does not depend on the number
of workers or on the order in which they finish.
"""
from __future__ import annotations

import difflib
import math
import os
import shutil
from pathlib import Path

import numpy as np

from ...progress import track
from . import writers as W
from .painters import Canvas
from .presets import PRESETS, Preset
from .severity import severity_grade

VERSION = "1.0.0"
TRAIN_FRACTION = 0.8
MIN_SIDE, MAX_SIDE = 32, 8192
MIN_BOX_SIDE = 8           # px: annotation boxes are at least this wide and tall (labeller-like)
OUTPUTS = ("images", "coco", "mvtec", "masks", "labelme", "voc", "severity", "dataset.json")


class SynthError(ValueError):
    """A bad argument to the generator (shown to CLI users without a traceback)."""


# ---------------------------------------------------------------------------- arguments
def parse_size(size) -> tuple[int, int]:
    """``"WxH"`` / ``(W, H)`` -> (W, H), checked."""
    if isinstance(size, str):
        parts = size.lower().replace("*", "x").split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise SynthError(f"bad size {size!r}: expected WIDTHxHEIGHT such as 512x512")
        w, h = (int(p) for p in parts)
    else:
        try:
            w, h = (int(v) for v in size)
        except (TypeError, ValueError):
            raise SynthError(f"bad size {size!r}: expected (width, height) or 'WxH'") from None
    for name, v in (("width", w), ("height", h)):
        if not MIN_SIDE <= v <= MAX_SIDE:
            raise SynthError(f"bad size {w}x{h}: {name} must be within {MIN_SIDE}..{MAX_SIDE}")
    return w, h


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        close = difflib.get_close_matches(str(name), PRESETS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise SynthError(f"unknown preset {name!r}{hint}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def default_workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(n, 16))


def _check_args(preset, num_images, normal_ratio, size, seed, workers):
    p = get_preset(preset)
    n = p.num_images if num_images is None else num_images
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise SynthError(f"num_images must be a positive integer, got {num_images!r}")
    r = p.normal_ratio if normal_ratio is None else normal_ratio
    try:
        r = float(r)
    except (TypeError, ValueError):
        raise SynthError(f"normal_ratio must be a number in [0, 1], got {normal_ratio!r}") from None
    if not 0.0 <= r <= 1.0 or math.isnan(r):
        raise SynthError(f"normal_ratio must be within [0, 1], got {normal_ratio!r}")
    w, h = p.size if size is None else parse_size(size)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SynthError(f"seed must be a non-negative integer, got {seed!r}")
    k = default_workers() if workers is None else workers
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise SynthError(f"workers must be a positive integer, got {workers!r}")
    return p, int(n), r, (int(w), int(h)), int(seed), int(k)


def _prepare_out(out: Path) -> None:
    """Create DIR. A previous generator output in DIR is replaced; anything else is refused."""
    if out.exists() and not out.is_dir():
        raise SynthError(f"--out {out} exists and is not a directory")
    if out.is_dir():
        entries = sorted(os.listdir(out))
        foreign = [e for e in entries if e not in OUTPUTS]
        if foreign:
            raise SynthError(
                f"--out {out} is not empty and does not look like a synthetic dataset "
                f"(found {', '.join(foreign[:5])}); choose an empty or new directory")
        for e in entries:                     # an earlier run: replace it entirely
            path = out / e
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    for d in ("images", "coco/annotations", "mvtec/train/good", "mvtec/test/good",
              "mvtec/ground_truth", "masks", "labelme", "voc/Annotations",
              "voc/ImageSets/Main"):
        (out / d).mkdir(parents=True, exist_ok=True)
    for g in range(1, 6):                     # always all grades: folder index = grade - 1
        (out / "severity" / str(g)).mkdir(parents=True, exist_ok=True)


# ---------------------------------------------------------------------------- planning
def plan(num_images: int, normal_ratio: float, seed: int):
    """Split and normal/defective choice. Returns (split per image, normal flag per image).

    The split shuffles the image indices with ``default_rng(seed)`` and takes the first
    ``int(0.8 N)`` as train. Normal images are then drawn within each split
    (``round(ratio * n_split)``) so both splits keep the requested ratio.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(num_images)
    n_train = int(TRAIN_FRACTION * num_images)
    split = np.empty(num_images, dtype=object)
    split[order[:n_train]] = "train"
    split[order[n_train:]] = "test"
    normal = np.zeros(num_images, bool)
    n_normal_total = int(math.floor(normal_ratio * num_images + 0.5))
    n_normal_train = min(int(math.floor(normal_ratio * n_train + 0.5)), n_normal_total)
    n_normal_test = min(n_normal_total - n_normal_train, num_images - n_train)
    for ids, k in ((np.sort(order[:n_train]), n_normal_train),
                   (np.sort(order[n_train:]), n_normal_test)):
        if k > 0:
            normal[rng.choice(ids, size=k, replace=False)] = True
    return list(split), normal


# ---------------------------------------------------------------------------- rendering
def _lum(a: np.ndarray) -> np.ndarray:
    return a.mean(axis=2)


def render(preset: Preset, index: int, seed: int, width: int, height: int, normal: bool):
    """Render image ``index``: (uint8 image, list of placed defects)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
    img, scene = preset.background(rng, height, width)
    img = np.ascontiguousarray(img, dtype=np.float32)
    canvas = Canvas(img, scene)
    canvas.scale *= float(preset.extra.get("defect_scale", 1.0))   # the gen preset's larger defects
    placed = []
    if not normal:
        k = 1
        while k < preset.max_defects and rng.random() < preset.p_more:
            k += 1
        allowed = [c for c in (scene.get("classes") or preset.classes) if c in preset.painters]
        weights = np.array([preset.weights[c] for c in allowed], np.float64)
        weights /= weights.sum()
        attempts = 0
        while len(placed) < k and attempts < 12 * k + 24:
            attempts += 1
            name = allowed[int(rng.choice(len(allowed), p=weights))]
            lo = float(preset.extra.get("min_strength", 0.0))   # the demo preset's floor
            strength = lo + (1.0 - lo) * float(rng.random())
            reg = preset.painters[name](canvas, rng, strength)
            if reg is None:
                continue
            before = canvas.before
            after = canvas.img[reg.slices]
            dy = np.abs(_lum(after) - _lum(before))[reg.mask]
            contrast = float(dy.mean())
            local_std = float(_lum(before).std())
            canvas.commit(reg)
            placed.append({"name": name, "region": reg, "contrast": contrast,
                           "local_std": local_std,
                           "severity": severity_grade(reg.area, width * height, contrast, local_std)})
        if not placed:
            raise RuntimeError(f"synth: could not place any defect on image {index} "
                               f"(preset {preset.name}, {width}x{height})")
    out = np.clip(canvas.img + 0.5, 0, 255).astype(np.uint8)
    return out, placed


def annotation_box(tight, width: int, height: int, min_side: int = MIN_BOX_SIDE) -> list[int]:
    """The annotation box of a defect: its mask's tight box (xyxy, exclusive x1/y1, pixel
    edges) widened/heightened to at least ``min_side`` px, as a labeller draws it.

    A 1-3 px column line has a 1-3 px tight box, where a 1 px localisation error is already
    IoU 0.33; a person in LabelImg draws a few pixels around it. A side shorter than
    ``min_side`` grows symmetrically about its centre (an odd remainder goes to the far
    side), is shifted back inside the image when it would cross a border (as the original's
    ``adjust_boundary``) and is finally clipped to the image (only when the image side itself
    is shorter than ``min_side``). Longer sides and the masks are unchanged; every format
    (COCO ``bbox``, VOC ``bndbox``) takes its box from here. Integer maths only:
    deterministic."""
    out = [int(v) for v in tight]
    for lo, hi, size in ((0, 2, int(width)), (1, 3, int(height))):
        a, b = out[lo], out[hi]
        short = min_side - (b - a)
        if short > 0:
            a, b = a - short // 2, b + short - short // 2
            if a < 0:
                a, b = 0, b - a
            if b > size:
                a, b = a - (b - size), size
            a, b = max(a, 0), min(b, size)
        out[lo], out[hi] = a, b
    return out


# ---------------------------------------------------------------------------- per-image work
_CFG: dict = {}


def _keep_freed_memory() -> None:
    """glibc: serve the many 1-3 MB numpy temporaries from the heap instead of fresh
    mmaps. Without it, page faults on new mappings cost ~40% of a worker's time.
    Only called in pool workers (never changes the caller's process)."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 256 << 20)      # M_MMAP_THRESHOLD
        libc.mallopt(-1, 512 << 20)      # M_TRIM_THRESHOLD
    except (OSError, AttributeError):     # not glibc: nothing to tune
        pass


def _init_worker(cfg: dict, pool_worker: bool = False) -> None:
    if pool_worker:
        _keep_freed_memory()
    _CFG.clear()
    _CFG.update(cfg)


def _work(job) -> dict:
    index, stem, split, normal = job
    c = _CFG
    preset = PRESETS[c["preset"]]
    w, h = c["size"]
    out = Path(c["out"])
    img, placed = render(preset, index, c["seed"], w, h, normal)
    file_name = f"{stem}.{W.IMAGE_EXT}"
    data = W.encode_image(img)
    W.write_bytes(out / "images" / file_name, data)
    img = W.decode_image(data)             # every other format shows the very same pixels

    cat_of = {name: i + 1 for i, name in enumerate(preset.classes)}
    class_mask = np.zeros((h, w), np.uint8)
    defects = []
    for d in placed:
        reg = d["region"]
        sub = class_mask[reg.slices]
        sub[reg.mask] = cat_of[d["name"]]
        defects.append({"name": d["name"], "category_id": cat_of[d["name"]],
                        "box": annotation_box(reg.box, w, h), "mask_box": list(reg.box),
                        "area": reg.area, "severity": d["severity"],
                        "contrast": round(d["contrast"], 3),
                        "points": [[float(x), float(y)] for x, y in reg.polygon]})
    W.save_png(out / "masks" / f"{stem}.png", class_mask, level=6)

    mvtec_type = None
    if normal:
        W.save_png(out / "mvtec" / split / "good" / f"{stem}.png", img)
    elif split == "test":
        largest = max(defects, key=lambda d: d["area"])
        mvtec_type = largest["name"]
        tdir = out / "mvtec" / "test" / mvtec_type
        gdir = out / "mvtec" / "ground_truth" / mvtec_type
        tdir.mkdir(parents=True, exist_ok=True)
        gdir.mkdir(parents=True, exist_ok=True)
        W.save_png(tdir / f"{stem}.png", img)
        W.save_png(gdir / f"{stem}_mask.png", np.where(class_mask > 0, 255, 0).astype(np.uint8),
                   level=6)

    if defects:
        W.dump_json(W.labelme(file_name, w, h, defects), out / "labelme" / f"{stem}.json", indent=2)
        for k, d in enumerate(defects):
            x0, y0, x1, y1 = W.crop_box(d["mask_box"], w, h)   # crops as before: around the mask
            W.save_png(out / "severity" / str(d["severity"]) / f"{stem}_{k}.png",
                       np.ascontiguousarray(img[y0:y1, x0:x1]))
    with open(out / "voc" / "Annotations" / f"{stem}.xml", "w", encoding="utf-8", newline="\n") as f:
        f.write(W.voc_xml(file_name, w, h, defects))

    return {"id": index + 1, "stem": stem, "file_name": file_name, "split": split,
            "normal": bool(normal), "width": w, "height": h, "defects": defects,
            "mvtec_type": mvtec_type}


# ---------------------------------------------------------------------------- public API
def generate(preset: str, out, num_images: int | None = None, normal_ratio: float | None = None,
             size=None, seed: int = 0, workers: int | None = None) -> dict:
    """Write a synthetic dataset in every format under ``out``; returns dataset.json's content.

    ``num_images``/``normal_ratio``/``size`` default to the preset's values; ``size`` is
    ``(W, H)`` or ``"WxH"``. The files depend only on (preset, num_images, normal_ratio,
    size, seed), never on ``workers``.
    """
    p, n, ratio, (w, h), seed, workers = _check_args(preset, num_images, normal_ratio, size,
                                                     seed, workers)
    out = Path(out)
    _prepare_out(out)
    split, normal = plan(n, ratio, seed)
    digits = max(6, len(str(n - 1)))
    jobs = [(i, f"{i:0{digits}d}", split[i], bool(normal[i])) for i in range(n)]
    cfg = {"preset": p.name, "size": (w, h), "seed": seed, "out": str(out)}

    if workers == 1 or n < 8:
        _init_worker(cfg)
        records = [_work(j) for j in track(jobs, desc=f"make_synth {p.name}", unit="img")]
    else:
        import multiprocessing as mp
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        chunk = max(1, min(16, n // (workers * 8)))
        with ctx.Pool(min(workers, n), initializer=_init_worker,
                      initargs=(cfg, True)) as pool:
            records = list(track(pool.imap(_work, jobs, chunksize=chunk), total=n,
                                 desc=f"make_synth {p.name}", unit="img"))

    classes = p.classes
    for s in ("train", "test"):
        W.dump_json(W.coco(records, classes, s), out / "coco" / "annotations" / f"instances_{s}.json")
        with open(out / "voc" / "ImageSets" / "Main" / f"{s}.txt", "w", newline="\n") as f:
            f.write("".join(r["stem"] + "\n" for r in records if r["split"] == s))

    meta = _summary(p, records, n, ratio, (w, h), seed)
    W.dump_json(meta, out / "dataset.json", indent=2)
    return meta


def _summary(p: Preset, records, n, ratio, size, seed) -> dict:
    def count(rs):
        return {"images": len(rs), "normal": sum(r["normal"] for r in rs),
                "defective": sum(not r["normal"] for r in rs),
                "instances": sum(len(r["defects"]) for r in rs)}

    per_split = {s: [r for r in records if r["split"] == s] for s in ("train", "test")}
    per_class = {c: {"train": 0, "test": 0, "total": 0} for c in p.classes}
    grades = {str(g): 0 for g in range(1, 6)}
    mvtec = {}
    for r in records:
        for d in r["defects"]:
            per_class[d["name"]][r["split"]] += 1
            per_class[d["name"]]["total"] += 1
            grades[str(d["severity"])] += 1
        if r["mvtec_type"]:
            mvtec[r["mvtec_type"]] = mvtec.get(r["mvtec_type"], 0) + 1
    return {
        "generator": "defectkit.data.synth",
        "version": VERSION,
        "preset": p.name,
        "seed": seed,
        "arguments": {"preset": p.name, "num_images": n, "normal_ratio": ratio,
                      "size": list(size), "seed": seed},
        "classes": p.classes,
        "image_ext": W.IMAGE_EXT,
        "splits": {s: [r["file_name"] for r in rs] for s, rs in per_split.items()},
        "counts": {"total": count(records), "train": count(per_split["train"]),
                   "test": count(per_split["test"]), "per_class": per_class,
                   "severity": grades, "mvtec_test_types": dict(sorted(mvtec.items()))},
    }
