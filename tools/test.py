"""Evaluate a checkpoint on the config's test split.

    python tools/test.py configs/classifier/resnet18_tiny_synth.yaml work_dirs/resnet18_tiny_synth/latest.pth

Prints the metrics table and the model-call time per image (ATT: mean, over GT-normal
and over GT-defective images) with the evaluator's timing metrics (a detector: alpha, beta,
ideal time), and writes to <work-dir>/test/ (--work-dir as in tools/train.py, default
work_dirs/<config-stem>; --out-dir DIR names the output folder itself): metrics.json,
predictions.json, plots (confusion matrix, curves) and, with --show N, N visualised
predictions. Exported predictions keep the source's own image and category ids (predictions.bbox.json for a detector). With
``skip_invalid: true`` an unreadable image is left out (never replaced), printed, and
listed in metrics.json under ``skipped``; a progress bar with ETA runs meanwhile.
"""
import argparse
import json
import sys
import time
from pathlib import Path

from _common import add_cfg_options, add_no_ema, add_work_dir, load, pipeline_norm, result_names, work_dir


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("checkpoint", nargs="?",
                   help="weights to test; omitted only for models that load their own "
                        "(TwoModelDetector: classifier_checkpoint / detector_checkpoint)")
    add_work_dir(p, "test/")
    p.add_argument("--out-dir", help="the output folder itself (the older spelling; default: WORK_DIR/test)")
    add_no_ema(p)
    p.add_argument("--split", default="test", choices=["test", "val", "train"],
                   help="which data split of the config to evaluate (default: test)")
    p.add_argument("--batch-size", type=int, default=1,
                   help="images per model call (default 1, so ATT is per-image latency)")
    p.add_argument("--num-workers", type=int, help="data loader workers (default: data.num_workers)")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--show", type=int, default=8, metavar="N",
                   help="draw the first N predictions on their original images, with the ground "
                        "truth, into OUT_DIR/show/ (default 8; 0: none)")
    add_cfg_options(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load(args)
    import torch

    from defectkit.engine import (build_dataset, build_eval_loader, build_evaluator, init_model,
                                  resolve_device, run_inference)
    from defectkit.engine.builders import check_classes, loads_own_weights
    from defectkit.engine.inference import skipped_line

    data_cfg = cfg.get("data", {}).get(args.split)
    if not data_cfg:
        sys.exit(f"config error: data.{args.split} is not set in {args.config}")
    if "evaluation" not in cfg:
        sys.exit(f"config error: no `evaluation` section in {args.config}")
    out_dir = Path(args.out_dir or work_dir(args, cfg) / "test")
    out_dir.mkdir(parents=True, exist_ok=True)

    if args.checkpoint is None and not loads_own_weights(cfg["model"]):
        sys.exit(f"tools/test.py: give the checkpoint to test after {args.config}")
    device = resolve_device(args.device or cfg.get("device"))
    dataset = build_dataset(data_cfg)
    if args.checkpoint is None:                 # the model's weights come from its own config
        cfg.setdefault("classes", list(dataset.classes))
    model, meta = init_model(cfg, args.checkpoint, device, use_ema=not args.no_ema)
    classes = check_classes(meta.get("classes"), dataset.classes, f"data.{args.split}")
    evaluator = build_evaluator(cfg["evaluation"], classes, dataset=dataset)
    workers = args.num_workers if args.num_workers is not None else cfg["data"].get("num_workers", 2)
    loader = build_eval_loader(dataset, batch_size=args.batch_size, num_workers=workers, distributed=False)

    weights = args.checkpoint if args.checkpoint is not None else "the weights its config names"
    print(f"evaluating {cfg['model']['type']} ({weights}) on data.{args.split}: {len(dataset)} images, "
          f"device {device}")
    t0 = time.perf_counter()
    out = run_inference(model, loader, evaluator, device, desc=f"test data.{args.split}")
    wall = time.perf_counter() - t0
    metrics = dict(out.metrics or {})
    metrics.update(out.timing)
    skipped = [{"path": s["path"], "error": s["error"]} for s in out.skipped] + [
        {"path": None, "error": e, "when": "reading the annotations"}
        for e in getattr(dataset, "skipped_at_read", [])]   # dropped by the reader (skip_invalid)
    metrics["num_skipped"] = len(skipped)
    print(evaluator.summary(metrics))
    if skipped:
        print(skipped_line(skipped, limit=len(skipped)))
    t = out.timing
    print(f"ATT (model call per image, batch {args.batch_size}): {t['att_ms']:.2f} ms | "
          f"GT-normal {t['att_normal_ms']:.2f} ms | GT-defective {t['att_defective_ms']:.2f} ms"
          f"   ({t['num_images']} images, {wall:.1f} s wall)")
    timing_line = evaluator.add_timing(metrics, out.times)
    if timing_line:
        print(timing_line)
    record = {"config": str(args.config), "checkpoint": str(args.checkpoint), "weights": meta.get("weights"),
              "split": args.split,
              "device": str(device), "torch": torch.__version__, "batch_size": args.batch_size,
              "params": sum(p.numel() for p in model.parameters()), "metrics": metrics,
              "skipped": skipped}
    (out_dir / "metrics.json").write_text(json.dumps(record, indent=2, default=float))
    pred_path = evaluator.write_predictions(out.results, out.metas, out_dir)
    artifacts = evaluator.save_artifacts(metrics, out_dir) or []
    if args.show:
        artifacts += show(dataset, out.results, cfg, classes, out_dir / "show", args.show, out.metas)
    print(f"wrote {out_dir / 'metrics.json'}, {pred_path}" +
          "".join(f", {a}" for a in artifacts))
    return 0


def show(dataset, results, cfg, classes, out_dir, n, metas=None):
    """Draw the first ``n`` predictions on their ORIGINAL images with their ground truth
    (``draw_result``: image | GT | prediction for segmentation, GT boxes in green and
    predicted boxes with class names and scores for detection, heat-map panels for anomaly,
    a banner for classification) as out_dir/<index>_<name>.png. ``metas`` (the results'
    sample metas) find each result's record; a picture that fails is reported and skipped.
    Returns ``[str(out_dir)]``, or [] when nothing was drawn."""
    from defectkit.progress import track
    from defectkit.visualization import draw_result, to_pil

    if n <= 0 or not results:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    target = cfg["model"].get("target", "is_defective")
    index = {str(getattr(r, "img_path", None)): j for j, r in enumerate(getattr(dataset, "records", []))}
    raw = getattr(dataset, "load_sample", None)     # the untransformed sample: original pixels
    written = 0
    for i, res in enumerate(track(results[:n], desc="show", unit="img")):
        meta = metas[i] if metas and i < len(metas) and isinstance(metas[i], dict) else {}
        j = index.get(str(meta.get("path")), i)
        try:
            if callable(raw):
                sample, pipeline = raw(j), dataset.pipeline
            else:                                    # no original: the pipeline's picture
                sample, pipeline = dataset[j], None
                sample["image"] = to_pil(sample["image"], *pipeline_norm(dataset.pipeline))
            key = res.gt_key or target               # e.g. "mask", ("boxes", "labels"), the target
            keys = key if isinstance(key, tuple) else (key,)
            gt = None
            if all(k in sample for k in keys):
                gt = ({k: sample[k] for k in keys} if isinstance(key, tuple)
                      else int(sample[key]) if key == target else sample[key])
            img = draw_result(sample["image"], res, result_names(cfg, res, classes), gt=gt, pipeline=pipeline)
            img.save(out_dir / f"{i:05d}_{Path(str(meta.get('path') or i)).stem}.png")
            written += 1
        except Exception as e:                      # noqa: BLE001 (a picture never costs the metrics)
            print(f"show: could not draw prediction {i} ({meta.get('path', j)}): {type(e).__name__}: {e}",
                  file=sys.stderr)
    return [str(out_dir)] if written else []


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
