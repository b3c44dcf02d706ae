"""Issue 10, evaluation correctness: exported predictions keep the source's own ids (item 2),
unreadable samples at test time are dropped and listed, never replaced (item 4), AUROC that
cannot be computed says why (item 6b), and evaluation shows progress (item 8)."""
import io
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from defectkit.data.collate import collate, is_empty_batch, skipped_sample
from defectkit.data.datasets import CocoDataset
from defectkit.engine import build_eval_loader, run_inference
from defectkit.evaluation import DetectionEvaluator
from defectkit.evaluation.anomaly import AnomalyEvaluator
from defectkit.evaluation.classification import ClassificationEvaluator
from defectkit.registry import MODELS
from defectkit.structures import AnomalyResult, ClassificationResult, DetectionResult

from helpers_tools import ROOT, tool

TESTS = Path(__file__).resolve().parent
CAT_IDS = (3, 7, 10)                      # not 1..K
CAT_NAMES = ("scratch mark", "hole", "dent")
IMG_IDS = (501, 503, 510, 777, 900, 901)  # the file's own image ids


def write_coco(root: Path, corrupt: int | None = None) -> Path:
    """6 images 40x30 (ids IMG_IDS), the first 4 defective (2 boxes each), categories CAT_IDS.
    Image ``corrupt`` is a truncated JPEG (its header still gives the size)."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for k, iid in enumerate(IMG_IDS):
        name = f"im{k}.jpg" if k == corrupt else f"im{k}.png"
        arr = np.full((30, 40, 3), 40 + 30 * k, np.uint8)
        if k == corrupt:
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="JPEG")
            (root / "img" / name).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        else:
            Image.fromarray(arr).save(root / "img" / name)
        images.append({"id": iid, "file_name": name, "width": 40, "height": 30})
        if k < 4:
            for j in range(2):
                cid = CAT_IDS[(k + j) % 3]
                box = [2 + 3 * k + 15 * j, 4 + j * 10, 10 + j, 8]
                anns.append({"id": len(anns) + 1, "image_id": iid, "category_id": cid, "bbox": box,
                             "area": box[2] * box[3], "iscrowd": 0})
    cats = [{"id": c, "name": n} for c, n in zip(CAT_IDS, CAT_NAMES)]
    ann = root / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return ann


class NoisyOracle(torch.nn.Module):
    """Ground truth of ``ann_file`` moved by a few pixels, one box per image with a wrong
    class, plus a low-score false positive on every image: mAP strictly between 0 and 1."""

    def __init__(self, ann_file: str):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        data = json.loads(Path(ann_file).read_text())
        cats = sorted(c["id"] for c in data["categories"])
        self.gt = {im["id"]: [] for im in data["images"]}
        for a in data["annotations"]:
            x, y, w, h = a["bbox"]
            self.gt[a["image_id"]].append(([x, y, x + w, y + h], cats.index(a["category_id"])))

    def predict(self, batch):
        out = []
        for meta in batch["meta"]:
            iid = meta["id"]
            boxes, labels, scores = [], [], []
            for j, (b, lab) in enumerate(self.gt[iid]):
                d = (iid % 3) * 0.7
                boxes.append([b[0] + d, b[1], b[2] + d, b[3] - d / 2])
                labels.append((lab + 1) % 3 if (j == 1 and iid % 2) else lab)
                scores.append(0.9 - 0.1 * j)
            boxes.append([20.0, 15.0, 30.0, 25.0])
            labels.append(iid % 3)
            scores.append(0.3)
            out.append(DetectionResult(torch.tensor(boxes).reshape(-1, 4), torch.tensor(scores),
                                       torch.tensor(labels, dtype=torch.int64)))
        return out


if "_FieldNoisyOracle" not in MODELS:
    MODELS.register("_FieldNoisyOracle", NoisyOracle)


def cocoeval_map(ann: Path, preds: list, img_ids: list) -> float:
    """pycocotools on the ORIGINAL annotation file."""
    from contextlib import redirect_stdout

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with redirect_stdout(io.StringIO()):
        gt = COCO(str(ann))
        dt = gt.loadRes(preds)
        E = COCOeval(gt, dt, iouType="bbox")
        E.params.imgIds = sorted(img_ids)
        E.evaluate()
        E.accumulate()
        E.summarize()
    return float(E.stats[0])


# ------------------------------------------------------------------ item 2: source ids
def test_exported_coco_ids_evaluate_against_the_original_file(tmp_path):
    ann = write_coco(tmp_path)
    ds = CocoDataset(str(ann), str(tmp_path / "img"))
    assert ds.classes == list(CAT_NAMES) and ds.category_ids == list(CAT_IDS)
    ev = DetectionEvaluator(dataset=ds)
    out = run_inference(NoisyOracle(str(ann)), build_eval_loader(ds, batch_size=2), ev, "cpu")
    path = ev.write_predictions(out.results, out.metas, str(tmp_path / "out"))
    preds = json.loads(Path(path).read_text())
    assert {p["category_id"] for p in preds} == set(CAT_IDS)
    assert {p["image_id"] for p in preds} == set(IMG_IDS)
    assert all(CAT_NAMES[CAT_IDS.index(p["category_id"])] == p["category_name"] for p in preds)
    internal = out.metrics["mAP"]
    assert 0.05 < internal < 0.95
    assert cocoeval_map(ann, preds, list(IMG_IDS)) == pytest.approx(internal, abs=1e-9)


def test_export_matches_ids_by_class_name_and_names_sources_without_ids():
    r = DetectionResult(torch.tensor([[1.0, 2, 5, 6], [0, 0, 3, 3]]), torch.tensor([0.9, 0.8]),
                        torch.tensor([0, 1]))
    # the model's class order differs from the evaluated file's: ids follow the names
    coco_like = SimpleNamespace(classes=["b", "a"], category_ids=[7, 3])
    ev = DetectionEvaluator(classes=["a", "b"], dataset=coco_like)
    assert ev.export_categories() == [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}]
    voc_like = SimpleNamespace(classes=["crack", "pit"], category_ids=None)
    ev = DetectionEvaluator(dataset=voc_like)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        preds = json.loads(Path(ev.write_predictions([r], [{"id": "img_007"}], d)).read_text())
    assert [(p["image_id"], p["category_id"], p["category_name"]) for p in preds] == \
        [("img_007", 1, "crack"), ("img_007", 2, "pit")]


# ------------------------------------------------------------------ item 4: skip_invalid
def test_collate_drops_markers_and_lists_them():
    s = {"image": torch.zeros(3, 4, 4), "is_defective": 1, "meta": {"id": 1}}
    mark = skipped_sample(5, "/d/x.jpg", "/d/x.jpg: cannot decode image")
    b = collate([mark, s])
    assert b["image"].shape == (1, 3, 4, 4) and b["is_defective"].tolist() == [1]
    assert b["skipped"] == [{"index": 5, "path": "/d/x.jpg", "error": "/d/x.jpg: cannot decode image"}]
    only = collate([mark])
    assert is_empty_batch(only) and not is_empty_batch(b)
    assert "skipped" not in collate([s])


@pytest.mark.parametrize("batch_size,workers", [(1, 0), (2, 2)])
def test_run_inference_drops_unreadable_sample(tmp_path, batch_size, workers):
    ann = write_coco(tmp_path, corrupt=2)
    ds = CocoDataset(str(ann), str(tmp_path / "img"), skip_invalid=True)
    # training still replaces it by the next readable sample (the batch keeps its size)
    assert ds[2]["meta"]["id"] == IMG_IDS[3]
    ev = DetectionEvaluator(dataset=ds)
    out = run_inference(NoisyOracle(str(ann)), build_eval_loader(ds, batch_size=batch_size,
                                                                 num_workers=workers), ev, "cpu")
    ids = [m["id"] for m in out.metas]
    assert ids == [i for k, i in enumerate(IMG_IDS) if k != 2]        # once each, in order
    assert [(s["index"], Path(s["path"]).name) for s in out.skipped] == [(2, "im2.jpg")]
    assert "truncated" in out.skipped[0]["error"] or "decode" in out.skipped[0]["error"]
    m = out.metrics
    assert m["num_images"] == 5 == out.timing["num_images"]
    assert sum(v["support"] for v in m["image_per_class"].values()) == 5
    assert m["num_defective"] == 3 and m["num_normal"] == 2


def test_every_sample_unreadable_is_one_clear_error(tmp_path):
    from defectkit.data.formats.common import DataFormatError

    ann = write_coco(tmp_path, corrupt=0)
    ds = CocoDataset(str(ann), str(tmp_path / "img"), skip_invalid=True, max_images=1)
    with pytest.raises(DataFormatError, match="every sample was unreadable.*im0.jpg"):
        run_inference(NoisyOracle(str(ann)), build_eval_loader(ds), DetectionEvaluator(dataset=ds), "cpu")


def noisy_oracle_config(tmp_path: Path, ann: Path) -> tuple[Path, Path]:
    """``(config, checkpoint)`` for tools/test.py: the noisy oracle detector on the COCO file
    ``ann`` (images in ``tmp_path/img``) with ``skip_invalid: true``."""
    cfg = tmp_path / "noisy.yaml"
    cfg.write_text(f"""
