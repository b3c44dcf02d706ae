"""F1 and ATT of a detector as the proportion of normal test images varies (DefectNet's
"normal proportion test" figure).

    python tools/normal_proportion.py CONFIG CHECKPOINT [--alphas 0,0.1,...,1] [--seed 666]

The model runs ONCE over the test split (batch 1, CUDA-synchronised model-call time per
image). For every alpha the image set is re-sampled from those per-image records, not
re-run: all images of the group that limits the size are kept and the other group is
subsampled (``random.seed(seed)``, ``random.sample``) so that normal / total = alpha
(alpha 0: every defective image; alpha 1: every normal image). F1 (image-level macro F1),
ATT, ATT_N, ATT_D (and mAP with --map) are recomputed on each subset. Writes
``normal_proportion.md`` (Markdown table), ``normal_proportion.json`` and
``normal_proportion.png`` (F1 and ATT vs alpha) to --out-dir (default
work_dirs/<config-stem>/normal_proportion/).
"""
import argparse
import json
import math
import random
import sys
from pathlib import Path

from _common import add_cfg_options, add_no_ema, add_work_dir, load, work_dir


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("checkpoint")
    p.add_argument("--alphas", default=",".join(f"{a / 10:.1f}" for a in range(11)),
                   help="comma-separated normal proportions (default 0,0.1,...,1)")
    p.add_argument("--seed", type=int, default=666)
    p.add_argument("--split", default="test", choices=["test", "val", "train"])
    p.add_argument("--map", action="store_true", help="also recompute COCO mAP per alpha (slower)")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--num-workers", type=int, help="data loader workers (default: data.num_workers)")
    add_work_dir(p, "normal_proportion/")
    p.add_argument("--out-dir", help="the output folder itself (default: WORK_DIR/normal_proportion)")
    add_no_ema(p)
    add_cfg_options(p)
    return p.parse_args(argv)


