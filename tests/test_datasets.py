"""defectkit.data.datasets: the sample contract, determinism, errors, the synthetic layout."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from defectkit.config import ConfigError, _validate
from defectkit.data.collate import collate
from defectkit.data.datasets import CocoDataset, LabelMeDataset, rasterize_polygons
from defectkit.data.formats import DataFormatError
from defectkit.registry import DATASETS


def png(path, w=40, h=30, value=None, mode="RGB", seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    if value is None:
        arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(path)
    else:
        Image.new(mode, (w, h), value).save(path)
    return path



@pytest.fixture
def synth(tmp_path):
    """A miniature of the synthetic generator's output layout (DIR/...)."""
    d = tmp_path / "synth"
    sizes = {"000000": (40, 30), "000001": (48, 32), "000002": (40, 30), "000003": (40, 30)}
    boxes = {"000000": [], "000001": [(4, 6, 14, 12, 1)], "000002": [(20, 10, 30, 25, 2)],
             "000003": [(1, 1, 9, 5, 1), (30, 20, 38, 28, 2)]}
    split = {"train": ["000000", "000001", "000002"], "test": ["000003"]}
    cats = [{"id": 1, "name": "hole"}, {"id": 2, "name": "stain"}]
    for i, (stem, (w, h)) in enumerate(sizes.items()):
        png(d / "images" / f"{stem}.jpg", w, h, seed=i)
        m = np.zeros((h, w), np.uint8)
        for x1, y1, x2, y2, c in boxes[stem]:
            m[y1:y2, x1:x2] = c
        (d / "masks").mkdir(exist_ok=True)
        Image.fromarray(m).save(d / "masks" / f"{stem}.png")
        shapes = [{"label": cats[c - 1]["name"], "points": [[x1, y1], [x2, y1], [x2, y2], [x1, y2]],
                   "shape_type": "polygon", "group_id": None, "flags": {}}
                  for x1, y1, x2, y2, c in boxes[stem]]
        (d / "labelme").mkdir(exist_ok=True)
        (d / "labelme" / f"{stem}.json").write_text(json.dumps(
            {"version": "5.0.1", "flags": {}, "shapes": shapes, "imagePath": f"../images/{stem}.jpg",
             "imageData": None, "imageHeight": h, "imageWidth": w}))
        objs = "".join(f"<object><name>{cats[c - 1]['name']}</name><difficult>0</difficult><bndbox>"
                       f"<xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>"
                       f"</bndbox></object>" for x1, y1, x2, y2, c in boxes[stem])
        (d / "voc/Annotations").mkdir(parents=True, exist_ok=True)
        (d / "voc/Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename><size><width>{w}</width><height>{h}"
            f"</height><depth>3</depth></size>{objs}</annotation>")
    (d / "voc/ImageSets/Main").mkdir(parents=True)
    (d / "coco/annotations").mkdir(parents=True)
    for name, stems in split.items():
        (d / "voc/ImageSets/Main" / f"{name}.txt").write_text("\n".join(stems) + "\n")
        images, anns = [], []
        for stem in stems:
            iid = int(stem)
            w, h = sizes[stem]
            images.append({"id": iid, "file_name": f"{stem}.jpg", "width": w, "height": h})
            for x1, y1, x2, y2, c in boxes[stem]:
                anns.append({"id": len(anns) + 1, "image_id": iid, "category_id": c,
                             "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                             "iscrowd": 0})
        (d / "coco/annotations" / f"instances_{name}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats}))
    mv = d / "mvtec"
    png(mv / "train/good/000000.png", seed=5)
    png(mv / "test/good/000001.png", seed=6)
    png(mv / "test/hole/000002.png", seed=7)
    gt = np.zeros((30, 40), np.uint8)
    gt[3:9, 4:12] = 255
    (mv / "ground_truth/hole").mkdir(parents=True)
    Image.fromarray(gt).save(mv / "ground_truth/hole/000002_mask.png")
    png(d / "severity/0/a.png", seed=8)
    png(d / "severity/1/b.png", seed=9)
    png(d / "severity/2/c.png", seed=10)
    (d / "dataset.json").write_text(json.dumps({"classes": ["hole", "stain"]}))
    return d


def build(cfg):
    _validate(cfg, DATASETS, "data.train")        # what validate_config does for data.train
    return DATASETS.build(cfg)


def test_coco_sample_contract(synth):
    ds = build({"type": "CocoDataset", "ann_file": str(synth / "coco/annotations/instances_train.json"),
                "img_dir": str(synth / "images")})
    assert ds.classes == ["hole", "stain"] and len(ds) == 3 and len(ds.records) == 3
    s = ds[1]
    assert set(s) == {"image", "boxes", "labels", "is_defective", "meta"}
    assert isinstance(s["image"], tv_tensors.Image) and s["image"].dtype == torch.float32
    assert s["image"].shape == (3, 32, 48) and 0 <= s["image"].min() and s["image"].max() <= 1
    assert isinstance(s["boxes"], tv_tensors.BoundingBoxes) and s["boxes"].canvas_size == (32, 48)
    assert s["boxes"].format == tv_tensors.BoundingBoxFormat.XYXY
    assert s["boxes"].tolist() == [[4, 6, 14, 12]] and s["labels"].tolist() == [0]
    assert s["labels"].dtype == torch.int64 and s["is_defective"] == 1 and ds[0]["is_defective"] == 0
    assert s["meta"]["path"].endswith("000001.jpg") and s["meta"]["id"] == 1
    assert s["meta"]["orig_size"] == (32, 48)
    assert ds[0]["boxes"].shape == (0, 4)


def test_every_format_reads_the_synthetic_layout(synth):
    cfgs = {
        "voc": {"type": "VOCDataset", "root": str(synth / "voc"), "split": "test",
                "img_dir": str(synth / "images"), "classes": ["hole", "stain"]},
        "labelme": {"type": "LabelMeDataset", "ann_dir": str(synth / "labelme"),
                    "classes": ["hole", "stain"], "split_file": str(synth / "voc/ImageSets/Main/test.txt")},
        "masks": {"type": "MaskFolderDataset", "img_dir": str(synth / "images"),
                  "mask_dir": str(synth / "masks"), "classes": ["hole", "stain"],
                  "split_file": str(synth / "voc/ImageSets/Main/test.txt")},
    }
    samples = {k: build(c)[0] for k, c in cfgs.items()}
    for k in ("voc", "labelme"):
        assert samples[k]["boxes"].tolist() == [[1, 1, 9, 5], [30, 20, 38, 28]], k
        assert samples[k]["labels"].tolist() == [0, 1], k
    m = samples["masks"]["mask"]
    assert isinstance(m, tv_tensors.Mask) and m.dtype == torch.int64 and m.shape == (30, 40)
    assert m[1:5, 1:9].eq(1).all() and m[20:28, 30:38].eq(2).all() and int(m.sum()) == 32 + 128
    # the polygon mask covers the box, boundary pixels included (ImageDraw.polygon rule)
    lm = samples["labelme"]["mask"]
    assert lm[1:6, 1:10].eq(1).all() and int((lm == 1).sum()) == 5 * 9

    mv = build({"type": "MVTecDataset", "root": str(synth / "mvtec"), "split": "test"})
    assert mv.defect_types == ["hole"] and [s["is_defective"] for s in (mv[0], mv[1])] == [0, 1]
    assert mv[0]["mask"].sum() == 0 and mv[1]["mask"].unique().tolist() == [0, 1]
    assert int(mv[1]["mask"].sum()) == 48 and mv[1]["meta"]["defect_type"] == "hole"
    assert len(build({"type": "MVTecDataset", "root": str(synth / "mvtec")})) == 1

    sev = build({"type": "ImageFolderDataset", "root": str(synth / "severity")})
    assert sev.classes == ["0", "1", "2"] and [sev[i]["label"] for i in range(3)] == [0, 1, 2]
    assert "is_defective" not in sev[0] and "boxes" not in sev[0] and "mask" not in sev[0]
    fa = build({"type": "FolderAnomalyDataset", "normal_dir": str(synth / "mvtec/train/good"),
                "abnormal_dir": str(synth / "mvtec/test/hole"),
                "mask_dir": str(synth / "mvtec/ground_truth/hole")})
    assert [s["is_defective"] for s in fa] == [0, 1] and int(fa[1]["mask"].sum()) == 48


def test_labelme_rasterisation_exact():
    m = rasterize_polygons([(0, [(2, 3), (6, 3), (6, 8), (2, 8)])], 12, 10)
    expected = np.zeros((12, 10), np.int64)
    expected[3:9, 2:7] = 1                          # x 2..6, y 3..8, boundary included
    np.testing.assert_array_equal(m, expected)
    m = rasterize_polygons([(0, [(0, 0), (9, 0), (9, 11), (0, 11)]), (2, [(1, 1), (3, 1), (3, 2)])], 12, 10)
    assert m[1, 2] == 3 and m[0, 0] == 1           # later polygons drawn over earlier ones


def test_deterministic_augmentation(synth):
    cfg = {"type": "CocoDataset", "ann_file": str(synth / "coco/annotations/instances_train.json"),
           "img_dir": str(synth / "images"), "seed": 3,
           "pipeline": [{"type": "RandomFlip", "prob": 0.5},
                        {"type": "ColorJitter", "brightness": 0.3},
                        {"type": "SanitizeBoundingBoxes"}]}
    a, b = build(cfg), build(cfg)
    torch.manual_seed(0)
    x = a[2]
    torch.manual_seed(1)                            # the global RNG does not matter ...
    y = b[2]
    assert torch.equal(x["image"], y["image"]) and torch.equal(x["boxes"], y["boxes"])
    state = torch.get_rng_state()
    a[0]
    assert torch.equal(state, torch.get_rng_state())   # ... and is left untouched

    def flips(ds, epoch):
        ds.set_epoch(epoch)
        return [float(ds[i]["boxes"][0, 0]) if i else None for i in (1, 2)] + \
               [int(ds.sample_seed(i)) for i in range(3)]
    runs = {e: flips(a, e) for e in range(6)}
    c = pickle.loads(pickle.dumps(a))               # DataLoader workers under spawn
    assert flips(c, 4) == runs[4]
    assert flips(b, 4) == runs[4]
    assert len({tuple(v[:2]) for v in runs.values()}) > 1     # the flips change with the epoch
    assert len({v[2] for v in runs.values()}) == 6


def test_collate_two_sizes(synth):
    ds = CocoDataset(str(synth / "coco/annotations/instances_train.json"), str(synth / "images"))
    batch = collate([ds[0], ds[1]])                 # 40x30 and 48x32
    assert batch["image"].shape == (2, 3, 32, 48) and batch["image_sizes"] == [(30, 40), (32, 48)]
    assert batch["is_defective"].tolist() == [0, 1] and len(batch["boxes"]) == 2
    lm = LabelMeDataset(str(synth / "labelme"), classes=["hole", "stain"])
    batch = collate([lm[0], lm[1]])
    assert batch["mask"].shape == (2, 32, 48) and batch["mask"].dtype == torch.int64


def test_corrupt_image_reported_and_skipped(synth, dk_log):
    (synth / "images/000002.jpg").write_bytes(b"not a jpeg at all")
    ds = CocoDataset(str(synth / "coco/annotations/instances_train.json"), str(synth / "images"))
    with pytest.raises(DataFormatError, match=r"000002\.jpg: cannot decode image"):
        ds[2]
    ds = CocoDataset(str(synth / "coco/annotations/instances_train.json"), str(synth / "images"),
                     skip_invalid=True)
    s = ds[2]
    assert s["meta"]["id"] == 0 and len(dk_log) == 1 and "000002.jpg" in dk_log[0]
    ds[2]
    assert len(dk_log) == 1                         # warned once per file


def test_image_size_mismatch(synth):
    Image.new("RGB", (41, 30)).save(synth / "images/000000.jpg")
    ds = CocoDataset(str(synth / "coco/annotations/instances_train.json"), str(synth / "images"))
    with pytest.raises(DataFormatError, match=r"000000\.jpg: image is 41x30 but .*instances_train\.json"
                                              r" gives width/height 40x30"):
        ds[0]


def test_mask_value_out_of_range_on_load(synth):
    ds = build({"type": "MaskFolderDataset", "img_dir": str(synth / "images"),
                "mask_dir": str(synth / "masks"), "classes": ["hole", "stain"]})
    Image.fromarray(np.full((30, 40), 5, np.uint8)).save(synth / "masks/000000.png")
    with pytest.raises(DataFormatError, match=r"000000\.png: mask value 5 is outside 0\.\.2"):
        ds[0]


def test_config_errors(synth):
    with pytest.raises(DataFormatError, match=r"ann_file: file not found: data/nope\.json"):
        DATASETS.build({"type": "CocoDataset", "ann_file": "data/nope.json", "img_dir": "."})
    with pytest.raises(DataFormatError, match=r"root: dir not found"):
        DATASETS.build({"type": "MVTecDataset", "root": str(synth / "nope")})
    with pytest.raises(ConfigError, match=r"data\.train\.pipeline\.0\.prb: unknown key; did you mean 'prob'"):
        _validate({"type": "CocoDataset", "ann_file": "x", "img_dir": "y",
                   "pipeline": [{"type": "RandomFlip", "prb": 0.5}]}, DATASETS, "data.train")
    with pytest.raises(ConfigError, match=r"data\.train\.normal_categry: unknown key"):
        _validate({"type": "CocoDataset", "ann_file": "x", "img_dir": "y", "normal_categry": 0},
                  DATASETS, "data.train")
    ds = DATASETS.build({"type": "CocoDataset", "img_dir": str(synth / "images"), "max_images": 2,
                         "ann_file": str(synth / "coco/annotations/instances_train.json")})
    assert len(ds) == 2
