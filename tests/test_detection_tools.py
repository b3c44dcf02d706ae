"""DefectNet tools: split_coco, normal_proportion, compare, and tools/test.py / benchmark.py
on a detector (a fake "oracle" model returning the ground truth; no real detector needed)."""
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from defectkit.registry import MODELS
from defectkit.structures import DetectionResult

from helpers_tools import ROOT, tool


def coco_json(n=10, defective=(1, 3, 4, 6, 8, 9), w=40, h=30):
    """DefectNet-style: category 0 "背景" marks normal images with a dummy box."""
    images = [{"id": 100 + i, "file_name": f"{i}.png", "width": w, "height": h} for i in range(n)]
    anns = []
    for i in range(n):
        if i in defective:
            anns.append({"image_id": 100 + i, "category_id": 1 + i % 2, "bbox": [2 + i, 3, 12, 9], "iscrowd": 0})
        else:
            anns.append({"image_id": 100 + i, "category_id": 0, "bbox": [0, 0, 32, 20], "iscrowd": 0})
    for k, a in enumerate(anns):
        a.update(id=k + 1, area=a["bbox"][2] * a["bbox"][3])
    cats = [{"id": 0, "name": "背景"}, {"id": 1, "name": "hole"}, {"id": 2, "name": "stain"}]
    return {"info": {"x": 1}, "images": images, "annotations": anns, "categories": cats}


# ------------------------------------------------------------------------------ split_coco
def test_split_coco_reproducible_and_counts(tmp_path, capsys):
    split = tool("split_coco")
    src = tmp_path / "all.json"
    data = coco_json(n=25, defective=tuple(range(0, 25, 2)))
    src.write_text(json.dumps(data, ensure_ascii=False))
    for out in ("a", "b"):
        split.main([str(src), "--out-dir", str(tmp_path / out), "--normal-category", "0"])
    printed = capsys.readouterr().out
    tr_a = json.loads((tmp_path / "a/instance_train.json").read_text())
    tr_b = json.loads((tmp_path / "b/instance_train.json").read_text())
    te_a = json.loads((tmp_path / "a/instance_test.json").read_text())
    assert tr_a == tr_b                                                  # seed 666 twice: same split
    assert len(tr_a["images"]) == int(0.8 * 25) == 20 and len(te_a["images"]) == 5
    ids = [im["id"] for im in data["images"]]
    random.seed(666)
    random.shuffle(ids)
    assert {im["id"] for im in tr_a["images"]} == set(ids[:20])          # the original's recipe
    assert tr_a["categories"] == data["categories"] and tr_a["info"] == {"x": 1}
    assert {a["image_id"] for a in te_a["annotations"]} <= {im["id"] for im in te_a["images"]}
    n_def = sum(1 for im in te_a["images"] if (im["id"] - 100) % 2 == 0)
    assert f"5 images ({5 - n_def} normal / {n_def} defective)" in printed
    assert "25 images (12 normal / 13 defective)" in printed
    train, test = split.split_ids(range(10), 0.8, 666)
    assert len(train) == 8 and sorted(train + test) == list(range(10))


# ------------------------------------------------------------------------ normal_proportion
@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.25, 0.44, 0.5, 0.8, 1.0])
def test_resample_gives_requested_alpha(alpha):
    np_tool = tool("normal_proportion")
    normal, defective = list(range(30)), list(range(30, 100))       # 30 normal, 70 defective
    idx = np_tool.resample(normal, defective, alpha, 666)
    assert idx == np_tool.resample(normal, defective, alpha, 666)   # reproducible
    assert len(set(idx)) == len(idx)
    n_n = sum(1 for i in idx if i < 30)
    got = n_n / len(idx)
    assert abs(got - alpha) <= 1.0 / len(idx) + 1e-9                   # within rounding
    # the limiting group is kept whole
    assert n_n == 30 or len(idx) - n_n == 70


