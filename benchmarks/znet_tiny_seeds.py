"""ZNet (fixed / original) vs UNet on the small synthetic ball-screw set over several seeds.

    OMP_NUM_THREADS=1 python benchmarks/znet_tiny_seeds.py --seeds 0 1 2        # train + test what is missing
    python benchmarks/znet_tiny_seeds.py --seeds 0 1 2 --no-train                # only aggregate

For every config and seed: ``tools/train.py CONFIG --seed S --work-dir <root>/<stem>_s<S>``
then ``tools/test.py CONFIG <work-dir>/latest.pth --out-dir <work-dir>/test`` (skipped when
``test/metrics.json`` exists). Prints defect IoU, mIoU and the znet_repo defect IoU as
mean ± sample standard deviation over the seeds, and every run's values; writes JSON.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["configs/znet/znet_tiny_ballscrew.yaml", "configs/znet/znet_original_tiny_ballscrew.yaml",
           "configs/znet/unet_tiny_ballscrew.yaml"]
KEYS = [("defect_IoU", "defect IoU"), ("mIoU", "mIoU"), ("znet_defect_IoU", "znet_repo defect IoU")]


def run(cmd):
    print("$ " + " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--configs", nargs="+", default=CONFIGS)
    p.add_argument("--root", default="work_dirs/znet_runs")
    p.add_argument("--no-train", action="store_true", help="only aggregate existing results")
    p.add_argument("--out", default="work_dirs/znet_runs/summary.json")
    args = p.parse_args(argv)
    root = ROOT / args.root
    results = {}
    for cfg in args.configs:
        stem = Path(cfg).stem
        for s in args.seeds:
            wd = root / f"{stem}_s{s}"
            mpath = wd / "test" / "metrics.json"
            if not mpath.is_file() and not args.no_train:
                t0 = time.perf_counter()
                run([sys.executable, "tools/train.py", cfg, "--seed", s, "--work-dir", wd])
                run([sys.executable, "tools/test.py", cfg, wd / "latest.pth", "--out-dir", wd / "test"])
                print(f"  {stem} seed {s}: {time.perf_counter() - t0:.0f} s", flush=True)
            if mpath.is_file():
                rec = json.loads(mpath.read_text())
                results.setdefault(stem, {})[s] = {k: rec["metrics"][k] for k, _ in KEYS} | {"params": rec.get("params")}
    lines = ["| config | params | " + " | ".join(f"{label} (mean ± sd)" for _, label in KEYS) + " | per seed (defect IoU) |",
             "|" + "---|" * (len(KEYS) + 3)]
    for stem, per_seed in results.items():
        cells = []
        for k, _ in KEYS:
            vals = [100 * r[k] for r in per_seed.values()]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.mean(vals):.1f} ± {sd:.1f}")
        seeds = ", ".join(f"s{s}: {100 * r['defect_IoU']:.1f}" for s, r in sorted(per_seed.items()))
        params = next(iter(per_seed.values()))["params"]
        lines.append(f"| {stem} | {params / 1e6:.2f}M | " + " | ".join(cells) + f" | {seeds} |")
    print("\n".join(lines))
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
