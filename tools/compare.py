"""Train (or reuse) and test several configs, then print the seed-style Markdown table.

    python tools/compare.py configs/defectnet/*_tiny_synth.yaml [--train] [--out table.md]

For each config, ``<work-root>/<config-stem>/test/metrics.json`` (what tools/test.py
writes) is reused when present. Otherwise the checkpoint ``<work-root>/<stem>/latest.pth``
is tested with tools/test.py, and when it is missing too (or with --train) the config is
first trained with tools/train.py. Models that load their own weights (the two-model
baseline, from its classifier and detector checkpoints) are only tested. The tools run
as subprocesses, each command printed before it runs. The columns follow the family of
the results (one table per family):

- detection (and classifiers next to it): ``Model | mAP | F1 | ATT(ms) | ATT_N | ATT_D``
  (F1 = image-level macro F1; ATT = model-call ms per image, over all / GT-normal /
  GT-defective images);
- segmentation (metrics with ``mIoU``): ``Model | mIoU | defect IoU | ms/img | params``
  (mmseg-style dataset IoUs, model-call ms per image, parameter count).

A metric a model does not report (mAP of a classifier) is ``n/a``.

    python tools/compare.py configs/znet/znet_tiny_ballscrew.yaml configs/znet/unet_tiny_ballscrew.yaml

Small models on small sets vary a lot from run to run; ``--seeds 0 1 2`` trains every config
once per seed (work dirs ``<stem>_seed<N>``), prints the per-run table and then one with
mean ± sample std per config.
"""
import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

# (column, metrics.json key, digits); digits None = a parameter count (4.39M)
COLUMNS = [("mAP", "mAP", 3), ("F1", "f1_macro", 3), ("ATT(ms)", "att_ms", 2),
           ("ATT_N", "att_normal_ms", 2), ("ATT_D", "att_defective_ms", 2)]
FAMILY_COLUMNS = {
    "detection": COLUMNS,
    "segmentation": [("mIoU", "mIoU", 3), ("defect IoU", "defect_IoU", 3), ("ms/img", "att_ms", 2),
                     ("params", "params", None)],
}


def family(metrics: dict) -> str:
    """Which table a result goes to: segmentation when it has mIoU, else detection."""
    return "segmentation" if "mIoU" in metrics else "detection"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="+", metavar="CONFIG")
    p.add_argument("--train", action="store_true", help="(re)train and test every config")
    p.add_argument("--work-root", default="work_dirs", help="parent of the work dirs (default work_dirs)")
    p.add_argument("--device", help="passed to tools/train.py and tools/test.py")
    p.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                   help="train and test each config once per seed (work dirs <stem>_seed<SEED>) and "
                        "report mean ± std over the seeds, after the per-run table")
    p.add_argument("--out", help="also write the Markdown table to this file")
    return p.parse_args(argv)


def run(cmd) -> None:
    print("\n$ " + " ".join(str(c) for c in cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"compare: step failed (exit {proc.returncode}): {' '.join(map(str, cmd))}")
    print(f"[compare] done in {time.perf_counter() - t0:.1f} s", flush=True)


def loads_own_weights(config: str) -> bool:
    """The two-model baseline loads its parts' checkpoints: it is tested, never trained."""
    import defectkit  # noqa: F401  (registers the models)
    from defectkit.config import load_config
    from defectkit.engine.builders import loads_own_weights as model_loads_own_weights

    return model_loads_own_weights(load_config(config, validate=False).get("model") or {})


def ensure_metrics(config: str, work_root: Path, train: bool, device: str | None = None,
                   seed: int | None = None) -> dict:
    """metrics of ``config`` (with ``seed``: of its run ``<stem>_seed<seed>``): reused,
    tested, or trained then tested."""
    stem = Path(config).stem
    work_dir = work_root / (stem if seed is None else f"{stem}_seed{seed}")
    metrics_path = work_dir / "test" / "metrics.json"
    ckpt = work_dir / "latest.pth"
    dev = ["--device", device] if device else []
    if train or not metrics_path.is_file():
        own_weights = loads_own_weights(config)    # e.g. two-model: tested from its parts' checkpoints
        if not own_weights and (train or not ckpt.is_file()):
            seed_arg = [] if seed is None else ["--seed", str(seed)]
            run([PY, ROOT / "tools/train.py", config, "--work-dir", work_dir, *seed_arg, *dev])
        run([PY, ROOT / "tools/test.py", config, *([] if own_weights else [ckpt]),
             "--out-dir", work_dir / "test", *dev])
    else:
        print(f"[compare] reusing {metrics_path} (--train retrains)")
    record = json.loads(metrics_path.read_text())
    metrics = dict(record["metrics"])
    if "params" in record:                     # tools/test.py stores the parameter count
        metrics.setdefault("params", record["params"])
    return metrics


def aggregate(runs: list[dict]) -> dict:
    """Per metric over the seeds' runs: ``{key: (mean, sample std, n)}`` for numeric values."""
    out = {}
    for key in runs[0]:
        vals = [r.get(key) for r in runs]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v) for v in vals):
            mean = sum(vals) / len(vals)
            std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
            out[key] = (mean, std, len(vals))
    return out


def fmt(v, digits: int | None) -> str:
    if isinstance(v, tuple):                   # (mean, std, n) over seeds
        mean, std, n = v
        return fmt(mean, digits) if n == 1 else f"{fmt(mean, digits)} ± {fmt(std, digits)}"
    if v is None or not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if digits is None:
        return f"{v / 1e6:.2f}M"
    return f"{v:.{digits}f}"


def table(rows: list[tuple[str, dict]], columns=None) -> str:
    """One Markdown table; ``columns`` default to the detection columns."""
    columns = columns or COLUMNS
    head = ["Model"] + [c for c, _, _ in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in rows:
        lines.append("| " + " | ".join([name] + [fmt(m.get(k), d) for _, k, d in columns]) + " |")
    return "\n".join(lines)


def tables(rows: list[tuple[str, dict]]) -> str:
    """One table per family, in the order the families first appear."""
    groups: dict[str, list] = {}
    for name, m in rows:
        groups.setdefault(family(m), []).append((name, m))
    return "\n\n".join(table(g, FAMILY_COLUMNS[f]) for f, g in groups.items())


def main(argv=None):
    args = parse_args(argv)
    work_root = Path(args.work_root)
    if not work_root.is_absolute():
        work_root = ROOT / work_root
    missing = [c for c in args.configs if not Path(c).is_file() and not (ROOT / c).is_file()]
    if missing:
        sys.exit(f"compare: config not found: {', '.join(missing)}")
    configs = [Path(c).resolve() if Path(c).is_file() else ROOT / c for c in args.configs]
    if not args.seeds:
        rows = [(c.stem, ensure_metrics(str(c), work_root, args.train, args.device)) for c in configs]
        out = tables(rows)
    else:
        runs, means = [], []
        for c in configs:
            # a model that loads its parts' weights (two-model) has no seed of its own
            seeds = [None] if loads_own_weights(str(c)) else args.seeds
            per_seed = [ensure_metrics(str(c), work_root, args.train, args.device, s) for s in seeds]
            runs += [(c.stem if s is None else f"{c.stem} (seed {s})", m) for s, m in zip(seeds, per_seed)]
            means.append((f"{c.stem} (n={len(seeds)})", aggregate(per_seed)))
        out = (tables(runs) + f"\n\nMean ± sample std over seeds {' '.join(map(str, args.seeds))}:\n\n"
               + tables(means))
    print("\n" + out)
    if args.out:
        Path(args.out).write_text(out + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