def test_proportion_table_recomputes_f1_and_att():
    np_tool = tool("normal_proportion")
    # 4 normal (one false positive), 4 defective (one missed); normal 10 ms, defective 30 ms
    recs = ([{"is_defective": 0, "scores": [0.9] if i == 0 else []} for i in range(4)] +
            [{"is_defective": 1, "scores": [] if i == 0 else [0.8]} for i in range(4)])
    times = [0.010] * 4 + [0.030] * 4
    rows = np_tool.proportion_table(recs, times, [0.0, 0.5, 1.0], seed=666)
    r0, r5, r1 = rows
    assert r0["num_images"] == 4 and r0["alpha"] == 0.0 and r0["att_ms"] == pytest.approx(30.0)
    assert r5["num_images"] == 8 and r5["att_ms"] == pytest.approx(20.0)
    assert r5["f1"] == pytest.approx(0.75)                         # P = R = 3/4 for both classes
    assert r1["att_ms"] == pytest.approx(10.0) and r1["att_normal_ms"] == pytest.approx(10.0)
    md = np_tool.to_markdown(rows)
    assert md.count("\n") == 4 and "| ATT(ms) |" in md


# ----------------------------------------------------------------------------- compare
def test_compare_reuses_metrics(tmp_path, capsys):
    cmp_tool = tool("compare")
    cfgs = []
    for stem, m in (("one_model", {"mAP": 0.5, "f1_macro": 0.8, "att_ms": 20.0, "att_normal_ms": 20.0,
                                   "att_defective_ms": 20.0}),
                    ("cls", {"f1_macro": 0.9, "att_ms": 3.0, "att_normal_ms": 3.0, "att_defective_ms": 3.1})):
        cfg = tmp_path / f"{stem}.yaml"
        cfg.write_text("model: {type: X}\nevaluation: {type: %s}\n"
                       % ("DetectionEvaluator" if stem == "one_model" else "ClassificationEvaluator"))
        cfgs.append(str(cfg))
        (tmp_path / "work" / stem / "test").mkdir(parents=True)
        (tmp_path / "work" / stem / "test" / "metrics.json").write_text(json.dumps({"metrics": m}))
    out = tmp_path / "table.md"
    cmp_tool.main(cfgs + ["--work-root", str(tmp_path / "work"), "--out", str(out)])
    table = out.read_text().splitlines()
    assert table[0] == "| Model | mAP | F1 | ATT(ms) | ATT_N | ATT_D |"
    assert table[2] == "| one_model | 0.500 | 0.800 | 20.00 | 20.00 | 20.00 |"
    assert table[3] == "| cls | n/a | 0.900 | 3.00 | 3.00 | 3.10 |"


def test_compare_seeds_mean_and_std(tmp_path):
    cmp_tool = tool("compare")
    cfg = tmp_path / "det.yaml"
    cfg.write_text("model: {type: X}\nevaluation: {type: DetectionEvaluator}\n")
    for seed, (m_ap, f1) in zip((0, 1, 2), ((0.1, 0.8), (0.2, 0.6), (0.3, 0.7))):
        d = tmp_path / "work" / f"det_seed{seed}" / "test"
        d.mkdir(parents=True)
        d.joinpath("metrics.json").write_text(json.dumps({"metrics": {
            "mAP": m_ap, "f1_macro": f1, "att_ms": 10.0, "att_normal_ms": float("nan"), "att_defective_ms": 10.0}}))
    out = tmp_path / "table.md"
    cmp_tool.main([str(cfg), "--seeds", "0", "1", "2", "--work-root", str(tmp_path / "work"), "--out", str(out)])
    lines = out.read_text().splitlines()
    assert "| det (seed 1) | 0.200 | 0.600 | 10.00 | n/a | 10.00 |" in lines
    # mean 0.2, sample std 0.1 for both; a metric that is nan in a run is n/a
    assert "| det (n=3) | 0.200 ± 0.100 | 0.700 ± 0.100 | 10.00 ± 0.00 | n/a | 10.00 ± 0.00 |" in lines


