"""Pick Mask R-CNN's pasting threshold (``evaluation.score_thr``) on a split that is NOT the test split.

    OMP_NUM_THREADS=1 python benchmarks/maskrcnn_score_thr.py configs/znet/maskrcnn_tiny_ballscrew.yaml \
        work_dirs/znet_compare/maskrcnn_tiny_ballscrew_seed0/latest.pth [more checkpoints ...] \
        --split-file data/synth_ballscrew_tiny/voc/ImageSets/Main/train.txt

The config's ``data.test`` dataset is re-pointed at ``--split-file`` (default: the train
split of ``data.train``), keeping the test pipeline (no flips). Every checkpoint predicts the
split ONCE; the instances with ``score >= thr`` are pasted into a class map
(``InstanceSegmentationResult.semantic_map``) and scored with the config's
``SegmentationEvaluator`` settings (protocol, resolution) for each ``--thresholds`` value.
Prints defect IoU and mIoU per threshold (per checkpoint and their mean) and the threshold
of the highest mean defect IoU; ``--out`` writes them as JSON.
"""
import argparse
import copy
import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from defectkit.config import load_config  # noqa: E402
from defectkit.engine.builders import build_dataset, build_eval_loader, dataset_classes, init_model  # noqa: E402
from defectkit.evaluation.segmentation import SegmentationEvaluator  # noqa: E402
from defectkit.structures import SegmentationResult  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--split-file", help="image stems to evaluate on (default: data.train's split_file)")
    p.add_argument("--thresholds", type=float, nargs="+",
                   default=[0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    p.add_argument("--out", help="write the table as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    cfg = load_config(args.config, validate=False)
    split_file = args.split_file or cfg["data"]["train"].get("split_file")
    if split_file == cfg["data"]["test"].get("split_file"):
        sys.exit("maskrcnn_score_thr: the split file is the test split's; pick the threshold elsewhere")
    ds_cfg = copy.deepcopy(cfg["data"]["test"])
    ds_cfg["split_file"] = split_file
    ds = build_dataset(ds_cfg)
    ev_cfg = cfg.get("evaluation") or {}
    table = {}
    for ckpt in args.checkpoints:
        model, _ = init_model(cfg, ckpt, device="cpu")
        batches = []
        with torch.no_grad():
            for batch in build_eval_loader(ds, batch_size=1, distributed=False):
                batches.append((batch, model.predict(batch)))
        for thr in args.thresholds:
            ev = SegmentationEvaluator(classes=dataset_classes(ds), protocol=ev_cfg.get("protocol", "mmseg"),
                                       resolution=ev_cfg.get("resolution", "original"), dataset=ds)
            for batch, results in batches:
                ev.process(batch, [SegmentationResult(mask=r.semantic_map(thr)) for r in results])
            m = ev.compute()
            table.setdefault(thr, {})[ckpt] = {"defect_IoU": float(m["defect_IoU"]), "mIoU": float(m["mIoU"])}
        print(f"{ckpt}: {len(ds)} images of {split_file}", flush=True)
    print(f"\n{'score_thr':>9} | " + " | ".join(f"defect IoU {k}" for k in range(len(args.checkpoints)))
          + " | mean defect IoU | mean mIoU")
    best = None
    for thr, row in table.items():
        d = [row[c]["defect_IoU"] for c in args.checkpoints]
        mi = [row[c]["mIoU"] for c in args.checkpoints]
        md, mm = sum(d) / len(d), sum(mi) / len(mi)
        print(f"{thr:9.2f} | " + " | ".join(f"{100 * v:12.1f}" for v in d) + f" | {100 * md:15.1f} | {100 * mm:9.1f}")
        if best is None or md > best[1]:
            best = (thr, md)
    print(f"\nbest score_thr on {split_file}: {best[0]} (mean defect IoU {100 * best[1]:.1f} %)")
    if args.out:
        Path(args.out).write_text(json.dumps({"split_file": split_file, "checkpoints": args.checkpoints,
                                              "table": {str(k): v for k, v in table.items()},
                                              "best": best[0]}, indent=1))


if __name__ == "__main__":
    main()