_base_: {ROOT / 'configs/_base_/runtime/default.yaml'}
model: {{type: _FieldNoisyOracle, ann_file: {ann}}}
evaluation: {{type: DetectionEvaluator, score_thr: 0.05}}
data:
  test:
    type: CocoDataset
    ann_file: {ann}
    img_dir: {tmp_path / 'img'}
    skip_invalid: true
    pipeline:
      - {{type: Resize, scale: [64, 64], keep_ratio: true}}
      - {{type: Normalize}}
  num_workers: 0
""")
    ckpt = tmp_path / "w.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "meta": {"classes": list(CAT_NAMES)}}, ckpt)
    return cfg, ckpt


def test_test_tool_skips_and_names_an_unreadable_image(tmp_path, capsys):
    ann = write_coco(tmp_path, corrupt=1)
    cfg, ckpt = noisy_oracle_config(tmp_path, ann)
    out = tmp_path / "out"
    tool("test").main([str(cfg), str(ckpt), "--out-dir", str(out), "--batch-size", "2"])
    printed = capsys.readouterr().out
    assert "skipped 1 unreadable sample(s)" in printed and "im1.jpg" in printed
    rec = json.loads((out / "metrics.json").read_text())
    assert [Path(s["path"]).name for s in rec["skipped"]] == ["im1.jpg"] and rec["skipped"][0]["error"]
    m = rec["metrics"]
    assert m["num_images"] == 5 and m["num_skipped"] == 1 and m["num_images"] == m["num_normal"] + m["num_defective"]
    preds = json.loads((out / "predictions.bbox.json").read_text())
    readable = [i for k, i in enumerate(IMG_IDS) if k != 1]
    assert {p["image_id"] for p in preds} == set(readable)
    assert len(preds) == sum(len(NoisyOracle(str(ann)).gt[i]) + 1 for i in readable)   # no duplicate image
    assert {p["category_id"] for p in preds} <= set(CAT_IDS)
    assert cocoeval_map(ann, preds, readable) == pytest.approx(m["mAP"], abs=1e-9)


_DDP_WORKER = textwrap.dedent("""
    import json, os, sys
    import torch
    torch.set_num_threads(1)
    from defectkit.engine import distributed as D
    from defectkit.engine import build_eval_loader, run_inference
    from defectkit.data.datasets import CocoDataset
    from defectkit.evaluation import DetectionEvaluator
    import test_field_eval as T

    root = sys.argv[1]
    D.init_distributed(backend="gloo", device="cpu")
    ann = os.path.join(root, "ann.json")
    ds = CocoDataset(ann, os.path.join(root, "img"), skip_invalid=True)
    ev = DetectionEvaluator(dataset=ds)
    out = run_inference(T.NoisyOracle(ann), build_eval_loader(ds, batch_size=2), ev, "cpu")
    with open(os.path.join(root, f"rank{D.get_rank()}.json"), "w") as f:
        json.dump({"ids": [m["id"] for m in out.metas], "skipped": out.skipped,
                   "num_images": out.metrics["num_images"]}, f)
    D.destroy_distributed()
