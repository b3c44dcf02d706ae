"""Generate a synthetic defect dataset in every annotation format at once.

    python tools/make_synth.py --preset fabric --out data/synth_fabric
    python tools/make_synth.py --preset ballscrew --out data/synth_bs --num-images 200 --size 512x256

Layout of DIR, presets and the severity formula: docs/synthetic_data.md.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# allow `python tools/make_synth.py` from a source checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from defectkit.data.synth import PRESETS, SynthError, generate  # noqa: E402


def _preset_help() -> str:
    rows = []
    for p in PRESETS.values():
        w, h = p.size
        rows.append(f"{p.name}: {', '.join(p.classes)} (default {p.num_images} images "
                    f"{w}x{h}, {p.normal_ratio:.0%} normal)")
    return "; ".join(rows)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description="Write a deterministic synthetic defect dataset under DIR: images/, "
                    "coco/, mvtec/, masks/, labelme/, voc/, severity/ and dataset.json.",
        epilog="Presets -- " + _preset_help())
    ap.add_argument("--preset", required=True, metavar="PRESET",
                    help=f"one of: {', '.join(PRESETS)}")
    ap.add_argument("--out", required=True, metavar="DIR",
                    help="output directory (created; an earlier synthetic dataset there is "
                         "replaced, any other non-empty directory is refused)")
    ap.add_argument("--num-images", type=int, default=None, metavar="N",
                    help="number of images (default: the preset's)")
    ap.add_argument("--normal-ratio", type=float, default=None, metavar="R",
                    help="share of defect-free images in [0, 1] (default: the preset's)")
    ap.add_argument("--size", default=None, metavar="WxH",
                    help="image width x height, e.g. 512x512 (default: the preset's)")
    ap.add_argument("--seed", type=int, default=0, metavar="S",
                    help="random seed; same arguments and seed give byte-identical files "
                         "(default: 0)")
    ap.add_argument("--workers", type=int, default=None, metavar="K",
                    help="worker processes (default: the usable CPU cores); the output does "
                         "not depend on it")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    try:
        meta = generate(args.preset, args.out, num_images=args.num_images,
                        normal_ratio=args.normal_ratio, size=args.size, seed=args.seed,
                        workers=args.workers)
    except SynthError as e:
        print(f"make_synth: error: {e}", file=sys.stderr)
        return 2
    dt = time.perf_counter() - t0
    c = meta["counts"]
    w, h = meta["arguments"]["size"]
    print(f"preset {meta['preset']}  {w}x{h}  seed {meta['seed']}  -> {args.out}")
    for split in ("train", "test", "total"):
        s = c[split]
        print(f"  {split:5s}  images {s['images']:6d}  normal {s['normal']:6d}  "
              f"defective {s['defective']:6d}  defects {s['instances']:6d}")
    print("  defects per class: " + ", ".join(f"{k} {v['total']}" for k, v in c["per_class"].items()))
    print("  severity grades 1..5: " + " ".join(str(c["severity"][str(g)]) for g in range(1, 6)))
    n = c["total"]["images"]
    print(f"  done in {dt:.1f} s ({1000 * dt / n:.1f} ms per image)")
    return 0


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
