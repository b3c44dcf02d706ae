"""Plot loss and metric curves from a training run's scalars.jsonl to a PNG.

    python tools/plot_logs.py work_dirs/resnet18_tiny_synth/scalars.jsonl
    python tools/plot_logs.py work_dirs/resnet18_tiny_synth --keys loss_cls f1_macro --out curves.png

One panel per key (default: every loss, the learning rate and every validation metric),
one line per mode (train / val); the x axis is the training iteration, with integer
ticks only. ``memory_mb`` (and other memory readings, timings in ms such as ``att_ms``,
counts such as ``num_images``) is left out of the default panels: a resource reading, not a
learning curve; ``--keys memory_mb`` plots it on its own.
"""
import argparse
import sys
from pathlib import Path

import _common  # noqa: F401  (source-checkout import path)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("log", help="scalars.jsonl, or a work dir containing it")
    p.add_argument("--keys", nargs="+", help="which scalars to plot (default: losses, lr and val metrics; memory_mb only when named)")
    p.add_argument("--out", help="PNG path (default: next to the log, curves.png)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from defectkit.visualization import plot_scalars, read_scalars

    log = Path(args.log)
    if log.is_dir():
        log = log / "scalars.jsonl"
    if not log.is_file():
        sys.exit(f"error: {log}: no such file (expected a scalars.jsonl written by tools/train.py)")
    records = read_scalars(log)
    if not records:
        sys.exit(f"error: {log}: no records")
    out = Path(args.out) if args.out else log.parent / "curves.png"
    path = plot_scalars(records, out, keys=args.keys)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