def resample(normal: list, defective: list, alpha: float, seed: int = 666) -> list:
    """Indices with normal proportion ``alpha`` (as close as rounding allows): the group
    that limits the size is kept whole, the other is subsampled with ``random.seed(seed)``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    random.seed(seed)
    if alpha >= 1.0:
        return list(normal)
    if alpha <= 0.0:
        return list(defective)
    n_normal = int(round(alpha / (1.0 - alpha) * len(defective)))
    if n_normal <= len(normal):
        return sorted(random.sample(list(normal), n_normal)) + list(defective)
    n_def = int(round((1.0 - alpha) / alpha * len(normal)))
    return list(normal) + sorted(random.sample(list(defective), min(n_def, len(defective))))


def evaluate_subset(records: list, times: list, score_thr: float, evaluator=None) -> dict:
    """Image-level F1 and ATT (ms) of per-image ``records`` (DetectionEvaluator records) and
    ``times`` (seconds per image, same order); mAP when ``evaluator`` is given."""
    from defectkit.evaluation.detection import image_level_metrics

    y_true = [int(r["is_defective"]) for r in records]
    y_pred = [int(any(s > score_thr for s in r["scores"])) for r in records]
    m = image_level_metrics(y_true, y_pred) if records else {"f1_macro": math.nan}

    def ms(v):
        return 1000.0 * sum(v) / len(v) if v else math.nan

    out = {"num_images": len(records), "num_normal": y_true.count(0),
           "alpha": y_true.count(0) / len(y_true) if y_true else math.nan,
           "f1": m["f1_macro"], "att_ms": ms(times),
           "att_normal_ms": ms([t for t, d in zip(times, y_true) if d == 0]),
           "att_defective_ms": ms([t for t, d in zip(times, y_true) if d == 1])}
    if evaluator is not None and records:
        evaluator.records = list(records)
        out["mAP"] = evaluator.compute()["mAP"]
    return out


def proportion_table(records: list, times: list, alphas, seed: int = 666, score_thr: float = 0.05,
                     evaluator=None) -> list[dict]:
    normal = [i for i, r in enumerate(records) if int(r["is_defective"]) == 0]
    defective = [i for i, r in enumerate(records) if int(r["is_defective"]) == 1]
    rows = []
    for a in alphas:
        idx = resample(normal, defective, float(a), seed)
        row = evaluate_subset([records[i] for i in idx], [times[i] for i in idx], score_thr, evaluator)
        rows.append({"target_alpha": float(a), **row})
    return rows


def to_markdown(rows: list[dict]) -> str:
    has_map = any("mAP" in r for r in rows)
    head = ["alpha (target)", "alpha", "images", "F1"] + (["mAP"] if has_map else []) + \
        ["ATT(ms)", "ATT_N", "ATT_D"]

    def f(v, d=3):
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{d}f}"

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f(r["target_alpha"], 2), f(r["alpha"]), str(r["num_images"]), f(r["f1"])] + \
            ([f(r.get("mAP"))] if has_map else []) + \
            [f(r["att_ms"], 2), f(r["att_normal_ms"], 2), f(r["att_defective_ms"], 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], out_path, title: str = "") -> str:
    """F1 (left axis) and ATT in ms (right axis) against the normal proportion."""
    from defectkit.visualization.plots import _figure, _save

    fig = _figure((6, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    xs = [r["target_alpha"] for r in rows]
    ax.plot(xs, [r["f1"] for r in rows], "o-", color="tab:blue", label="F1")
    ax.set_xlabel("normal proportion alpha")
    ax.set_ylabel("F1 (macro)", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(xs, [r["att_ms"] for r in rows], "s--", color="tab:red", label="ATT")
    ax2.set_ylabel("ATT (ms)", color="tab:red")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    return _save(fig, out_path)


def main(argv=None):
    args = parse_args(argv)
    cfg = load(args)
    from defectkit.engine import (build_dataset, build_eval_loader, build_evaluator, init_model,
                                  resolve_device, run_inference)
    from defectkit.evaluation.detection import DetectionEvaluator

    try:
        alphas = [float(a) for a in args.alphas.split(",") if a.strip()]
    except ValueError:
        sys.exit(f"--alphas: comma-separated numbers expected, got {args.alphas!r}")
    data_cfg = cfg.get("data", {}).get(args.split)
    if not data_cfg:
        sys.exit(f"config error: data.{args.split} is not set in {args.config}")
    out_dir = Path(args.out_dir or work_dir(args, cfg) / "normal_proportion")
    out_dir.mkdir(parents=True, exist_ok=True)

    device = resolve_device(args.device or cfg.get("device"))
    dataset = build_dataset(data_cfg)
    model, meta = init_model(cfg, args.checkpoint, device, use_ema=not args.no_ema)
    classes = meta.get("classes") or dataset.classes
    eval_cfg = dict(cfg.get("evaluation") or {"type": "DetectionEvaluator"})
    evaluator = build_evaluator(eval_cfg, classes, dataset=dataset)
    if not isinstance(evaluator, DetectionEvaluator):
        sys.exit(f"{args.config}: normal_proportion needs a detector config (evaluation.type "
                 f"DetectionEvaluator), got {type(evaluator).__name__}")
    workers = args.num_workers if args.num_workers is not None else cfg["data"].get("num_workers", 2)
    loader = build_eval_loader(dataset, batch_size=1, num_workers=workers, distributed=False)
    print(f"inference once over data.{args.split}: {len(dataset)} images, device {device}")
    out = run_inference(model, loader, evaluator, device, keep_results=False)
    records = list(evaluator.records)
    times = [t for t, _ in out.times]
    rows = proportion_table(records, times, alphas, args.seed, evaluator.score_thr,
                            evaluator if args.map else None)
    table = to_markdown(rows)
    print(table)
    (out_dir / "normal_proportion.md").write_text(table + "\n")
    (out_dir / "normal_proportion.json").write_text(json.dumps(
        {"config": str(args.config), "checkpoint": str(args.checkpoint), "seed": args.seed,
         "rows": rows}, indent=2))
    png = plot(rows, out_dir / "normal_proportion.png", title=Path(args.config).stem)
    print(f"wrote {out_dir / 'normal_proportion.md'}, {out_dir / 'normal_proportion.json'}, {png}")
    return 0


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
