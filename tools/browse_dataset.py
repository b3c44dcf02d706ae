"""Draw a dataset's ground truth after its pipeline (what the model sees) to PNG files.

    python tools/browse_dataset.py configs/classifier/resnet18_tiny_synth.yaml --out-dir vis/ --num 16

Boxes with class names, masks as coloured overlays, and a banner with the id and the
image-level label. --original draws the samples before the pipeline. A grid of all drawn
samples is written as grid.png.
"""
import argparse
import sys
from pathlib import Path

from _common import add_cfg_options, add_work_dir, load, pipeline_norm, work_dir

from defectkit.progress import track


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("--split", default="train", choices=["train", "val", "test"])
    add_work_dir(p, "browse_<split>/")
    p.add_argument("--out-dir", help="the output folder itself (default: WORK_DIR/browse_<split>)")
    p.add_argument("--num", type=int, default=16, help="how many samples (default 16)")
    p.add_argument("--start", type=int, default=0, help="first sample index")
    p.add_argument("--original", action="store_true", help="draw samples before the pipeline")
    add_cfg_options(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load(args)
    from defectkit.engine import build_dataset
    from defectkit.visualization import draw_sample, make_grid

    data_cfg = (cfg.get("data") or {}).get(args.split)
    if not data_cfg:
        sys.exit(f"config error: data.{args.split} is not set in {args.config}")
    dataset = build_dataset(data_cfg)
    out_dir = Path(args.out_dir or work_dir(args, cfg) / f"browse_{args.split}")
    out_dir.mkdir(parents=True, exist_ok=True)
    mean, std = (None, None) if args.original else pipeline_norm(dataset.pipeline)
    drawn = []
    stop = min(len(dataset), args.start + args.num)
    for i in track(range(args.start, stop), desc=f"browse {args.split}", unit="img"):
        sample = dataset.load_sample(i) if args.original else dataset[i]
        img = draw_sample(sample, dataset.classes, mean, std)
        img.save(out_dir / f"{i:05d}.png")
        drawn.append(img)
    if drawn:
        make_grid(drawn, ncols=4).save(out_dir / "grid.png")
    print(f"{args.split}: {len(dataset)} samples, classes {dataset.classes}; "
          f"drew {len(drawn)} to {out_dir}")
    return 0


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
