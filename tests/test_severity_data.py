"""Severity data contract (issue 13): per-box grades from VOC / COCO, natural sort of grade
names and ImageFolder folders, grades aligned through box filtering, the VOC writer, and the
synthetic sensor preset's grades."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from defectkit.data.datasets import CocoDataset, VOCDataset
from defectkit.data.formats.common import DataFormatError, natural_sorted
from defectkit.data.transforms import SanitizeBoundingBoxes, build_pipeline


def png(path, w=40, h=30, value=20):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (value,) * 3).save(path)


def xml_object(name, box, severity=None, attribute=None):
    sev = f"<severity>{severity}</severity>" if severity is not None else ""
    att = ("<attributes><attribute><name>severity</name>"
           f"<value>{attribute}</value></attribute></attributes>") if attribute is not None else ""
    x0, y0, x1, y1 = box
    return (f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x0}</xmin>"
            f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>{sev}{att}</object>")


def voc_tree(root, files: dict):
    """``files``: stem -> list of xml_object strings; images 40x30 in JPEGImages."""
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    for stem, objs in files.items():
        png(root / "JPEGImages" / f"{stem}.png")
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.png</filename><size><width>40</width>"
            f"<height>30</height><depth>3</depth></size>{''.join(objs)}</annotation>")
    return root


# ------------------------------------------------------------------------------- VOC
def test_voc_grades_from_both_xml_styles_and_unknown(tmp_path):
    root = voc_tree(tmp_path / "voc", {
        "a": [xml_object("dash_col", (1, 2, 3, 28), severity="10"),       # <severity>
              xml_object("blemish", (5, 5, 15, 15), attribute="2")],      # CVAT attribute
        "b": [xml_object("blemish", (20, 10, 30, 20)),                     # no grade -> -1
              xml_object("spot", (2, 2, 6, 6), severity="3", attribute="3")]})  # both, equal
    ds = VOCDataset(str(root), with_grades=True)
    assert ds.grade_names == ["2", "3", "10"]            # natural sort, not ["10", "2", "3"]
    a, b = ds[0], ds[1]
    assert a["grades"].dtype == torch.int64
    assert a["grades"].tolist() == [2, 0] and a["labels"].tolist() == [1, 0]
    assert b["grades"].tolist() == [-1, 1]
    # given grades: their order wins, and the indices follow it
    ds = VOCDataset(str(root), grades=["10", "3", "2", "1"])
    assert ds.with_grades and ds.grade_names == ["10", "3", "2", "1"]
    assert ds[0]["grades"].tolist() == [0, 2]
    # without grades: no key, no names (existing configs unchanged)
    ds = VOCDataset(str(root))
    assert "grades" not in ds[0] and ds.grade_names is None


def test_voc_unknown_grade_names_file_object_and_value(tmp_path):
    root = voc_tree(tmp_path / "voc", {"a": [xml_object("spot", (1, 1, 5, 5), severity="1"),
                                             xml_object("spot", (8, 8, 12, 12), severity="7")]})
    with pytest.raises(DataFormatError) as e:
        VOCDataset(str(root), grades=["1", "2", "3", "4", "5"])
    msg = str(e.value)
    assert "a.xml" in msg and "object[1]" in msg and "'7'" in msg
    # skip_invalid: the box stays, its grade is unknown
    ds = VOCDataset(str(root), grades=["1", "2", "3", "4", "5"], skip_invalid=True)
    assert ds[0]["grades"].tolist() == [0, -1] and len(ds[0]["boxes"]) == 2


def test_voc_conflicting_grade_styles(tmp_path):
    root = voc_tree(tmp_path / "voc", {"a": [xml_object("spot", (1, 1, 5, 5), severity="2",
                                                        attribute="3")]})
    with pytest.raises(DataFormatError, match=r"a\.xml: object\[0\].*'2'.*'3'"):
        VOCDataset(str(root), with_grades=True)


def test_natural_sort():
    assert natural_sorted(["10", "2", "1", "2"]) == ["1", "2", "10"]
    assert natural_sorted(["g10", "g2", "b", "2"]) == ["2", "b", "g2", "g10"]
    assert sorted(["10", "2"]) == ["10", "2"]        # the pitfall natural sort avoids


# -------------------------------------------------------------------------- transforms
def test_grades_stay_aligned_when_a_box_is_removed():
    boxes = torch.tensor([[1, 1, 10, 10], [20, 5, 20, 9], [30, 2, 38, 20.]])   # box 1: width 0
    sample = {"image": tv_tensors.Image(torch.zeros(3, 30, 40)),
              "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(30, 40)),
              "labels": torch.tensor([0, 1, 2]), "grades": torch.tensor([4, 0, -1]),
              "is_defective": 1, "meta": {}}
    out = SanitizeBoundingBoxes()(dict(sample))
    assert out["labels"].tolist() == [0, 2] and out["grades"].tolist() == [4, -1]
    # inside a pipeline, after a crop that leaves only the first box
    pipe = build_pipeline([{"type": "RandomCrop", "size": [15, 15], "pad_if_needed": False},
                           {"type": "SanitizeBoundingBoxes"}])
    torch.manual_seed(0)
    out = pipe(dict(sample))
    assert len(out["grades"]) == len(out["labels"]) == len(out["boxes"])
    for lab, g in zip(out["labels"].tolist(), out["grades"].tolist()):
        assert g == {0: 4, 2: -1}[lab]


# ------------------------------------------------------------------------------- COCO
def test_coco_severity_key_and_attribute(tmp_path):
    png(tmp_path / "img" / "a.png")
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
            "categories": [{"id": 1, "name": "spot"}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "severity": 3},
                {"id": 2, "image_id": 1, "category_id": 1, "bbox": [9, 1, 4, 4],
                 "attributes": {"severity": "12"}},
                {"id": 3, "image_id": 1, "category_id": 1, "bbox": [20, 1, 4, 4],
                 "severity": 2.0},
                {"id": 4, "image_id": 1, "category_id": 1, "bbox": [30, 1, 4, 4]}]}
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    ds = CocoDataset(str(ann), str(tmp_path / "img"), with_grades=True)
    assert ds.grade_names == ["2", "3", "12"]
    assert ds[0]["grades"].tolist() == [1, 2, 0, -1]
    with pytest.raises(DataFormatError) as e:
        CocoDataset(str(ann), str(tmp_path / "img"), grades=["1", "2", "3"])
    assert "ann.json" in str(e.value) and "annotations[1]" in str(e.value) and "'12'" in str(e.value)


# ---------------------------------------------------------------------------- VOC writer
def test_write_voc_then_read_back_equals_input(tmp_path):
    from defectkit.data.formats.voc import read_voc, read_voc_file, write_voc

    objects = [{"name": "dash_col", "box": [3, 0, 5, 30], "severity": "4", "score": 0.875},
               {"name": "blemish", "box": [10.25, 4.5, 20, 15.75], "severity": "10"},
               {"name": "spot", "box": [30, 20, 36, 26]}]
    root = tmp_path / "voc"
    png(root / "JPEGImages" / "img 1.png")
    xml = write_voc(root / "Annotations" / "img 1.xml", "img 1.png", (30, 40, 3), objects)
    assert not [p for p in xml.parent.iterdir() if p.name.endswith(".tmp")]   # no temp left
    back = read_voc_file(xml)
    assert back == {"filename": "img 1.png", "size": (30, 40, 3), "objects": objects}
    # LabelImg element order, extension tags after bndbox
    ann = ET.parse(xml).getroot()
    assert [c.tag for c in ann] == ["folder", "filename", "path", "source", "size", "segmented",
                                    "object", "object", "object"]
    assert [c.tag for c in ann.find("size")] == ["width", "height", "depth"]
    assert [c.tag for c in ann.find("object")] == ["name", "pose", "truncated", "difficult",
                                                   "bndbox", "severity", "score"]
    # the dataset reader gives the same boxes, names and grades
    recs, classes = read_voc(root, classes=["dash_col", "blemish", "spot"])
    np.testing.assert_allclose(recs[0].boxes, [o["box"] for o in objects])
    assert [classes[k] for k in recs[0].labels] == [o["name"] for o in objects]
    ds = VOCDataset(str(root), classes=["dash_col", "blemish", "spot"], with_grades=True)
    assert [ds.grade_names[g] if g >= 0 else None for g in ds[0]["grades"].tolist()] == \
        [o.get("severity") for o in objects]
    # overwriting is atomic and complete; bad input names the object
    write_voc(xml, "img 1.png", (30, 40, 3), objects[:1])
    assert len(read_voc_file(xml)["objects"]) == 1
    with pytest.raises(ValueError, match=r"objects\[1\]\.box"):
        write_voc(xml, "img 1.png", (30, 40, 3), [objects[0], {"name": "x", "box": [5, 5, 5, 9]}])
    with pytest.raises(ValueError, match=r"objects\[0\]: unknown keys \['grade'\]"):
        write_voc(xml, "img 1.png", (30, 40, 3), [{"name": "x", "box": [1, 1, 5, 9], "grade": 2}])
    assert len(read_voc_file(xml)["objects"]) == 1      # a failed write left the old file


# ------------------------------------------------------------------------- ImageFolder
def test_image_folder_grade_folders_natural_sort(tmp_path):
    from defectkit.data.datasets import ImageFolderDataset

    for g in ("10", "2", "1", "11"):
        png(tmp_path / "sev" / g / f"crop{g}.png")
    ds = ImageFolderDataset(str(tmp_path / "sev"))
    assert ds.classes == ["1", "2", "10", "11"]            # Keras/torchvision: 1, 10, 11, 2
    assert {ds.records[i].meta["class_name"]: ds[i]["label"] for i in range(4)} == \
        {"1": 0, "2": 1, "10": 2, "11": 3}
    ds = ImageFolderDataset(str(tmp_path / "sev"), classes=["1", "10", "11", "2"])   # given wins
    assert ds.classes == ["1", "10", "11", "2"] and ds[3]["label"] == 3


# ------------------------------------------------------------------ synthetic sensor preset
def test_sensor_preset_grades_depend_on_area_and_contrast():
    """A small set (the images make_synth writes for seed 0) has >= 3 grades for the column
    line type and for each blob type, and within a type a larger area or a higher contrast
    never lowers the severity score (the formula of data/synth/severity.py)."""
    from collections import Counter

    from defectkit.data.synth.generator import plan, render
    from defectkit.data.synth.presets import PRESETS
    from defectkit.data.synth.severity import severity_grade, severity_score

    p = PRESETS["sensor"]
    w, h = p.size
    n = 80
    _, normal = plan(n, p.normal_ratio, 0)
    grades: dict[str, Counter] = {c: Counter() for c in p.classes}
    for i in range(n):
        _, placed = render(p, i, 0, w, h, bool(normal[i]))
        for d in placed:
            grades[d["name"]][d["severity"]] += 1
    for name in ("dash_col", "blemish", "spot"):
        assert len(grades[name]) >= 3, (name, dict(grades[name]))
    # both inputs move the grade: hand values at 512x288 (area 300 px, contrast 8, std 2)
    assert severity_grade(300, w * h, 8.0, 2.0) == 3         # score 0.605
    assert severity_grade(1000, w * h, 8.0, 2.0) == 4        # 3.3x the area (score 0.71)
    assert severity_grade(3000, w * h, 8.0, 2.0) == 5        # 10x the area (score 0.81)
    assert severity_grade(300, w * h, 2.0, 2.0) == 1         # a quarter of the contrast (0.39)
    assert severity_score(300, w * h, 8.0, 2.0) == pytest.approx(
        0.5 * np.log10(300 / (w * h) / 1e-4) / np.log10(300) + 0.5 * np.log2(3) / np.log2(5))


def test_sensor_base_config_reads_grades(tmp_path):
    """configs/_base_/datasets/synth_sensor_det.yaml on a freshly generated sensor set."""
    from defectkit.config import load_config
    from defectkit.data.synth import generate
    from defectkit.registry import DATASETS

    out = tmp_path / "synth_sensor"
    generate("sensor", out, num_images=10, seed=0, workers=1)
    cfg = load_config("configs/_base_/datasets/synth_sensor_det.yaml")
    for split in ("train", "val", "test"):
        c = {**cfg["data"][split], "root": str(out / "voc"), "img_dir": str(out / "images")}
        ds = DATASETS.build(c)
        assert ds.classes == ["dash_col", "blemish", "spot"]
        assert ds.grade_names == ["1", "2", "3", "4", "5"]
        for i in range(len(ds)):
            s = ds[i]
            assert len(s["grades"]) == len(s["labels"]) == len(s["boxes"])
            assert all(0 <= g < 5 for g in s["grades"].tolist())   # every synthetic box graded


def test_keep_original_holds_the_unresized_image_for_the_crops():
    """KeepOriginal after the flip and Normalize, before Resize: ``orig_image`` is the flipped,
    normalised image at its original size (a plain tensor the later transforms pass through),
    and the resized boxes map back onto it with meta['scale_factor']."""
    from defectkit.data.collate import collate

    pipe = build_pipeline([{"type": "RandomFlip", "prob": 1.0},
                           {"type": "Normalize", "mean": [0.5] * 3, "std": [0.5] * 3},
                           {"type": "KeepOriginal"},
                           {"type": "Resize", "scale": [50, 25], "keep_ratio": False},
                           {"type": "Pad", "size_divisor": 32}])
    img = torch.zeros(3, 40, 80)
    img[:, :, :10] = 1.0                                   # a bright band on the left edge
    sample = {"image": tv_tensors.Image(img), "labels": torch.tensor([0]),
              "boxes": tv_tensors.BoundingBoxes(torch.tensor([[0.0, 0, 10, 40]]), format="XYXY",
                                                canvas_size=(40, 80)),
              "meta": {"path": "x.png", "orig_size": (40, 80)}}
    out = pipe(sample)
    orig = out["orig_image"]
    assert type(orig) is torch.Tensor and orig.shape == (3, 40, 80) and out["image"].shape == (3, 32, 64)
    assert torch.equal(orig, (img.flip(-1) - 0.5) / 0.5)   # flipped and normalised, not resized
    sx, sy = out["meta"]["scale_factor"]
    back = out["boxes"][0] / torch.tensor([sx, sy, sx, sy])
    assert back.tolist() == pytest.approx([70.0, 0.0, 80.0, 40.0])   # the band, in orig_image's frame
    assert collate([out, out])["orig_image"].shape == (2, 3, 40, 80)
