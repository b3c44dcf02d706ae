"""`make demo`: synthetic data -> train -> test -> benchmark for every small model, then one table.

    python tools/demo.py            # reuses data and finished runs when present
    python tools/demo.py --fresh    # regenerate data and retrain everything

Each step runs the same command a user would type (printed before it runs), so the
demo doubles as a walk-through of the tools. Families add a row to RUNS as they land.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

# the synthetic datasets the runs need: out dir -> make_synth arguments
DATASETS = {
    "data/synth_fabric": ["--preset", "fabric", "--num-images", "400", "--size", "256x256", "--seed", "0"],
    "data/synth_ballscrew_tiny": ["--preset", "ballscrew", "--num-images", "300", "--size", "256x128", "--seed", "0"],
    "data/demo_padim": ["--preset", "fabric", "--num-images", "200", "--size", "128x128", "--seed", "0"],
}

# one row per run: (family, config, the metrics shown in the table)
_CLS = [("accuracy", "acc"), ("f1_macro", "macro-F1"), ("roc_auc", "AUROC")]
_DET = [("mAP", "mAP"), ("AP50", "AP50"), ("f1_macro", "image F1"), ("att_ms", "ATT ms"),
        ("att_normal_ms", "ATT_N"), ("att_defective_ms", "ATT_D")]
_SEG = [("mIoU", "mIoU"), ("defect_IoU", "defect IoU"), ("znet_defect_IoU", "znet_repo IoU")]
RUNS = [
    ("classifier", "configs/classifier/smallcnn_tiny_synth.yaml", _CLS),
    # DefectNet vs one-model, same detector and 2-epoch schedule (docs/defectnet.md has 12 epochs)
    ("detector", "configs/defectnet/one_model_cascade_demo_synth.yaml", _DET),
    ("DefectNet", "configs/defectnet/defectnet_const_cascade_demo_synth.yaml", _DET),
    ("PaDiM", "configs/padim/padim_tiny_synth.yaml",
     [("image_auroc", "img AUROC"), ("pixel_auroc", "pix AUROC"), ("aupro", "AUPRO")]),
    ("ZNet", "configs/znet/znet_tiny_ballscrew.yaml", _SEG),
    ("UNet", "configs/znet/unet_demo_ballscrew.yaml", _SEG),
]


def run(cmd: list[str]) -> None:
    print("\n$ " + " ".join(str(c) for c in cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"demo: step failed (exit {proc.returncode}): {' '.join(map(str, cmd))}")
    print(f"[demo] done in {time.perf_counter() - t0:.1f} s", flush=True)


def make_data(out: str, synth_args: list[str], fresh: bool) -> None:
    info = ROOT / out / "dataset.json"
    if info.is_file() and not fresh:
        print(f"[demo] reusing {out} (delete it or pass --fresh to regenerate)")
        return
    run([PY, "tools/make_synth.py", "--out", out, *synth_args])


def finished(work_dir: Path) -> bool:
    """A previous run of this config reached its last epoch (its test metrics exist)."""
    return (work_dir / "test" / "metrics.json").is_file() and (work_dir / "latest.pth").is_file()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fresh", action="store_true", help="regenerate data and retrain")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")

    for out, synth_args in DATASETS.items():
        make_data(out, synth_args, args.fresh)

    rows = []
    for family, config, shown in RUNS:
        stem = Path(config).stem
        work_dir = ROOT / "work_dirs" / stem
        ckpt = work_dir / "latest.pth"
        timing = work_dir / "demo_time.json"
        if args.fresh or not finished(work_dir) or not timing.is_file():
            t0 = time.perf_counter()
            run([PY, "tools/train.py", config, "--work-dir", work_dir] + ([] if args.fresh else ["--resume"]))
            run([PY, "tools/test.py", config, ckpt, "--out-dir", work_dir / "test"])
            timing.write_text(json.dumps({"train_test_s": time.perf_counter() - t0}))
        else:
            print(f"[demo] reusing the finished run in {work_dir.relative_to(ROOT)} (--fresh retrains)")
        train_s = json.loads(timing.read_text())["train_test_s"]
        run([PY, "tools/benchmark.py", config, ckpt, "--out", work_dir / "benchmark.json"])
        metrics = json.loads((work_dir / "test" / "metrics.json").read_text())["metrics"]
        bench = json.loads((work_dir / "benchmark.json").read_text())
        rows.append((family, stem, [(label, metrics.get(key)) for key, label in shown], bench, train_s))

    print("\n## defectkit demo results (CPU, synthetic data)\n")
    last_header = None
    for family, stem, vals, bench, train_s in rows:
        header = ["family", "config"] + [label for label, _ in vals] + ["ms/img (p50)", "params (M)",
                                                                         "train+test (s)"]
        if header != last_header:   # one table per set of columns
            print(("\n" if last_header else "") + "| " + " | ".join(header) + " |")
            print("|" + "---|" * len(header))
            last_header = header
        cells = [family, stem] + [f"{v:.3f}" if isinstance(v, (int, float)) else "n/a" for _, v in vals] + [
            f"{bench['ms_per_image']['p50']:.1f}", f"{bench['params'] / 1e6:.2f}", f"{train_s:.0f}"]
        print("| " + " | ".join(cells) + " |")
    print(f"\ndemo finished in {time.perf_counter() - t_start:.0f} s; outputs in work_dirs/")
    return 0


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
