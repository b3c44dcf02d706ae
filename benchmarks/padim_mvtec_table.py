"""Fit and test PaDiM on every MVTec AD category; print the per-category table and the mean.

    python benchmarks/padim_mvtec_table.py configs/padim/padim_r18_rd100_mvtec.yaml \
        [--categories bottle cable ...] [--work-dir work_dirs/padim_mvtec] [--cfg-options ...]

Each category: ``train`` (fit + thresholds on held-out training normals) then evaluation on
its test split with the config's ``evaluation``; writes WORK/<category>/ (checkpoint, test
metrics) and WORK/table.json. Needs data/mvtec_ad/<category>/ (see data/README.md).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MVTEC_CATEGORIES = ["carpet", "grid", "leather", "tile", "wood", "bottle", "cable", "capsule", "hazelnut",
                    "metal_nut", "pill", "screw", "toothbrush", "transistor", "zipper"]
COLUMNS = ["image_auroc", "pixel_auroc", "aupro", "image_f1_max", "pixel_f1_max", "image_f1", "pixel_f1"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("--categories", nargs="+", default=MVTEC_CATEGORIES)
    p.add_argument("--work-dir", default="work_dirs/padim_mvtec")
    p.add_argument("--cfg-options", nargs="+", default=[])
    args = p.parse_args(argv)

    from defectkit.config import load_config
    from defectkit.engine import (build_dataset, build_eval_loader, build_evaluator, init_model, run_inference,
                                  train)
    from defectkit.evaluation import format_table

    rows, table = [], {}
    for cat in args.categories:
        cfg = load_config(args.config, args.cfg_options + [f"data.category={cat}"])
        work = Path(args.work_dir) / cat
        train(cfg, work_dir=work)
        model, _ = init_model(cfg, str(work / "latest.pth"))
        dataset = build_dataset(cfg["data"]["test"])
        evaluator = build_evaluator(cfg["evaluation"], dataset.classes, dataset=dataset)
        out = run_inference(model, build_eval_loader(dataset, cfg["data"].get("batch_size", 8), distributed=False),
                            evaluator)
        m = out.metrics
        (work / "test").mkdir(parents=True, exist_ok=True)
        (work / "test" / "metrics.json").write_text(json.dumps(m, indent=2, default=float))
        table[cat] = {k: m.get(k) for k in COLUMNS}
        rows.append([cat] + [m.get(k, float("nan")) for k in COLUMNS])
        print(format_table(["category"] + COLUMNS, rows), flush=True)
    mean = [sum(r[i] for r in rows) / len(rows) for i in range(1, len(COLUMNS) + 1)]
    print("\n" + format_table(["category"] + COLUMNS, rows + [["mean"] + mean]))
    (Path(args.work_dir) / "table.json").write_text(json.dumps(table, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
