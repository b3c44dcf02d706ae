"""Issue 10 (items 7, 8): prediction pictures drawn on the ORIGINAL image for every family,
and tools/infer.py isolating every input (a 1x1 image with PaDiM, unreadable files)."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from defectkit.registry import MODELS
from defectkit.structures import DetectionResult
from defectkit.visualization import draw_result, input_frame, palette, register_drawer
from helpers_tools import tool

CLASSES = ["scratch", "dent"]


# --------------------------------------------------------------- a model that finds the bright square
class _BrightBoxDetector(torch.nn.Module):
    """Boxes the pixels brighter than ``thr`` of each input (label 1, score 0.87), mapped
    back to original pixels with ``meta['scale_factor']`` as the real detectors do."""

    def __init__(self, num_classes: int = 2, thr: float = 0.8):
        super().__init__()
        self.register_buffer("thr", torch.tensor(float(thr)))

    @torch.no_grad()
    def predict(self, batch):
        out = []
        for img, meta in zip(batch["image"], batch["meta"]):
            ys, xs = torch.nonzero(img.mean(0) > self.thr, as_tuple=True)
            if len(xs) == 0:
                out.append(DetectionResult(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long)))
                continue
            sx, sy = meta.get("scale_factor", (1.0, 1.0))
            box = torch.tensor([[xs.min() / sx, ys.min() / sy, (xs.max() + 1) / sx, (ys.max() + 1) / sy]])
            out.append(DetectionResult(box.float(), torch.tensor([0.87]), torch.tensor([1])))
        return out


if "_BrightBoxDetector" not in MODELS:
    MODELS.register(obj=_BrightBoxDetector)


def _colour_pixels(a, colour, tol=0):
    return np.argwhere(np.all(np.abs(a.astype(int) - np.array(colour)) <= tol, axis=-1))


# ------------------------------------------------------------------------------ drawing unit tests
def test_detection_boxes_land_on_a_4000x3000_original():
    img = Image.new("RGB", (4000, 3000), (0, 0, 0))
    box = [3000.0, 2000.0, 3400.0, 2400.0]
    r = DetectionResult(torch.tensor([box]), torch.tensor([0.91]), torch.tensor([1]))
    out = draw_result(img, r, CLASSES)
    banner = out.height - 3000                           # the banner sits above the picture
    a = np.asarray(out)[banner:]
    hits = _colour_pixels(a, palette(len(CLASSES))[1])
    assert len(hits) > 1000                               # a thick, visible outline
    ys, xs = hits[:, 0], hits[:, 1]
    # every pixel in the class colour is on the box or its label (just above it), nowhere else
    assert xs.min() >= box[0] and xs.max() <= box[2] and ys.max() <= box[3] and ys.min() >= box[1] - 150
    # the left edge is drawn along the box
    assert (np.abs(xs - box[0]) < 8).sum() > 300


def test_detection_labels_use_class_names():
    tool("infer")                       # puts tools/ (and its _common.py) on sys.path
    from _common import result_names

    r = DetectionResult(torch.zeros(1, 4), torch.tensor([0.5]), torch.tensor([0]))
    assert result_names({"model": {"type": "X"}}, r, CLASSES) == CLASSES
    from defectkit.structures import ClassificationResult
    c = ClassificationResult(label=1, scores=torch.tensor([0.3, 0.7]))
    assert result_names({"model": {"type": "X"}}, c, CLASSES) == ["normal", "defective"]


def test_tiny_maps_draw_and_input_pixels_follow_the_pipeline_crop():
    from defectkit.data.transforms import build_pipeline
    from defectkit.structures import AnomalyResult

    # a 1x1 picture with a 32x32 map (PaDiM resizes internally): drawn, not crashed
    one = torch.rand(3, 1, 1)
    res = AnomalyResult(score=0.7, anomaly_map=torch.rand(32, 32), pred_label=1,
                        pred_mask=torch.ones(32, 32, dtype=torch.bool))
    assert draw_result(one, res).width > 1

    pipe = build_pipeline([{"type": "Resize", "scale": [64, 64], "keep_ratio": False},
                           {"type": "CenterCrop", "size": 32}])
    assert input_frame(pipe, 100, 200) == pytest.approx((50.0, 25.0, 150.0, 75.0), abs=0.05)
    assert input_frame(None, 100, 200) == (0.0, 0.0, 200.0, 100.0)

    class _Probe:          # a result in model-input pixels: its drawer sees what the model saw
        pass

    seen = {}
    register_drawer(_Probe, lambda image, result, names, gt: seen.setdefault("img", image), input_pixels=True)
    orig = Image.fromarray(np.random.default_rng(0).integers(0, 255, (100, 200, 3), dtype=np.uint8))
    draw_result(orig, _Probe(), pipeline=pipe)
    assert seen["img"].size == (100, 50)
    assert np.array_equal(np.asarray(seen["img"]), np.asarray(orig)[25:75, 50:150])


# ------------------------------------------------------------------------------ infer.py
def _save(arr, path):
    Image.fromarray(arr).save(path)
    return path


def _coco_set(root, n, size, square):
    """``n`` grey ``size`` = (h, w) PNGs with a white ``square`` (x1, y1, x2, y2), annotated
    as a "dent" box 10 px larger on each side; -> (ann_file, img_dir)."""
    (root / "images").mkdir(parents=True)
    x1, y1, x2, y2 = square
    images, anns = [], []
    for i in range(n):
        im = np.full((*size, 3), 50, np.uint8)
        im[y1:y2, x1:x2] = 255
        _save(im, root / "images" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": size[1], "height": size[0]})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 2, "iscrowd": 0,
                     "bbox": [x1 - 10, y1 - 10, x2 - x1 + 20, y2 - y1 + 20], "area": 1.0})
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "scratch"}, {"id": 2, "name": "dent"}]}
    (root / "ann.json").write_text(json.dumps(coco))
    return root / "ann.json", root / "images"


def _det_config(tmp_path, ann, img_dir, scale):
    cfg = tmp_path / "det.yaml"
    cfg.write_text(json.dumps({
        "model": {"type": "_BrightBoxDetector"},
        "data": {"test": {"type": "CocoDataset", "ann_file": str(ann), "img_dir": str(img_dir),
                          "pipeline": [{"type": "Resize", "scale": scale, "keep_ratio": False}]},
                 "num_workers": 0},
        "evaluation": {"type": "DetectionEvaluator"}}))
    ckpt = tmp_path / "w.pth"
    torch.save({"state_dict": _BrightBoxDetector().state_dict(), "meta": {"classes": CLASSES}}, ckpt)
    return cfg, ckpt


def test_infer_detection_draws_on_the_original_with_names(tmp_path):
    ann, img_dir = _coco_set(tmp_path / "coco", 1, (600, 800), (600, 400, 720, 480))
    cfg, ckpt = _det_config(tmp_path, ann, img_dir, [200, 150])
    out = tmp_path / "infer"
    assert tool("infer").main([str(cfg), str(ckpt), str(img_dir / "0.png"), "--out-dir", str(out),
                               "--device", "cpu"]) == 0
    rec = json.loads((out / "results.json").read_text())[0]
    assert rec["boxes"] == [[600.0, 400.0, 720.0, 480.0]]          # original pixels
    rows = list(csv.DictReader(open(out / "detections.csv")))     # the per-box summary table
    assert [(r["file"], r["class"], r["xmin"], r["ymax"]) for r in rows] == \
        [(str(img_dir / "0.png"), CLASSES[1], "600.0", "480.0")]
    drawn = np.asarray(Image.open(rec["image"]).convert("RGB"))
    banner = drawn.shape[0] - 600
    assert drawn.shape[1] == 800 and banner > 0                     # the original, not the 200x150 input
    hits = _colour_pixels(drawn[banner:], palette(2)[1])
    assert len(hits) and hits[:, 1].min() >= 600 and hits[:, 0].max() <= 480


@pytest.fixture(scope="module")
def padim(tmp_path_factory):
    import yaml

    from defectkit.engine import train
    from test_padim import make_obvious_mvtec

    tmp = tmp_path_factory.mktemp("padim_vis")
    root = make_obvious_mvtec(tmp / "mvtec", n_train=8, n_good=2, n_bad=2, size=32)
    cfg = {"model": {"type": "PaDiM", "backbone": "small_cnn", "pretrained": None, "num_features": 24,
                     "image_size": 32, "crop_size": None, "layers": ["layer1", "layer2", "layer3"],
                     "calibration": {"val_ratio": 0.25}},
           "data": {"train": {"type": "MVTecDataset", "root": str(root), "split": "train"},
                    "test": {"type": "MVTecDataset", "root": str(root), "split": "test"},
                    "batch_size": 8, "num_workers": 0, "shuffle": False},
           "evaluation": {"type": "AnomalyEvaluator", "num_overlays": 0}, "train": {"epochs": 1}, "seed": 0}
    train(cfg, work_dir=tmp / "work")
    path = tmp / "padim.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return tmp, path, tmp / "work/latest.pth", root


def test_infer_isolates_each_input_padim_1x1(padim, capsys):
    tmp, cfg, ckpt, root = padim
    one = _save(np.zeros((1, 1, 3), np.uint8), tmp / "one.png")
    bad = tmp / "broken.png"
    bad.write_bytes(b"not an image")
    good = root / "test/blob/000.png"
    out = tmp / "infer"
    rc = tool("infer").main([str(cfg), str(ckpt), str(one), str(bad), str(tmp / "missing.png"), str(good),
                             "--out-dir", str(out)])
    assert rc == 0
    recs = {Path(r["path"]).name: r for r in json.loads((out / "results.json").read_text())}
    assert set(recs) == {"one.png", "broken.png", "missing.png", "000.png"}
    assert "error" not in recs["one.png"] and Path(recs["one.png"]["image"]).is_file()
    assert recs["000.png"]["pred_label"] == 1 and Path(recs["000.png"]["image"]).is_file()
    assert "broken.png" in recs["broken.png"]["error"] and "score" not in recs["broken.png"]
    assert "not found" in recs["missing.png"]["error"]
    assert "2 of 4 inputs failed" in capsys.readouterr().err

    # every input failing: results.json still written, exit code non-zero
    out2 = tmp / "infer_bad"
    assert tool("infer").main([str(cfg), str(ckpt), str(bad), "--out-dir", str(out2)]) != 0
    assert "error" in json.loads((out2 / "results.json").read_text())[0]


# ------------------------------------------------------------------------------ test.py pictures
def test_test_tool_writes_anomaly_pictures_by_default(padim):
    tmp, cfg, ckpt, root = padim
    out = tmp / "test"
    assert tool("test").main([str(cfg), str(ckpt), "--out-dir", str(out), "--device", "cpu"]) == 0
    shown = sorted((out / "show").glob("*.png"))
    assert len(shown) == 4                                        # default 8, the split has 4
    for p in shown:    # image | GT | heat-map | predicted mask at the original 32 px, each panel
        assert Image.open(p).width >= 4 * 32
    none = tmp / "test0"
    assert tool("test").main([str(cfg), str(ckpt), "--out-dir", str(none), "--show", "0"]) == 0
    assert not (none / "show").exists()


def test_test_tool_segmentation_triptych_on_original(tmp_path):
    from defectkit.engine import build_model

    (tmp_path / "img").mkdir()
    (tmp_path / "mask").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        im = rng.integers(0, 120, (96, 160, 3), dtype=np.uint8)
        m = np.zeros((96, 160), np.uint8)
        m[20:50, 30:90] = 1
        _save(im, tmp_path / "img" / f"{i}.png")
        _save(m, tmp_path / "mask" / f"{i}.png")
    ds = {"type": "MaskFolderDataset", "img_dir": str(tmp_path / "img"), "mask_dir": str(tmp_path / "mask"),
          "classes": ["pit"], "pipeline": [{"type": "Resize", "scale": [32, 16], "keep_ratio": False}]}
    cfg = tmp_path / "seg.yaml"
    model_cfg = {"type": "ZNet", "widths": [8, 16, 32, 64]}
    cfg.write_text(json.dumps({"model": model_cfg, "data": {"test": ds, "num_workers": 0},
                               "evaluation": {"type": "SegmentationEvaluator"}}))
    torch.manual_seed(0)
    ckpt = tmp_path / "w.pth"
    torch.save({"state_dict": build_model(model_cfg, ["pit"]).state_dict(), "meta": {"classes": ["pit"]}}, ckpt)
    out = tmp_path / "test"
    assert tool("test").main([str(cfg), str(ckpt), "--out-dir", str(out), "--device", "cpu"]) == 0
    shown = sorted((out / "show").glob("*.png"))
    assert [p.name for p in shown] == ["00000_0.png", "00001_1.png"]
    a = np.asarray(Image.open(shown[0]).convert("RGB"))
    assert a.shape[1] == 3 * 160 + 2 * 4                          # image | GT | prediction, original width
    top = a.shape[0] - 96                                          # panel titles and banner above
    orig = np.asarray(Image.open(tmp_path / "img/0.png").convert("RGB"))
    image_panel = a[a.shape[0] - 96:, :160]
    assert np.array_equal(image_panel, orig)                      # the original pixels, not the 32x16 input
    gt_panel = a[top:, 164:324].astype(int)
    assert np.abs(gt_panel[35, 60] - orig[35, 60]).sum() > 30     # GT overlay inside the defect
    assert np.array_equal(gt_panel[80, 10], orig[80, 10])         # nothing outside it


def test_test_tool_detection_pictures_with_gt_and_names(tmp_path):
    ann, img_dir = _coco_set(tmp_path / "coco", 3, (300, 400), (200, 100, 280, 160))
    cfg, ckpt = _det_config(tmp_path, ann, img_dir, [100, 75])
    out = tmp_path / "test"
    assert tool("test").main([str(cfg), str(ckpt), "--out-dir", str(out), "--show", "2", "--device", "cpu"]) == 0
    shown = sorted((out / "show").glob("*.png"))
    assert len(shown) == 2
    a = np.asarray(Image.open(shown[0]).convert("RGB"))
    assert a.shape[1] == 400                                      # the original width, not 100
    pic = a[a.shape[0] - 300:]
    from defectkit.visualization.draw import OK_COLOR
    gt = _colour_pixels(pic, OK_COLOR)                            # GT box (190..290, 90..170) in green
    assert len(gt) and gt[:, 1].min() >= 190 and gt[:, 1].max() <= 290 and gt[:, 0].max() <= 170
    pred = _colour_pixels(pic, palette(2)[1])                     # "dent 0.87" box in the class colour
    assert len(pred) and pred[:, 1].min() >= 200 and pred[:, 0].max() <= 160