def test_compare_extra_metric_columns(tmp_path, capsys):
    """``--metrics`` appends columns for any metrics.json key (per-class IoU), averaged over
    seeds like the evaluator's own; a run without the key shows n/a."""
    cmp_tool = tool("compare")
    cfg = tmp_path / "seg.yaml"
    cfg.write_text("model: {type: X}\nevaluation: {type: SegmentationEvaluator}\n")
    for seed, crack in zip((0, 1), (0.2, 0.4)):
        d = tmp_path / "work" / f"seg_seed{seed}" / "test"
        d.mkdir(parents=True)
        d.joinpath("metrics.json").write_text(json.dumps({"metrics": {
            "mIoU": 0.5, "defect_IoU": 0.3, "att_ms": 2.0, "IoU.crack": crack}}))
    out = tmp_path / "table.md"
    cmp_tool.main([str(cfg), "--seeds", "0", "1", "--metrics", "IoU.crack", "IoU.spot",
                   "--work-root", str(tmp_path / "work"), "--out", str(out)])
    lines = out.read_text().splitlines()
    assert "| Model | mIoU | defect IoU | ms/img | params | IoU.crack | IoU.spot |" in lines
    assert "| seg (seed 1) | 0.500 | 0.300 | 2.00 | n/a | 0.400 | n/a |" in lines
    assert "| seg (n=2) | 0.500 ± 0.000 | 0.300 ± 0.000 | 2.00 ± 0.00 | n/a | 0.300 ± 0.141 | n/a |" in lines
    assert "--metrics IoU.spot: in no run's metrics.json" in capsys.readouterr().err   # a typo is flagged


# ------------------------------------------------- tools/test.py and benchmark.py on a detector
class OracleDetector(torch.nn.Module):
    """Returns the ground truth of ``ann_file`` (original pixels) for each image id; images
    without defect boxes are "gated" (empty). Stands in for the real detectors."""

    def __init__(self, ann_file: str, normal_category: int = 0, num_classes: int = 2):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        data = json.loads(Path(ann_file).read_text())
        cats = sorted(c["id"] for c in data["categories"] if c["id"] != normal_category)
        self.gt = {im["id"]: ([], []) for im in data["images"]}
        for a in data["annotations"]:
            if a["category_id"] != normal_category:
                x, y, w, h = a["bbox"]
                self.gt[a["image_id"]][0].append([x, y, x + w, y + h])
                self.gt[a["image_id"]][1].append(cats.index(a["category_id"]))

    def predict(self, batch):
        out = []
        for meta in batch["meta"]:
            boxes, labels = self.gt[meta["id"]]
            out.append(DetectionResult(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                       torch.full((len(boxes),), 0.9), torch.tensor(labels, dtype=torch.int64),
                                       gate_score=0.9 if boxes else 0.1, gated=not boxes))
        return out


if "_TestOracleDetector" not in MODELS:
    MODELS.register("_TestOracleDetector", OracleDetector)


@pytest.fixture(scope="module")
def det_setup(tmp_path_factory):
    from PIL import Image

    tmp = tmp_path_factory.mktemp("det")
    (tmp / "images").mkdir()
    data = coco_json()
    for im in data["images"]:
        Image.fromarray(np.full((30, 40, 3), 128, np.uint8)).save(tmp / "images" / im["file_name"])
    ann = tmp / "test.json"
    ann.write_text(json.dumps(data, ensure_ascii=False))
    cfg = tmp / "oracle.yaml"
    cfg.write_text(f"""
_base_: {ROOT / 'configs/_base_/runtime/default.yaml'}
model: {{type: _TestOracleDetector, ann_file: {ann}}}
evaluation: {{type: DetectionEvaluator, score_thr: 0.05}}
data:
  test:
    type: CocoDataset
    ann_file: {ann}
    img_dir: {tmp / 'images'}
    normal_category: 0
    pipeline:
      - {{type: Resize, scale: [64, 64], keep_ratio: true}}
      - {{type: Normalize}}
  num_workers: 0
benchmark: {{warmup: 1, iters: 6}}
""")
    ckpt = tmp / "oracle.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "meta": {"classes": ["hole", "stain"]}}, ckpt)
    return {"tmp": tmp, "cfg": cfg, "ckpt": ckpt, "ann": ann}


def test_test_tool_on_detector(det_setup, capsys):
    out = det_setup["tmp"] / "test_out"
    tool("test").main([str(det_setup["cfg"]), str(det_setup["ckpt"]), "--out-dir", str(out)])
    printed = capsys.readouterr().out
    assert "Average Precision  (AP) @[ IoU=0.50:0.95" in printed and "beta" in printed
    m = json.loads((out / "metrics.json").read_text())["metrics"]
    assert m["mAP"] == pytest.approx(1.0)          # GT taken in original pixels, not resized ones
    assert m["f1_macro"] == pytest.approx(1.0) and m["gate_pass_rate"] == pytest.approx(0.6)
    assert m["alpha"] == pytest.approx(0.4) and "ideal_time" in m and "beta" in m
    preds = json.loads((out / "predictions.bbox.json").read_text())
    assert len(preds) == 6 and {p["category_id"] for p in preds} == {1, 2}
    assert preds[0]["bbox"] == [3.0, 3.0, 12.0, 9.0]
    assert (out / "pr_curve.png").is_file() and (out / "confusion_matrix.png").is_file()


