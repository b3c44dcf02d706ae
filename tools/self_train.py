"""Audited self-training of a detector on unlabelled images (the original's "mode 2", bounded).

    python tools/self_train.py CONFIG --unlabeled DIR --rounds 3
    python tools/self_train.py CONFIG --labelled-fraction 0.25 --rounds 3 --seed 0   # the benchmark

CONFIG is any detection config whose ``data.train`` is a ``VOCDataset`` (LabelImg XML) and
which has ``data.val`` (the labelled eval set the thresholds are calibrated on) and an
``evaluation`` section. Source: research note ``severity.md`` §1 "Orchestration" and
"Auto-labelling algorithm", pitfalls §5.2-5.3.

**The images.** The training images of ``data.train`` are split with ``--seed``:
``--labelled-fraction F`` of them stay labelled (default 1); the rest are treated as
unlabelled, their ground truth used only for the audit. ``--audit-fraction A`` hides a further
share A of the training images (taken from the labelled ones) the same way; by default 0.1
when every training image is labelled, else 0 (the held-out rest is audited already). The
unlabelled pool = those hidden training images + every image under ``--unlabeled DIR``
(recursive; no ground truth). The labelled subset is read from COPIES of its XML files in
``WORK_DIR/data/labelled/Annotations`` (images from their own folder): nothing is ever
written into the labelled data folder.

**A round** (``defectkit.engine.rounds.run_rounds``, sub-work-dir ``WORK_DIR/round_<k>``):
round 0 trains on the labelled images; round k >= 1 starts from round k-1's final weights
and trains on the labelled images + the pseudo-labels round k-1 wrote (one concatenated
``MixedDataset``: labelled first, every pseudo-labelled image once). After each round, with
its final weights:

1. evaluate on ``data.val`` (and ``data.test`` when it is another split): all scalar metrics
   of the config's evaluator are kept; the table shows ``--metric`` (default mAP) and any
   ``qwk`` the evaluator reports (severity configs), read generically;
2. calibrate per-class thresholds on ``data.val``'s predictions
   (``defectkit.evaluation.pseudo_labels.calibrate_thresholds``, ``--iou``; a class with too
   few matches falls back to ``--fallback-thr`` and the log says so);
3. pseudo-label the pool (``select_pseudo_labels``: an image with >= 1 box at or above its
   class threshold and no box in (``--low``, threshold); images with nothing confident are
   never added) and write LabelImg VOC XML into ``WORK_DIR/round_<k>/pseudo/Annotations/``
   (written to ``pseudo.tmp`` then renamed: an earlier round's folder is never touched; the
   image is referenced by its absolute ``<path>``, with a ``<score>`` per object);
4. audit: precision / recall of the pseudo-labels of the hidden labelled images, per class and
   per COCO size bucket (``pseudo_label_metrics``, IoU >= 0.5), and the hidden GT boxes of the
   ACCEPTED images that got no pseudo-label (``in_accepted``): the next round trains them as
   background, a cost the acceptance rule cannot see (the model scored them ``<= --low`` or mislocated them).

Each round re-labels the whole pool with its own model and the next round uses only that
set (the original copied every accepted image into the training folder for good and
overwrote earlier labels in place). ``--rounds K`` = K self-training rounds after round 0
(K + 1 trainings). It stops earlier when the ``--metric`` on ``data.val`` has not improved
for ``--patience`` rounds, when the pseudo-label precision of a round is under
``--precision-floor`` (its labels are not trained on), or when no image was accepted.
``--no-pseudo`` is the control run: the same rounds and schedule on the labelled images
only (pseudo-labels still made and audited, never trained on).

**Outputs** in WORK_DIR (default ``work_dirs/<config-stem>_self_train``): ``rounds.json``
(arguments, split, one record per round: training images, metrics, thresholds and their
notes, pseudo-label counts and audit; written after every round), ``rounds.png`` (metric
and pseudo-label precision / recall per round) and the round table on stdout.
``--resume`` continues an interrupted run: finished rounds are kept (their trainings resume
as finished, their records are reused), an interrupted training resumes from its newest
checkpoint and an interrupted pseudo-labelling is redone.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

from _common import add_cfg_options, load

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
STATE = "rounds.json"
# arguments a resumed run must share with the stored one (they decide the split and the labels)
RESUME_KEYS = ("config", "unlabeled", "labelled_fraction", "audit_fraction", "low", "iou", "seed",
               "no_pseudo", "cfg_options", "fallback_thr", "metric")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", metavar="CONFIG")
    p.add_argument("--unlabeled", metavar="DIR", help="a folder of unlabelled images (searched recursively)")
    p.add_argument("--rounds", type=int, required=True, metavar="K",
                   help="self-training rounds after round 0 (K + 1 trainings)")
    p.add_argument("--labelled-fraction", type=float, default=1.0, metavar="F",
                   help="share of data.train kept labelled (seeded); the rest is unlabelled with its GT "
                        "used for the audit only (default 1)")
    p.add_argument("--audit-fraction", type=float, default=None, metavar="A",
                   help="share of data.train hidden from training as an audit slice (default 0.1 when "
                        "--labelled-fraction is 1, else 0)")
    p.add_argument("--patience", type=int, default=2, metavar="P",
                   help="stop when the data.val metric has not improved for P rounds (default 2)")
    p.add_argument("--precision-floor", type=float, default=0.5, metavar="X",
                   help="stop when a round's audited pseudo-label precision is under X (default 0.5; 0 = off)")
    p.add_argument("--low", type=float, default=0.2, help="scores <= LOW are ignored; a box in (LOW, thr) "
                   "makes the image ambiguous (default 0.2)")
    p.add_argument("--iou", type=float, default=0.7, help="IoU of the calibration horizon (default 0.7)")
    p.add_argument("--fallback-thr", type=float, default=0.5,
                   help="threshold of a class too rare to calibrate (default 0.5)")
    p.add_argument("--metric", default="mAP", help="evaluator metric of the table and of --patience (default mAP)")
    p.add_argument("--no-pseudo", action="store_true",
                   help="control run: same rounds on the labelled images only (pseudo-labels audited, not used)")
    p.add_argument("--resume", action="store_true", help="continue the run in WORK_DIR at the round it reached")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and of every training (default 0)")
    p.add_argument("--device", help="cpu, cuda, ... (default: the config's, else cuda when available)")
    p.add_argument("--work-dir", help="default work_dirs/<config-stem>_self_train")
    add_cfg_options(p)
    args = p.parse_args(argv)
    if args.rounds < 0:
        p.error(f"--rounds must be >= 0, got {args.rounds}")
    if not 0 < args.labelled_fraction <= 1:
        p.error(f"--labelled-fraction must be in (0, 1], got {args.labelled_fraction}")
    if args.audit_fraction is None:
        args.audit_fraction = 0.1 if args.labelled_fraction == 1 else 0.0
    if not 0 <= args.audit_fraction < args.labelled_fraction:
        p.error(f"--audit-fraction must be in [0, --labelled-fraction), got {args.audit_fraction}")
    if args.patience < 1:
        p.error(f"--patience must be >= 1, got {args.patience}")
    return args


# ----------------------------------------------------------------------------- data
def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        sys.exit(f"self_train: --unlabeled: {folder} is not a folder")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def split_indices(n: int, labelled_fraction: float, audit_fraction: float, seed: int) -> tuple[list, list]:
    """(labelled, hidden) indices of ``n`` training images: a seeded permutation
    (``numpy.random.default_rng(seed)``); the first ``round(F n) - round(A n)`` stay labelled
    (at least 1), the rest are hidden (unlabelled, GT kept for the audit)."""
    import numpy as np

    perm = np.random.default_rng(seed).permutation(n).tolist()
    n_lab = max(1, int(math.floor(labelled_fraction * n + 0.5)) - int(math.floor(audit_fraction * n + 0.5)))
    return sorted(perm[:n_lab]), sorted(perm[n_lab:])


def write_pseudo_xml(path: Path, image: Path, hw: tuple[int, int], depth: int, objects: list[dict]) -> None:
    """One pseudo-label file: LabelImg VOC (``defectkit.data.formats.voc.write_voc``) with the
    absolute image ``<path>`` (the pool's images lie in several folders) and a ``<score>`` per object."""
    from defectkit.data.formats.voc import write_voc

    write_voc(path, image.name, (hw[0], hw[1], depth), objects, folder=image.parent.name, img_path=str(image),
              database="defectkit-self-train")


class ImageList:
    """Images by path through a pipeline (the unlabelled pool), samples as tools/infer.py builds them."""

    def __init__(self, paths: list[Path], pipeline_cfg, exif_orientation: bool = True):
        from defectkit.data.transforms import build_pipeline

        self.paths = list(paths)
        self.pipeline = build_pipeline(pipeline_cfg)
        self.exif_orientation = exif_orientation

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        return self.get_sample(i)

    def get_sample(self, i: int, replace_invalid: bool = False) -> dict:
        """Sample i; an unreadable image is a skipped marker (not pseudo-labelled, listed in the log)."""
        from torchvision import tv_tensors
        from defectkit.data.collate import skipped_sample
        from defectkit.data.datasets import load_image
        from defectkit.data.formats.common import DataFormatError

        try:
            img = load_image(self.paths[i], self.exif_orientation)
        except DataFormatError as e:
            return skipped_sample(i, str(self.paths[i]), str(e))
        sample = {"image": tv_tensors.Image(img),
                  "meta": {"path": str(self.paths[i]), "id": i, "orig_size": tuple(img.shape[-2:])}}
        return self.pipeline(sample) if self.pipeline is not None else sample


# ------------------------------------------------------------------------- per round
def predict(model, dataset, device, evaluator=None, desc="predict"):
    """(results in dataset order with None for skipped samples, metrics, metas likewise)."""
    from defectkit.engine import build_eval_loader, run_inference

    loader = build_eval_loader(dataset, batch_size=1, num_workers=0, distributed=False)
    out = run_inference(model, loader, evaluator, device, keep_results=True, desc=desc)
    skipped = {s.get("index") for s in out.skipped}
    it, mt = iter(out.results), iter(out.metas)
    results = [None if i in skipped else next(it) for i in range(len(dataset))]
    metas = [None if i in skipped else next(mt, None) for i in range(len(dataset))]
    return results, out.metrics or {}, metas


def scalars(metrics: dict) -> dict:
    """The evaluator's numeric metrics; NaN (a metric without support, e.g. APl) -> None (valid JSON)."""
    return {k: (float(v) if math.isfinite(v) else None) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def gt_of(rec) -> dict:
    import numpy as np
    return {"boxes": np.asarray(rec.boxes, dtype=np.float32).reshape(-1, 4),
            "labels": np.asarray(rec.labels, dtype=np.int64).reshape(-1)}


def calibration_rows(results, records) -> list[tuple[int, float, float]]:
    """(class, max IoU with same-class GT, score) of every predicted box (note §1 step 2)."""
    import torch
    from torchvision.ops import box_iou

    rows = []
    for res, rec in zip(results, records):
        if res is None or len(res.boxes) == 0:
            continue
        g = gt_of(rec)
        gb, gl = torch.as_tensor(g["boxes"]), torch.as_tensor(g["labels"])
        pb, pl, ps = res.boxes.float().cpu(), res.labels.cpu(), res.scores.float().cpu()
        if gb.shape[0]:
            ious = box_iou(pb, gb)
            ious[pl[:, None] != gl[None, :]] = 0.0
            best = ious.max(dim=1).values
        else:
            best = torch.zeros(pb.shape[0])
        rows += list(zip(pl.tolist(), best.tolist(), ps.tolist()))
    return rows


def image_depth(path: Path) -> int:
    """Channels of an image file (VOC ``size/depth``), from its header."""
    from PIL import Image
    with Image.open(path) as im:
        return len(im.getbands())


def process_round(k: int, ckpt: Path, cfg: dict, ctx: dict, log) -> dict:
    """Evaluate round k's final weights, calibrate, pseudo-label the pool into
    ``round_<k>/pseudo`` and audit; returns the round's record."""
    from defectkit.engine import build_evaluator, init_model
    from defectkit.evaluation.pseudo_labels import calibrate_thresholds, pseudo_label_metrics, select_pseudo_labels
    from defectkit.progress import track

    classes, device = ctx["classes"], ctx["device"]
    model, _ = init_model(cfg, str(ckpt), device)
    rec: dict = {"round": k, "checkpoint": str(ckpt)}
    val_results, val_metrics, _ = predict(model, ctx["val"], device,
                                       build_evaluator(cfg["evaluation"], classes, dataset=ctx["val"]),
                                       desc=f"round {k}: data.val")
    rec["val"] = scalars(val_metrics)
    if ctx.get("test") is not None:
        _, test_metrics, _ = predict(model, ctx["test"], device,
                                  build_evaluator(cfg["evaluation"], classes, dataset=ctx["test"]),
                                  desc=f"round {k}: data.test")
        rec["test"] = scalars(test_metrics)
    a = ctx["args"]
    thr, notes = calibrate_thresholds(calibration_rows(val_results, ctx["val"].records), classes, iou=a.iou,
                                      fallback=a.fallback_thr)
    for n in notes:
        log(f"round {k}: calibration: {n}")
    rec["thresholds"], rec["threshold_notes"] = thr, notes
    thr_list = [thr[c] for c in classes]

    rdir = ctx["work_dir"] / f"round_{k}"
    final, tmp = rdir / "pseudo", rdir / "pseudo.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)           # a half-written folder of an interrupted run
    if final.exists():
        shutil.rmtree(final)         # this round's own folder, from an interrupted run (never another round's)
    (tmp / "Annotations").mkdir(parents=True)
    pool = ctx["pool"]
    results, _, metas = predict(model, ImageList([p for p, _, _ in pool], ctx["pipeline"], ctx["exif"]), device,
                         desc=f"round {k}: pseudo-label")
    del model
    accepted, audit_pred, audit_gt, n_boxes = 0, [], [], 0
    for (path, key, gt), res, meta in track(list(zip(pool, results, metas)), desc=f"round {k}: write XML",
                                            unit="img"):
        sel = None if res is None else select_pseudo_labels(res.boxes, res.labels, res.scores, thr_list, low=a.low)
        if sel is not None:
            b, l, s = sel[0].clone(), sel[1], sel[2]
            h, w = (int(v) for v in meta["orig_size"])      # as decoded (EXIF applied), the boxes' frame
            depth = image_depth(path)
            b[:, 0::2] = b[:, 0::2].clamp(0, w)
            b[:, 1::2] = b[:, 1::2].clamp(0, h)
            objs = [{"name": classes[int(li)], "box": [round(float(v), 2) for v in bi],
                     "score": min(1.0, max(0.0, float(si)))}
                    for bi, li, si in zip(b, l, s) if bi[2] - bi[0] >= 1 and bi[3] - bi[1] >= 1]
            if not objs:          # every confident box under 1 px once inside the image
                sel = None
        if sel is not None:
            write_pseudo_xml(tmp / "Annotations" / f"{key}.xml", Path(path).resolve(), (h, w), depth, objs)
            accepted += 1
            n_boxes += len(objs)
        if gt is not None:
            audit_gt.append(gt)
            audit_pred.append(None if sel is None else      # what was written
                              {"boxes": [o["box"] for o in objs], "labels": [classes.index(o["name"]) for o in objs],
                               "scores": [o["score"] for o in objs]})
    os.replace(tmp, final)
    rec["pseudo"] = {"dir": str(final), "pool": len(pool), "images_accepted": accepted, "boxes": n_boxes}
    rec["audit"] = pseudo_label_metrics(audit_pred, audit_gt, classes=classes) if audit_gt else None
    rec["status"] = "done"
    return rec


# ---------------------------------------------------------------------------- report
def fmt(v, digits=3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def table(records: list[dict], metric: str) -> str:
    has_test = any("test" in r for r in records)
    has_qwk = any("qwk" in r.get(s, {}) for r in records for s in ("val", "test"))
    head = ["round", "train imgs (pseudo)", f"val {metric}"] + ([f"test {metric}"] if has_test else []) + \
        (["QWK"] if has_qwk else []) + ["pseudo added / pool", "pseudo P", "pseudo R"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        au = r.get("audit") or {}
        row = [str(r["round"]), f"{r.get('train_images', '?')} ({r.get('train_pseudo', 0)})",
               fmt(r["val"].get(metric))]
        if has_test:
            row.append(fmt(r.get("test", {}).get(metric)))
        if has_qwk:
            row.append(fmt(r.get("test", r["val"]).get("qwk")))
        ps = r.get("pseudo") or {}
        row += [f"{ps.get('images_accepted', 0)} / {ps.get('pool', 0)}", fmt(au.get("precision")), fmt(au.get("recall"))]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def audit_detail(rec: dict) -> str:
    au = rec.get("audit")
    if not au:
        return ""
    part = lambda d: ", ".join(f"{k} P {fmt(v['precision'], 2)} R {fmt(v['recall'], 2)} "  # noqa: E731
                               f"({v['num_pred']}/{v['num_gt']})" for k, v in d.items() if v["num_pred"] or v["num_gt"])
    line = f"round {rec['round']} audit per class: {part(au['per_class'])}; per size: {part(au['per_size'])}"
    ia = au.get("in_accepted")          # absent from records of older runs
    if ia and ia["gt"]:
        line += (f"; accepted images: {ia['missed']} of their {ia['gt']} GT boxes without a pseudo-label "
                 "(background when trained on): "
                 + ", ".join(f"{k} {v['missed']}/{v['gt']}" for k, v in ia["per_class"].items() if v["gt"]))
    return line


def plot(records: list[dict], path: Path, metric: str, title: str) -> None:
    from defectkit.visualization.plots import plot_curves

    xs = [r["round"] for r in records]
    curves = {}
    for split in ("val", "test"):
        ys = [r.get(split, {}).get(metric) for r in records]
        if any(y is not None for y in ys):
            curves[f"{split} {metric}"] = (xs, [math.nan if y is None else y for y in ys])
    for key in ("precision", "recall"):
        ys = [(r.get("audit") or {}).get(key) for r in records]
        if any(y is not None for y in ys):
            curves[f"pseudo-label {key}"] = (xs, [math.nan if y is None else y for y in ys])
    plot_curves(curves, path, xlabel="round", ylabel="value", title=title)


def save_state(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state, indent=1, default=str))
    os.replace(tmp, path)


class Stop(Exception):
    """Early stop raised from before_round (run_rounds has no other way out)."""


# ------------------------------------------------------------------------------ main
def main(argv=None):
    args = parse_args(argv)
    cfg = load(args)
    from defectkit.engine import Trainer, build_dataset, resolve_device
    from defectkit.engine.rounds import run_rounds

    data = cfg.get("data") or {}
    train_cfg = data.get("train") or {}
    if train_cfg.get("type") != "VOCDataset":
        sys.exit(f"self_train: data.train of {args.config} must be a VOCDataset (LabelImg XML), "
                 f"got {train_cfg.get('type')!r}")
    if not data.get("val"):
        sys.exit(f"self_train: {args.config} has no data.val (the labelled set thresholds are calibrated on)")
    if "evaluation" not in cfg:
        sys.exit(f"self_train: {args.config} has no `evaluation` section")
    work_dir = Path(args.work_dir or cfg.get("work_dir") or f"work_dirs/{Path(args.config).stem}_self_train")
    state_path = work_dir / STATE
    stored = json.loads(state_path.read_text()) if state_path.is_file() else None
    argd = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    if stored is None and args.resume and work_dir.exists() and any(work_dir.glob("round_*")):
        stored = {"args": argd, "rounds": []}       # interrupted before round 0 finished
    if not args.resume and (stored is not None or (work_dir.exists() and any(work_dir.glob("round_*")))):
        sys.exit(f"self_train: {work_dir} holds a self-training run; pass --resume to continue it or "
                 f"--work-dir DIR for a new one")
    if stored is not None:
        diff = [k for k in RESUME_KEYS if stored["args"].get(k) != argd.get(k)]
        if diff:
            what = ", ".join(f"{k}: {stored['args'].get(k)!r} vs {argd.get(k)!r}" for k in diff)
            sys.exit(f"self_train: --resume: {work_dir} was run with other settings ({what})")
        if stored.get("stopped"):
            print(f"self_train: {work_dir} stopped early at round {stored['rounds'][-1]['round']} "
                  f"({stored['stopped']}); nothing to continue\n\n" + table(stored["rounds"], args.metric))
            return 0
    done = {r["round"]: r for r in (stored or {}).get("rounds", []) if r.get("status") == "done"}

    full = build_dataset({**train_cfg, "pipeline": None})
    classes = list(full.classes)
    n = len(full.records)
    lab_idx, hidden_idx = split_indices(n, args.labelled_fraction, args.audit_fraction, args.seed)
    unl = list_images(Path(args.unlabeled)) if args.unlabeled else []
    if args.unlabeled and not unl:
        sys.exit(f"self_train: --unlabeled: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {args.unlabeled}")
    if not hidden_idx and not unl and args.rounds > 0 and not args.no_pseudo:
        sys.exit("self_train: no unlabelled images: give --unlabeled DIR, --labelled-fraction < 1 or --audit-fraction > 0")
    img_dirs = {str(Path(full.records[i].img_path).resolve().parent) for i in lab_idx}
    if len(img_dirs) != 1:
        sys.exit(f"self_train: the labelled images of data.train lie in {len(img_dirs)} folders; the labelled "
                 f"subset needs them in one (set data.train.img_dir)")

    work_dir.mkdir(parents=True, exist_ok=True)
    lab_root = work_dir / "data" / "labelled"
    split = {"labelled": [full.records[i].id for i in lab_idx], "hidden": [full.records[i].id for i in hidden_idx],
             "unlabeled_images": len(unl)}
    if stored is not None and stored.get("split") not in (None, split):
        sys.exit(f"self_train: --resume: the split of data.train differs from the stored one in {state_path} "
                 f"(data.train changed?)")
    if (lab_root / "Annotations").exists():
        shutil.rmtree(lab_root / "Annotations")
    (lab_root / "Annotations").mkdir(parents=True)
    for i in lab_idx:
        src = Path(full.records[i].meta["ann_file"])
        shutil.copyfile(src, lab_root / "Annotations" / src.name)
    labelled_cfg = {**copy.deepcopy(train_cfg), "root": str(lab_root), "img_dir": img_dirs.pop(), "split": None,
                    "classes": classes, "max_images": None}
    pool = [(Path(full.records[i].img_path), f"train__{full.records[i].id}", gt_of(full.records[i]))
            for i in hidden_idx]
    root_unl = Path(args.unlabeled) if args.unlabeled else None
    pool += [(p, "unl__" + "__".join(p.relative_to(root_unl).with_suffix("").parts), None) for p in unl]

    device = resolve_device(args.device or cfg.get("device"))
    val = build_dataset(data["val"])
    test = build_dataset(data["test"]) if data.get("test") and data["test"] != data["val"] else None
    eval_pipeline = (data.get("test") or data["val"]).get("pipeline")
    ctx = {"args": args, "classes": classes, "device": device, "val": val, "test": test, "pool": pool,
           "pipeline": eval_pipeline, "exif": train_cfg.get("exif_orientation", True), "work_dir": work_dir}
    base = copy.deepcopy(cfg)
    base.setdefault("data", {})["train"] = labelled_cfg
    state = {"config": args.config, "args": argd, "classes": classes, "split": split,
             "pool": {"hidden_labelled": len(hidden_idx), "unlabeled_dir": len(unl)},
             "rounds": [done[k] for k in sorted(done)], "stopped": None, "finished": False}
    save_state(state_path, state)

    def log(msg):
        print(f"[self_train] {msg}", flush=True)

    log(f"{args.config}: {len(lab_idx)} labelled of {n} training images, pool of {len(pool)} unlabelled "
        f"({len(hidden_idx)} hidden labelled for the audit, {len(unl)} from --unlabeled); "
        f"rounds 0..{args.rounds} in {work_dir}" + (" (control: no pseudo-labels in training)" if args.no_pseudo else ""))
    sizes: dict = {}

    class CountingTrainer(Trainer):
        def train(self):
            sizes["train_images"] = len(self.train_set)
            counts = getattr(self.train_set, "counts", None)
            sizes["train_pseudo"] = int(counts()["generated"]) if callable(counts) else 0
            return super().train()

    def finish_round(k: int, result, round_cfg) -> dict:
        if k in done:
            rec = done[k]
        else:
            ckpt = result.last_checkpoint
            if ckpt is None:
                sys.exit(f"self_train: round {k} saved no checkpoint (set train.checkpoint_interval)")
            t0 = time.perf_counter()
            rec = process_round(k, Path(ckpt), round_cfg, ctx, log)
            rec.update(train_images=sizes.get("train_images"), train_pseudo=sizes.get("train_pseudo", 0),
                       seconds_after_training=round(time.perf_counter() - t0, 1))
            done[k] = rec
            state["rounds"] = [done[j] for j in sorted(done)]
            save_state(state_path, state)
        log(f"round {k}: val {args.metric} {fmt(rec['val'].get(args.metric))}"
            + (f", test {args.metric} {fmt(rec['test'].get(args.metric))}" if "test" in rec else "")
            + f"; pseudo-labels: {rec['pseudo']['images_accepted']} of {rec['pseudo']['pool']} images accepted"
            + (f", audit P {fmt(rec['audit']['precision'])} R {fmt(rec['audit']['recall'])}" if rec.get("audit") else "")
            + "; thresholds " + ", ".join(f"{c} {v:.3f}" for c, v in rec["thresholds"].items()))
        if rec.get("audit"):
            log(audit_detail(rec))
        return rec

    def stop_reason(k: int) -> str | None:
        recs = [done[j] for j in range(k + 1)]
        rec = recs[-1]
        if not args.no_pseudo:
            prec = (rec.get("audit") or {}).get("precision")
            if prec is not None and prec < args.precision_floor:
                return f"pseudo-label precision {prec:.3f} of round {k} < floor {args.precision_floor:g}"
            if rec["pseudo"]["images_accepted"] == 0:
                return f"round {k} accepted no image"
        if args.metric not in rec["val"]:
            sys.exit(f"self_train: the evaluator reports no {args.metric!r} on data.val (it reports "
                     f"{', '.join(sorted(rec['val']))}); pass --metric")
        vals = [r["val"].get(args.metric) for r in recs]
        vals = [-math.inf if v is None else v for v in vals]        # NaN (no support) counts as worst
        best = max(range(len(vals)), key=lambda j: (vals[j], -j))
        if k - best >= args.patience:
            return f"val {args.metric} has not improved for {k - best} rounds (best {vals[best]:.4f} at round {best})"
        return None

    def before_round(k, round_cfg, previous):
        if k == 0:
            return round_cfg
        finish_round(k - 1, previous, round_cfg)
        why = stop_reason(k - 1)
        if why is not None:
            raise Stop(why)
        if not args.no_pseudo:
            pseudo_cfg = {**copy.deepcopy(train_cfg), "root": str(Path(done[k - 1]["pseudo"]["dir"])),
                          "img_dir": None, "split": None, "classes": classes, "max_images": None,
                          "skip_difficult": False}
            n_pseudo = done[k - 1]["pseudo"]["images_accepted"]
            round_cfg["data"]["train"] = {"type": "MixedDataset", "datasets": [labelled_cfg, pseudo_cfg],
                                          "ratio": n_pseudo / len(lab_idx), "seed": args.seed}
        sizes.clear()
        return round_cfg

    t_all = time.perf_counter()
    rounds = [{} for _ in range(args.rounds + 1)]
    try:
        results = run_rounds(base, rounds, work_dir=work_dir, resume=args.resume, seed=args.seed,
                             device=str(device), before_round=before_round, trainer_cls=CountingTrainer)
        finish_round(args.rounds, results[-1], base)
        state["finished"] = True
    except Stop as e:
        state["stopped"] = str(e)
        log(f"stopped early: {e}")
    state["rounds"] = [done[j] for j in sorted(done)]
    state["seconds"] = round(time.perf_counter() - t_all, 1)
    save_state(state_path, state)
    plot(state["rounds"], work_dir / "rounds.png", args.metric,
         f"{Path(args.config).stem}: {len(lab_idx)}/{n} labelled, seed {args.seed}")
    print(f"\nSelf-training of {args.config} ({len(lab_idx)} of {n} training images labelled, seed {args.seed}"
          + (", control without pseudo-labels" if args.no_pseudo else "") + "):\n\n"
          + table(state["rounds"], args.metric))
    print(f"\nwrote {state_path} and {work_dir / 'rounds.png'}")
    return 0


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
