"""Readers in defectkit.data.formats: good files and the errors on malformed ones."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from defectkit.data.formats import (DataFormatError, read_anomaly_folders, read_coco,
                                    read_image_folder, read_labelme, read_mask_folder, read_mvtec,
                                    read_voc)


# ----------------------------------------------------------------------------- helpers
def png(path, w=40, h=30, value=128, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (w, h), value if mode != "RGB" else (value, value, value)).save(path)
    return path


def coco_file(tmp_path, images=None, anns=None, cats=None, name="ann.json"):
    img_dir = tmp_path / "images"
    if images is None:
        images = []
        for i in range(1, 4):
            png(img_dir / f"{i}.png")
            images.append({"id": i, "file_name": f"{i}.png", "width": 40, "height": 30})
    if cats is None:
        cats = [{"id": 0, "name": "背景"}, {"id": 1, "name": "hole"}, {"id": 2, "name": "stain"}]
    if anns is None:
        anns = [{"id": 1, "image_id": 1, "category_id": 0, "bbox": [0, 0, 32, 20]},
                {"id": 2, "image_id": 2, "category_id": 2, "bbox": [5, 6, 10, 4]},
                {"id": 3, "image_id": 2, "category_id": 1, "bbox": [1, 1, 2, 2]}]
    f = tmp_path / name
    f.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}),
                 encoding="utf-8")
    return f, img_dir


# -------------------------------------------------------------------------------- COCO
def test_coco_normal_category(tmp_path):
    f, img_dir = coco_file(tmp_path)
    recs, classes = read_coco(f, img_dir, normal_category=0)
    assert classes == ["hole", "stain"]
    assert [r.is_defective for r in recs] == [0, 1, 0]      # 1: only a 背景 box, 3: nothing
    assert len(recs[0].boxes) == 0
    np.testing.assert_allclose(recs[1].boxes, [[5, 6, 15, 10], [1, 1, 3, 3]])
    assert recs[1].labels.tolist() == [1, 0]
    assert recs[1].boxes.dtype == np.float32 and recs[1].labels.dtype == np.int64
    recs, _ = read_coco(f, img_dir, normal_category=0, filter_empty=True)
    assert [r.id for r in recs] == [2]


def test_coco_background_category_kept_without_option(tmp_path, dk_log):
    f, img_dir = coco_file(tmp_path)
    recs, classes = read_coco(f, img_dir)
    assert classes == ["背景", "hole", "stain"]
    assert recs[0].is_defective == 1 and recs[1].labels.tolist() == [2, 1]
    assert any("normal_category: 0" in m for m in dk_log)


def test_coco_unknown_normal_category(tmp_path):
    f, img_dir = coco_file(tmp_path)
    with pytest.raises(DataFormatError, match="normal_category 7"):
        read_coco(f, img_dir, normal_category=7)


def test_coco_broken_json(tmp_path):
    f, img_dir = coco_file(tmp_path)
    f.write_text('{"images": [', encoding="utf-8")
    with pytest.raises(DataFormatError) as e:
        read_coco(f, img_dir)
    assert "ann.json" in str(e.value) and "broken JSON" in str(e.value)
    assert "line 1" in str(e.value)        # the parser's message


def test_coco_missing_image(tmp_path):
    f, img_dir = coco_file(tmp_path)
    (img_dir / "2.png").unlink()
    with pytest.raises(DataFormatError) as e:
        read_coco(f, img_dir)
    msg = str(e.value)
    assert "ann.json" in msg and "file_name" in msg and "2.png" in msg


def test_coco_box_out_of_bounds_and_tolerance(tmp_path):
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [30, 20, 10.5, 10.8]}]  # 40.5, 30.8
    f, img_dir = coco_file(tmp_path, anns=anns)
    recs, _ = read_coco(f, img_dir, normal_category=0)
    np.testing.assert_allclose(recs[0].boxes, [[30, 20, 40, 30]])   # clipped within 1 px
    anns = [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [30, 20, 15, 5]}]        # x2 = 45
    f, img_dir = coco_file(tmp_path, anns=anns)
    with pytest.raises(DataFormatError) as e:
        read_coco(f, img_dir, normal_category=0)
    msg = str(e.value)
    assert "ann.json" in msg and "annotations[0]" in msg and "bbox" in msg and "outside" in msg


def test_coco_degenerate_box(tmp_path):
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [3, 3, 0, 5]}]
    f, img_dir = coco_file(tmp_path, anns=anns)
    with pytest.raises(DataFormatError, match=r"ann\.json.*bbox.*degenerate"):
        read_coco(f, img_dir)


def test_coco_unknown_category(tmp_path):
    anns = [{"id": 1, "image_id": 1, "category_id": 9, "bbox": [3, 3, 2, 5]}]
    f, img_dir = coco_file(tmp_path, anns=anns)
    with pytest.raises(DataFormatError, match=r"ann\.json.*category_id 9"):
        read_coco(f, img_dir)


def test_coco_empty(tmp_path):
    f, img_dir = coco_file(tmp_path, images=[], anns=[])
    img_dir.mkdir()
    with pytest.raises(DataFormatError, match=r"ann\.json.*no images"):
        read_coco(f, img_dir)
    f, img_dir = coco_file(tmp_path, anns=[])
    with pytest.raises(DataFormatError, match="defective images"):
        read_coco(f, img_dir, filter_empty=True)


def test_coco_skip_invalid_warns_once(tmp_path, dk_log):
    anns = [{"id": 1, "image_id": 1, "category_id": 9, "bbox": [3, 3, 2, 5]},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [3, 3, 0, 5]},
            {"id": 3, "image_id": 3, "category_id": 2, "bbox": [3, 3, 2, 5]}]
    f, img_dir = coco_file(tmp_path, anns=anns, cats=[{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
    recs, _ = read_coco(f, img_dir, skip_invalid=True)
    assert [r.id for r in recs] == [3]
    warnings = [m for m in dk_log if "skip_invalid" in m]
    assert len(warnings) == 1 and "skipped 2 invalid" in warnings[0]
    assert "category_id 9" in warnings[0]


def test_missing_ann_file_names_field(tmp_path):
    with pytest.raises(DataFormatError, match=r"ann_file: file not found: .*nope\.json"):
        read_coco(tmp_path / "nope.json", tmp_path)


# ------------------------------------------------------------------------------- MVTec
def mvtec_tree(root):
    png(root / "train/good/000.png")
    png(root / "train/good/001.png")
    png(root / "test/good/000.png")
    png(root / "test/crack/000.png")
    png(root / "test/crack/001.png")
    png(root / "ground_truth/crack/000_mask.png", mode="L", value=255)
    png(root / "ground_truth/crack/001_mask.png", mode="L", value=0)
    return root


def test_mvtec(tmp_path):
    mvtec_tree(tmp_path / "bottle")
    recs, classes, types = read_mvtec(tmp_path, "bottle", "train")
    assert len(recs) == 2 and all(r.is_defective == 0 for r in recs) and classes == ["defect"]
    recs, _, types = read_mvtec(tmp_path / "bottle", None, "test")   # root is the category
    assert types == ["crack"]
    assert [(r.meta["defect_type"], r.is_defective) for r in recs] == [
        ("good", 0), ("crack", 1), ("crack", 1)]
    assert recs[1].mask_path.endswith("000_mask.png") and recs[1].mask_kind == "binary"
    with pytest.raises(DataFormatError, match="category"):
        read_mvtec(tmp_path, "cable", "test")


def test_mvtec_missing_mask(tmp_path, dk_log):
    root = mvtec_tree(tmp_path / "bottle")
    (root / "ground_truth/crack/001_mask.png").unlink()
    with pytest.raises(DataFormatError, match=r"001\.png.*mask not found"):
        read_mvtec(root, split="test")
    recs, _, _ = read_mvtec(root, split="test", skip_invalid=True)
    assert len(recs) == 2 and len(dk_log) == 1 and "skipped 1 invalid" in dk_log[0]


def test_anomaly_folders(tmp_path):
    png(tmp_path / "ok/a.png")
    png(tmp_path / "ng/scratch/b.png")
    png(tmp_path / "ng/c.png")
    png(tmp_path / "gt/b_mask.png", mode="L")
    png(tmp_path / "gt/c_mask.png", mode="L")
    recs, _, types = read_anomaly_folders(tmp_path / "ok", tmp_path / "ng", tmp_path / "gt")
    assert [r.is_defective for r in recs] == [0, 1, 1] and types == ["defect", "scratch"]
    (tmp_path / "gt/c_mask.png").unlink()
    with pytest.raises(DataFormatError, match=r"c\.png.*mask not found"):
        read_anomaly_folders(tmp_path / "ok", tmp_path / "ng", tmp_path / "gt")


# ----------------------------------------------------------------------------- LabelMe
def labelme_json(path, image_path, shapes, w=40, h=30):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": "4.5.6", "flags": {}, "shapes": shapes,
                                "imagePath": image_path, "imageData": None,
                                "imageHeight": h, "imageWidth": w}), encoding="utf-8")


def poly(label, pts, kind="polygon"):
    return {"label": label, "points": pts, "group_id": None, "shape_type": kind, "flags": {}}


def test_labelme_read(tmp_path):
    png(tmp_path / "images/a.jpg")
    png(tmp_path / "images/b.jpg")
    png(tmp_path / "images/c.jpg")     # no json: unlabelled
    labelme_json(tmp_path / "labelme/a.json", "..\\images\\a.jpg",        # windows separators
                 [poly("Pitting", [[2, 3], [6, 3], [6, 8], [2, 8]]),
                  poly("Rust", [[10, 10], [20, 15]], "rectangle")])
    labelme_json(tmp_path / "labelme/b.json", "../images/b.jpg", [])
    recs, classes = read_labelme(tmp_path / "labelme")
    assert classes == ["Pitting", "Rust"] and [r.id for r in recs] == ["a", "b"]
    np.testing.assert_allclose(recs[0].boxes, [[2, 3, 6, 8], [10, 10, 20, 15]])
    assert recs[0].labels.tolist() == [0, 1] and recs[0].is_defective == 1 and recs[1].is_defective == 0
    recs, classes = read_labelme(tmp_path / "labelme", img_dir=tmp_path / "images",
                                 classes=["Rust", "Pitting"], unlabeled="normal")
    assert recs[0].labels.tolist() == [1, 0] and [r.id for r in recs] == ["a", "b", "c"]
    assert recs[2].is_defective == 0 and recs[2].polygons == []


def test_labelme_errors(tmp_path):
    png(tmp_path / "images/a.jpg")
    labelme_json(tmp_path / "lm/a.json", "../images/a.jpg", [poly("Rust", [[2, 3], [6, 3], [6, 8]])])
    with pytest.raises(DataFormatError, match=r"a\.json: shapes\[0\]\.label 'Rust' is not in classes"):
        read_labelme(tmp_path / "lm", classes=["Pitting"])
    labelme_json(tmp_path / "lm/a.json", "../images/a.jpg", [poly("Rust", [[2, 3], [60, 3], [6, 8]])])
    with pytest.raises(DataFormatError, match=r"a\.json: shapes\[0\]\.points.*outside"):
        read_labelme(tmp_path / "lm")
    labelme_json(tmp_path / "lm/a.json", "../images/zz.jpg", [])
    with pytest.raises(DataFormatError, match=r"a\.json: imagePath: image file not found.*zz\.jpg"):
        read_labelme(tmp_path / "lm")
    (tmp_path / "lm/a.json").write_text("{oops", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"a\.json: broken JSON"):
        read_labelme(tmp_path / "lm")
    (tmp_path / "lm/a.json").unlink()
    with pytest.raises(DataFormatError, match="no annotated images"):
        read_labelme(tmp_path / "lm")


# --------------------------------------------------------------------------------- VOC
def voc_xml(path, filename, objects, w=40, h=30):
    path.parent.mkdir(parents=True, exist_ok=True)
    objs = "".join(
        f"<object><name>{n}</name><difficult>{int(d)}</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects)
    path.write_text(f"<annotation><filename>{filename}</filename><size><width>{w}</width>"
                    f"<height>{h}</height><depth>3</depth></size>{objs}</annotation>")


def test_voc_read(tmp_path):
    voc = tmp_path / "voc"
    png(tmp_path / "images/a.jpg")
    png(tmp_path / "images/b.jpg")
    voc_xml(voc / "Annotations/a.xml", "a.jpg", [("dent", (1, 2, 10, 12), False),
                                                 ("crack", (5, 5, 9, 9), True)])
    voc_xml(voc / "Annotations/b.xml", "b.jpg", [])
    (voc / "ImageSets/Main").mkdir(parents=True)
    (voc / "ImageSets/Main/train.txt").write_text("a\n")
    (voc / "ImageSets/Main/test.txt").write_text("")
    recs, classes = read_voc(voc, img_dir=tmp_path / "images")
    assert classes == ["crack", "dent"] and [r.is_defective for r in recs] == [1, 0]
    assert recs[0].labels.tolist() == [1, 0] and recs[0].meta["difficult"] == [False, True]
    np.testing.assert_allclose(recs[0].boxes[0], [1, 2, 10, 12])
    recs, classes = read_voc(voc, split="train", img_dir=tmp_path / "images", skip_difficult=True)
    # issue 10 item 6: the class list never depends on skip_difficult ('crack' is only difficult)
    assert classes == ["crack", "dent"] and len(recs) == 1 and recs[0].labels.tolist() == [1]
    with pytest.raises(DataFormatError, match=r"test\.txt.*empty split"):
        read_voc(voc, split="test", img_dir=tmp_path / "images")


def test_voc_errors(tmp_path):
    voc = tmp_path / "voc"
    png(voc / "JPEGImages/a.jpg")
    (voc / "Annotations").mkdir(parents=True)
    (voc / "Annotations/a.xml").write_text("<annotation><filename>a.jpg</filename>")
    with pytest.raises(DataFormatError, match=r"a\.xml: broken XML: no element found"):
        read_voc(voc)
    voc_xml(voc / "Annotations/a.xml", "a.jpg", [("dent", (1, 2, 50, 12), False)])
    with pytest.raises(DataFormatError, match=r"a\.xml: object\[0\]\.bndbox.*outside"):
        read_voc(voc)
    voc_xml(voc / "Annotations/a.xml", "a.jpg", [("dent", (8, 2, 8, 12), False)])
    with pytest.raises(DataFormatError, match=r"a\.xml: object\[0\]\.bndbox.*degenerate"):
        read_voc(voc)
    voc_xml(voc / "Annotations/a.xml", "gone.jpg", [])
    (voc / "JPEGImages/a.jpg").unlink()
    with pytest.raises(DataFormatError, match=r"a\.xml: filename: image file not found"):
        read_voc(voc)


# ------------------------------------------------------------------------- mask folder
def test_mask_folder(tmp_path, dk_log):
    png(tmp_path / "img/a.jpg")
    png(tmp_path / "img/b.jpg")
    m = np.zeros((30, 40), np.uint8)
    m[2:5, 3:7] = 2
    (tmp_path / "masks").mkdir()
    Image.fromarray(m).save(tmp_path / "masks/a.png")
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(tmp_path / "masks/b.png")
    recs, classes = read_mask_folder(tmp_path / "img", tmp_path / "masks", ["scratch", "dent"])
    assert classes == ["scratch", "dent"] and [r.is_defective for r in recs] == [1, 0]
    m[0, 0] = 3
    Image.fromarray(m).save(tmp_path / "masks/a.png")
    with pytest.raises(DataFormatError) as e:
        read_mask_folder(tmp_path / "img", tmp_path / "masks", ["scratch", "dent"])
    assert "a.png" in str(e.value) and "mask value 3" in str(e.value) and "0..2" in str(e.value)
    recs, _ = read_mask_folder(tmp_path / "img", tmp_path / "masks", ["scratch", "dent"],
                               skip_invalid=True)
    assert [r.id for r in recs] == ["b"] and len(dk_log) == 1
    (tmp_path / "masks/b.png").unlink()
    with pytest.raises(DataFormatError, match=r"b\.jpg: mask not found"):
        read_mask_folder(tmp_path / "img", tmp_path / "masks", ["scratch", "dent", "x"])
    with pytest.raises(DataFormatError, match="classes: required"):
        read_mask_folder(tmp_path / "img", tmp_path / "masks", None)


# ------------------------------------------------------------------------ image folder
def test_image_folder(tmp_path):
    png(tmp_path / "sev/0/a.png")
    png(tmp_path / "sev/2/b.png")
    png(tmp_path / "sev/1/c.png")
    recs, classes = read_image_folder(tmp_path / "sev")
    assert classes == ["0", "1", "2"] and [r.label for r in recs] == [0, 1, 2]
    assert recs[0].is_defective is None
    recs, classes = read_image_folder(tmp_path / "sev", classes=["2", "0"], normal_class="0")
    assert [(r.label, r.is_defective) for r in recs] == [(0, 1), (1, 0)]
    with pytest.raises(DataFormatError, match=r"classes: \['9'\] have no folder"):
        read_image_folder(tmp_path / "sev", classes=["9"])
    with pytest.raises(DataFormatError, match="root: dir not found"):
        read_image_folder(tmp_path / "nothere")