""")


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
def test_skipped_samples_are_gathered_across_two_processes(tmp_path):
    write_coco(tmp_path, corrupt=4)          # on rank 1's shard (images 3..5)
    script = tmp_path / "worker.py"
    script.write_text(_DDP_WORKER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS), str(ROOT),
                                                                      os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", DEFECTKIT_PROGRESS="0")
    exe = Path(sys.executable).with_name("torchrun")
    cmd = ([str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]) + \
        ["--standalone", "--nproc_per_node", "2", str(script), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["ids"] == [i for k, i in enumerate(IMG_IDS) if k != 4]      # gathered on rank 0
    assert [Path(s["path"]).name for s in r0["skipped"]] == ["im4.jpg"] == \
        [Path(s["path"]).name for s in r1["skipped"]]
    assert r0["num_images"] == r1["num_images"] == 5


# ------------------------------------------------------------------ item 8: progress
def test_run_inference_shows_progress(tmp_path, monkeypatch):
    import defectkit.engine.inference as inf
    from defectkit.progress import track

    stream = io.StringIO()
    monkeypatch.setenv("DEFECTKIT_PROGRESS", "1")
    monkeypatch.setattr(inf, "track", lambda it, **kw: track(it, every_s=0.0, stream=stream, **kw))
    ann = write_coco(tmp_path)
    ds = CocoDataset(str(ann), str(tmp_path / "img"))
    run_inference(NoisyOracle(str(ann)), build_eval_loader(ds, batch_size=2), DetectionEvaluator(dataset=ds),
                  "cpu", desc="test data.test")
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("test data.test: 1/3 batch (33%)") and "ETA" in lines[0]
    assert lines[-1].startswith("test data.test: 3/3 batch") and lines[-1].endswith("done")


# ------------------------------------------------------------------ item 6b: why nan
def _anomaly(score, amap):
    m = torch.as_tensor(amap, dtype=torch.float32)
    return AnomalyResult(score=score, anomaly_map=m, raw_score=score, raw_map=m)


def test_anomaly_auroc_without_normal_images_is_nan_and_says_why():
    ev = AnomalyEvaluator(num_overlays=0)
    masks = torch.zeros(3, 2, 2, dtype=torch.int64)
    masks[:, 0, 0] = 1
    ev.process({"image": torch.zeros(3, 3, 2, 2), "mask": masks, "is_defective": torch.tensor([1, 1, 1])},
               [_anomaly(s, [[s, 0.1], [0.2, 0.0]]) for s in (0.5, 0.7, 0.9)])
    m = ev.compute()
    assert math.isnan(m["image_auroc"])
    assert m["image_auroc_note"] == "no normal images among the 3 evaluated images"
    assert m["image_f1_max"] == 1.0 and "image_f1_max_note" not in m       # defined without normals
    assert not math.isnan(m["pixel_auroc"]) and "pixel_auroc_note" not in m   # pixels of both kinds
    assert math.isnan(m["per_defect_type"]["defect"]["image_auroc"])
    assert "image_auroc is nan: no normal images" in ev.summary(m)
    json.dumps(m)                                                            # metrics.json-ready


def test_anomaly_pixel_metrics_without_defect_pixels_are_nan_and_say_why():
    ev = AnomalyEvaluator(num_overlays=0)
    ev.process({"image": torch.zeros(2, 3, 2, 2), "mask": torch.zeros(2, 2, 2, dtype=torch.int64),
                "is_defective": torch.tensor([0, 0])},
               [_anomaly(s, [[s, 0.1], [0.2, 0.0]]) for s in (0.5, 0.7)])
    m = ev.compute()
    assert math.isnan(m["image_auroc"]) and "no defective images" in m["image_auroc_note"]
    assert math.isnan(m["pixel_auroc"]) and math.isnan(m["aupro"])
    assert m["image_f1_max_note"] == m["image_auroc_note"] and "pixel_f1_max_note" in m
    assert m["pixel_auroc_note"] == m["aupro_note"] == \
        "the ground-truth masks have no defect pixels among the 8 evaluated pixels"
    text = ev.summary(m)
    assert "pixel_auroc is nan" in text and "aupro is nan" in text


def test_classification_auroc_with_one_class_says_why():
    ev = ClassificationEvaluator(classes=["x"])
    ev.process({"is_defective": torch.tensor([1, 1, 1]), "meta": [{}] * 3},
               [ClassificationResult(label=1, scores=torch.tensor([0.2, 0.8]))] * 3)
    m = ev.compute()
    assert "roc_auc" not in m and m["roc_auc_note"] == "no normal images among the 3 evaluated images"
    assert "roc_auc not computed: no normal images" in ev.summary(m)
    ev = ClassificationEvaluator(classes=["a", "b", "c"], target="label")
    ev.process({"label": torch.tensor([0, 1, 1])},
               [ClassificationResult(label=1, scores=torch.tensor([0.2, 0.7, 0.1]))] * 3)
    assert ev.compute()["roc_auc_ovr_note"] == "no c images among the 3 evaluated images"


def test_classification_and_segmentation_exports_name_the_classes(tmp_path):
    from defectkit.evaluation.segmentation import SegmentationEvaluator
    from defectkit.structures import SegmentationResult

    ev = ClassificationEvaluator(classes=["hole", "stain", "knot"], target="label")
    path = ev.write_predictions([ClassificationResult(label=2, scores=torch.tensor([0.1, 0.2, 0.7]))],
                                [{"id": "a/1.png", "path": "/d/a/1.png"}], str(tmp_path / "c"))
    row = json.loads(Path(path).read_text())[0]
    assert (row["id"], row["label"], row["label_name"]) == ("a/1.png", 2, "knot")
    ev = SegmentationEvaluator(classes=["pitting"])
    mask = torch.tensor([[0, 1, 1], [0, 0, 0]])
    path = ev.write_predictions([SegmentationResult(mask=mask)], [{"id": 4, "path": "/d/4.png"}],
                                str(tmp_path / "s"))
    row = json.loads(Path(path).read_text())[0]
    assert row["class_pixels_by_name"] == {"background": 4, "pitting": 2} and row["id"] == 4