def test_test_tool_checkpoint_only_optional_for_self_loading_models(det_setup, tmp_path):
    with pytest.raises(SystemExit, match="give the checkpoint to test"):
        tool("test").main([str(det_setup["cfg"]), "--out-dir", str(tmp_path / "a")])

    class SelfLoading(OracleDetector):         # like TwoModelDetector: loads its parts' weights
        loads_own_weights = True

    if "_TestSelfLoadingDetector" not in MODELS:
        MODELS.register("_TestSelfLoadingDetector", SelfLoading)
    cfg = tmp_path / "self.yaml"
    cfg.write_text(det_setup["cfg"].read_text().replace("_TestOracleDetector", "_TestSelfLoadingDetector"))
    tool("test").main([str(cfg), "--out-dir", str(tmp_path / "b")])
    m = json.loads((tmp_path / "b" / "metrics.json").read_text())["metrics"]
    assert m["mAP"] == pytest.approx(1.0)      # classes came from the dataset


def test_benchmark_on_detector(det_setup, capsys):
    out = det_setup["tmp"] / "bench.json"
    tool("benchmark").main([str(det_setup["cfg"]), str(det_setup["ckpt"]), "--out", str(out)])
    r = json.loads(out.read_text())
    assert r["gate_pass_rate"] is not None and 0 < r["gate_pass_rate"] < 1
    assert "beta" in r and "ideal_time" in r and r["num_normal"] + r["num_defective"] == 6
    assert "gate pass rate" in capsys.readouterr().out


def test_normal_proportion_tool(det_setup):
    out = det_setup["tmp"] / "np"
    tool("normal_proportion").main([str(det_setup["cfg"]), str(det_setup["ckpt"]), "--alphas", "0,0.5,1",
                                    "--map", "--out-dir", str(out)])
    rows = json.loads((out / "normal_proportion.json").read_text())["rows"]
    assert [r["alpha"] for r in rows] == [0.0, 0.5, 1.0]
    assert rows[1]["f1"] == pytest.approx(1.0) and rows[1]["mAP"] == pytest.approx(1.0)
    assert (out / "normal_proportion.png").stat().st_size > 0
    assert "| alpha (target) |" in (out / "normal_proportion.md").read_text()


def test_compare_columns_come_from_each_configs_evaluator(tmp_path):
    """compare never guesses a family from metric names: each config's evaluator declares its
    table's columns (``table_columns``); configs with equal columns share one table."""
    cmp_tool = tool("compare")
    runs = {"seg": ("SegmentationEvaluator", {"mIoU": 0.7, "defect_IoU": 0.5, "att_ms": 2.0}),
            "pad": ("AnomalyEvaluator", {"image_auroc": 0.9, "pixel_auroc": 0.95, "aupro": 0.8, "att_ms": 4.0}),
            "det": ("DetectionEvaluator", {"mAP": 0.4, "f1_macro": 0.6, "att_ms": 9.0})}
    cfgs = []
    for stem, (ev, m) in runs.items():
        cfg = tmp_path / f"{stem}.yaml"
        cfg.write_text(f"model: {{type: X}}\nevaluation: {{type: {ev}}}\n")
        cfgs.append(str(cfg))
        (tmp_path / "work" / stem / "test").mkdir(parents=True)
        (tmp_path / "work" / stem / "test" / "metrics.json").write_text(json.dumps({"metrics": m, "params": 1.5e6}))
    out = tmp_path / "table.md"
    cmp_tool.main(cfgs + ["--work-root", str(tmp_path / "work"), "--out", str(out)])
    lines = out.read_text().splitlines()
    assert "| Model | mIoU | defect IoU | ms/img | params |" in lines
    assert "| seg | 0.700 | 0.500 | 2.00 | 1.50M |" in lines
    assert "| Model | image AUROC | pixel AUROC | AUPRO | ms/img |" in lines
    assert "| pad | 0.900 | 0.950 | 0.800 | 4.00 |" in lines
    assert "| det | 0.400 | 0.600 | 9.00 | n/a | n/a |" in lines
