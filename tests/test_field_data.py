"""Issue 10, data readers: EXIF orientation (1), mask encodings (3), skip_invalid per
annotation (6a), VOC classes vs skip_difficult (6c), mask/image size errors (7).
Every test writes its own small files."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from defectkit.data.datasets import (CocoDataset, LabelMeDataset, MaskFolderDataset, MVTecDataset,
                                     VOCDataset, load_image)
from defectkit.data.formats import read_coco, read_labelme, read_voc
from defectkit.data.formats.common import DataFormatError, image_size
from defectkit.data.formats.images import decode_mask
from defectkit.data.formats.mask_folder import mask_value_range

DEFECT = (4, 20, 12, 28)   # x1, y1, x2, y2 of the bright defect in the DISPLAYED image



def displayed(w, h):
    """Dark image (w x h as displayed) with a bright defect at DEFECT."""
    a = np.full((h, w, 3), 20, np.uint8)
    x1, y1, x2, y2 = DEFECT
    a[y1:y2, x1:x2] = 250
    return a


def exif_jpeg(path, w, h, orientation=6):
    """A JPEG whose stored grid is the displayed image turned 90 deg counter-clockwise,
    tagged EXIF Orientation 6 (viewers turn it 90 deg clockwise to display it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = Image.fromarray(displayed(w, h)).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = orientation
    raw.save(path, quality=95, exif=exif)
    with Image.open(path) as im:          # the stored grid as decoded (JPEG-rounded)
        return np.asarray(im.convert("RGB"))


def coco_json(tmp_path, w, h, with_size=True):
    x1, y1, x2, y2 = DEFECT
    im = {"id": 1, "file_name": "a.jpg", **({"width": w, "height": h} if with_size else {})}
    data = {"images": [im], "categories": [{"id": 1, "name": "spot"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                             "bbox": [x1, y1, x2 - x1, y2 - y1]}]}
    f = tmp_path / "ann.json"
    f.write_text(json.dumps(data))
    return f


def labelme_json(tmp_path, w, h):
    x1, y1, x2, y2 = DEFECT   # polygon inside the defect (boundary pixels are drawn too)
    pts = [[x1, y1], [x2 - 1, y1], [x2 - 1, y2 - 1], [x1, y2 - 1]]
    (tmp_path / "lm").mkdir(exist_ok=True)
    (tmp_path / "lm/a.json").write_text(json.dumps({
        "imagePath": "../img/a.jpg", "imageWidth": w, "imageHeight": h,
        "shapes": [{"label": "spot", "points": pts, "shape_type": "polygon"}]}))
    return tmp_path / "lm"


def box_mean(sample):
    x1, y1, x2, y2 = (int(round(float(v))) for v in sample["boxes"][0])
    return float(sample["image"][:, y1:y2, x1:x2].mean())


# ------------------------------------------------------------------- 1. EXIF orientation
@pytest.mark.parametrize("w,h", [(32, 32), (48, 32)])
def test_exif_coco_box_covers_the_defect(tmp_path, w, h):
    raw = exif_jpeg(tmp_path / "img/a.jpg", w, h)
    ann = coco_json(tmp_path, w, h)
    s = CocoDataset(str(ann), str(tmp_path / "img"))[0]
    assert tuple(s["image"].shape) == (3, h, w) and box_mean(s) > 0.9
    assert float(s["image"].mean()) < 0.3            # the bright part is the box only
    raw_ds = CocoDataset(str(ann), str(tmp_path / "img"), exif_orientation=False)
    if w == h:                                        # the raw grid: the box misses the defect
        r = raw_ds[0]
        np.testing.assert_allclose(r["image"].permute(1, 2, 0).numpy() * 255, raw, atol=0.5)
        assert box_mean(r) < 0.3
    else:                                             # the raw grid is h x w: named, with EXIF
        with pytest.raises(DataFormatError) as e:
            raw_ds[0]
        msg = str(e.value)
        assert "a.jpg" in msg and "ann.json" in msg and "EXIF orientation 6" in msg
        assert "exif_orientation: true" in msg


def test_exif_size_from_header_is_the_turned_size(tmp_path):
    exif_jpeg(tmp_path / "img/a.jpg", 48, 32)
    assert image_size(tmp_path / "img/a.jpg") == (48, 32)
    assert image_size(tmp_path / "img/a.jpg", exif_orientation=False) == (32, 48)
    ann = coco_json(tmp_path, 48, 32, with_size=False)
    recs, _ = read_coco(ann, tmp_path / "img")
    assert (recs[0].width, recs[0].height) == (48, 32)
    s = CocoDataset(str(ann), str(tmp_path / "img"))[0]
    assert box_mean(s) > 0.9
    recs, _ = read_coco(ann, tmp_path / "img", exif_orientation=False)
    assert (recs[0].width, recs[0].height) == (32, 48)


def test_exif_annotations_on_raw_grid_mismatch_names_option(tmp_path):
    exif_jpeg(tmp_path / "img/a.jpg", 48, 32)
    ann = coco_json(tmp_path, 32, 48)                 # sizes of the raw grid
    with pytest.raises(DataFormatError) as e:
        CocoDataset(str(ann), str(tmp_path / "img"))[0]
    msg = str(e.value)
    assert "image is 48x32" in msg and "EXIF orientation 6" in msg
    assert "exif_orientation: false" in msg
    assert tuple(CocoDataset(str(ann), str(tmp_path / "img"),
                             exif_orientation=False)[0]["image"].shape) == (3, 48, 32)


@pytest.mark.parametrize("w,h", [(32, 32), (48, 32)])
def test_exif_labelme_mask_covers_the_defect(tmp_path, w, h):
    exif_jpeg(tmp_path / "img/a.jpg", w, h)
    lm = labelme_json(tmp_path, w, h)
    s = LabelMeDataset(str(lm))[0]
    mask = s["mask"].numpy() > 0
    assert mask.shape == (h, w) and mask.sum() == 64
    assert float(s["image"][:, torch.from_numpy(mask)].mean()) > 0.9 and box_mean(s) > 0.9
    raw_ds = LabelMeDataset(str(lm), exif_orientation=False)
    if w == h:
        r = raw_ds[0]
        assert float(r["image"][:, r["mask"] > 0].mean()) < 0.3
    else:
        with pytest.raises(DataFormatError, match=r"a\.jpg: image is 32x48 but .*a\.json gives "
                                                  r"imageWidth/imageHeight 48x32.*EXIF"):
            raw_ds[0]


def test_one_loader_for_infer_and_anomaly(tmp_path):
    exif_jpeg(tmp_path / "mv/train/good/a.jpg", 48, 32)
    img = load_image(tmp_path / "mv/train/good/a.jpg")          # what tools/infer.py calls
    assert tuple(img.shape) == (3, 32, 48) and float(img[:, 20:28, 4:12].mean()) > 0.9
    assert tuple(load_image(tmp_path / "mv/train/good/a.jpg", exif_orientation=False).shape) == (3, 48, 32)
    s = MVTecDataset(str(tmp_path / "mv"))[0]                    # the PaDiM path
    assert tuple(s["image"].shape) == (3, 32, 48) and float(s["image"][:, 20:28, 4:12].mean()) > 0.9


# ------------------------------------------------------------------------ 3. mask modes
def save_mask(path, mode, values):
    """A 6x8 mask of ``mode`` holding ``values`` (a (6, 8) int array)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    v = np.asarray(values)
    if mode == "1":
        im = Image.fromarray(v.astype(bool))
    elif mode == "L":
        im = Image.fromarray(v.astype(np.uint8))
    elif mode == "P":
        im = _palette(v)
    elif mode == "LA":
        im = Image.merge("LA", [Image.fromarray(v.astype(np.uint8)),
                                Image.fromarray(np.full(v.shape, 255, np.uint8))])   # opaque alpha
    elif mode == "I;16":
        im = Image.fromarray(v.astype(np.uint16))
    elif mode == "I":
        im = Image.fromarray(v.astype(np.int32))
        path = path.with_suffix(".tif")                  # PNG cannot hold 32-bit I
    elif mode in ("RGB", "RGBA"):
        g = v.astype(np.uint8)
        bands = [g, g, g] + ([np.full(v.shape, 200, np.uint8)] if mode == "RGBA" else [])
        im = Image.fromarray(np.stack(bands, -1))
    im.save(path)
    with Image.open(path) as back:
        assert back.mode == mode, (mode, back.mode)
    return path


def _palette(v):
    """A P image whose indices are ``v`` and whose palette maps index k to grey 255 - k."""
    im = Image.new("P", (v.shape[1], v.shape[0]))
    im.putpalette([255 - i for i in range(256) for _ in range(3)])
    im.putdata(v.astype(np.uint8).ravel().tolist())
    return im


MODES = ["1", "L", "P", "LA", "I;16", "I", "RGB", "RGBA"]


@pytest.mark.parametrize("mode", MODES)
def test_mask_modes_decoded_by_real_values(tmp_path, mode):
    v = np.zeros((6, 8), np.int64)
    v[1:3, 2:5] = 1
    if mode != "1":
        v[4, 6] = 2
    p = save_mask(tmp_path / "m.png", mode, v)
    np.testing.assert_array_equal(decode_mask(p), v)
    assert mask_value_range(p)[:2] == (0, int(v.max()))
    zero = save_mask(tmp_path / "z.png", mode, np.zeros((6, 8), np.int64))
    assert mask_value_range(zero) == (0, 0, (8, 6))


@pytest.mark.parametrize("mode", ["1", "LA", "I;16", "P", "RGBA"])
def test_mask_folder_modes_read_and_load_alike(tmp_path, mode):
    img = tmp_path / "img"
    img.mkdir()
    for stem in ("a", "b"):
        Image.new("RGB", (8, 6), (90, 90, 90)).save(img / f"{stem}.png")
    v = np.zeros((6, 8), np.int64)
    v[2:4, 1:3] = 1
    save_mask(tmp_path / "masks/a.png", mode, v)
    save_mask(tmp_path / "masks/b.png", mode, np.zeros((6, 8), np.int64))
    ds = MaskFolderDataset(str(img), str(tmp_path / "masks"), classes=["scratch"])
    assert [r.is_defective for r in ds.records] == [1, 0]       # all-zero mask -> normal
    assert [ds[i]["is_defective"] for i in range(2)] == [1, 0]
    np.testing.assert_array_equal(ds[0]["mask"].numpy(), v)      # read time == sample time
    assert int(ds[1]["mask"].sum()) == 0


def test_mvtec_ground_truth_modes(tmp_path):
    root = tmp_path / "mv"
    Image.new("RGB", (8, 6)).save((root / "train/good").mkdir(parents=True) or root / "train/good/g.png")
    (root / "test/crack").mkdir(parents=True)
    Image.new("RGB", (8, 6)).save(root / "test/crack/000.png")
    Image.new("RGB", (8, 6)).save(root / "test/crack/001.png")
    v = np.zeros((6, 8), np.int64)
    v[1:3, 1:4] = 255
    save_mask(root / "ground_truth/crack/000_mask.png", "LA", v)
    save_mask(root / "ground_truth/crack/001_mask.png", "1", v > 0)
    ds = MVTecDataset(str(root), split="test")
    for i in range(2):
        np.testing.assert_array_equal(ds[i]["mask"].numpy(), (v > 0).astype(np.int64))


def test_mask_bad_modes_name_file_and_mode(tmp_path):
    (tmp_path / "m").mkdir()
    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[2, 3] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "m/red.png")
    with pytest.raises(DataFormatError, match=r"red\.png: mask mode 'RGB' has colour pixels"):
        decode_mask(tmp_path / "m/red.png")
    Image.new("F", (8, 6), 0.5).save(tmp_path / "m/float.tif")
    with pytest.raises(DataFormatError, match=r"float\.tif: mask mode 'F' is not supported"):
        decode_mask(tmp_path / "m/float.tif")
    (tmp_path / "m/broken.png").write_bytes(b"not a png")
    with pytest.raises(DataFormatError, match=r"broken\.png: cannot decode mask"):
        decode_mask(tmp_path / "m/broken.png")


# ------------------------------------------------------------- 6a. skip_invalid per annotation
def test_coco_skip_invalid_drops_only_the_invalid_annotation(tmp_path, dk_log):
    img = tmp_path / "img"
    img.mkdir()
    for k in (1, 2):
        Image.new("RGB", (40, 30)).save(img / f"{k}.png")
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [3, 3, 0, 5]},    # degenerate
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [10, 10, 5, 5]},
            {"id": 4, "image_id": 2, "category_id": 1, "bbox": [3, 3, 4, 0]}]    # the only one
    f = tmp_path / "ann.json"
    f.write_text(json.dumps({"images": [{"id": k, "file_name": f"{k}.png", "width": 40, "height": 30}
                                        for k in (1, 2)],
                             "annotations": anns, "categories": [{"id": 1, "name": "a"}]}))
    recs, _ = read_coco(f, img, skip_invalid=True)
    assert [r.id for r in recs] == [1] and recs[0].is_defective == 1
    np.testing.assert_allclose(recs[0].boxes, [[1, 1, 6, 6], [10, 10, 15, 15]])
    warn = [m for m in dk_log if "skip_invalid" in m]
    assert len(warn) == 1 and "skipped 2 invalid annotations and 1 image " in warn[0]
    with pytest.raises(DataFormatError, match=r"ann\.json: annotations\[1\] \(id 2\).*degenerate"):
        read_coco(f, img)


def voc_xml(path, objects, w=40, h=30):
    path.parent.mkdir(parents=True, exist_ok=True)
    objs = "".join(f"<object><name>{n}</name><difficult>{int(d)}</difficult><bndbox><xmin>{b[0]}"
                   f"</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                   for n, b, d in objects)
    path.write_text(f"<annotation><filename>{path.stem}.png</filename><size><width>{w}</width>"
                    f"<height>{h}</height></size>{objs}</annotation>")


def test_voc_skip_invalid_drops_only_the_invalid_object(tmp_path, dk_log):
    voc = tmp_path / "voc"
    for stem in ("a", "b"):
        (voc / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30)).save(voc / f"JPEGImages/{stem}.png")
    voc_xml(voc / "Annotations/a.xml", [("dent", (1, 1, 5, 5), 0), ("dent", (8, 2, 8, 12), 0),
                                        ("hole", (10, 10, 20, 20), 0)])
    voc_xml(voc / "Annotations/b.xml", [("dent", (1, 1, 90, 5), 0)])               # outside
    recs, classes = read_voc(voc, skip_invalid=True)
    assert classes == ["dent", "hole"] and [r.id for r in recs] == ["a"]
    assert recs[0].labels.tolist() == [0, 1] and recs[0].meta["difficult"] == [False, False]
    assert "skipped 2 invalid objects and 1 image " in dk_log[0]
    with pytest.raises(DataFormatError, match=r"a\.xml: object\[1\]\.bndbox.*degenerate"):
        read_voc(voc)
    recs, _ = read_voc(voc, classes=["hole"], skip_invalid=True)   # unknown name: object only
    assert [r.id for r in recs] == ["a"] and recs[0].labels.tolist() == [0]


def test_labelme_skip_invalid_drops_only_the_invalid_shape(tmp_path, dk_log):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "img/a.png")
    (tmp_path / "lm").mkdir()
    shapes = [{"label": "pit", "points": [[1, 1], [6, 1], [6, 6]], "shape_type": "polygon"},
              {"label": "pit", "points": [[1, 1], [2, 2]], "shape_type": "polygon"},   # 2 points
              {"label": "pit", "points": [[10, 10], [20, 20]], "shape_type": "rectangle"}]
    (tmp_path / "lm/a.json").write_text(json.dumps({"imagePath": "../img/a.png", "imageWidth": 40,
                                                    "imageHeight": 30, "shapes": shapes}))
    ds = LabelMeDataset(str(tmp_path / "lm"), skip_invalid=True)
    assert len(ds) == 1 and ds.records[0].labels.tolist() == [0, 0]
    assert int(ds[0]["mask"][15, 15]) == 1
    assert "skipped 1 invalid shape " in dk_log[0]
    with pytest.raises(DataFormatError, match=r"a\.json: shapes\[1\]\.points: a polygon needs >= 3"):
        read_labelme(tmp_path / "lm")


# ------------------------------------------------------------- 6c. VOC skip_difficult classes
def test_voc_classes_do_not_depend_on_skip_difficult(tmp_path):
    voc = tmp_path / "voc"
    for stem in ("a", "b"):
        (voc / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30)).save(voc / f"JPEGImages/{stem}.png")
    voc_xml(voc / "Annotations/a.xml", [("crack", (1, 1, 5, 5), 1), ("scratch", (6, 6, 9, 9), 0)])
    voc_xml(voc / "Annotations/b.xml", [("dent", (2, 2, 8, 8), 0)])
    full = VOCDataset(str(voc))
    easy = VOCDataset(str(voc), skip_difficult=True)
    assert full.classes == easy.classes == ["crack", "dent", "scratch"]
    assert easy[0]["labels"].tolist() == [2] and easy[1]["labels"].tolist() == [1]
    assert full[0]["labels"].tolist() == [0, 2]


# ---------------------------------------------------------------- 7. mask/image size errors
def test_mask_size_mismatch_names_mask_and_image(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "img/a.png")
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((30, 41), np.uint8)).save(tmp_path / "masks/a.png")
    with pytest.raises(DataFormatError) as e:
        MaskFolderDataset(str(tmp_path / "img"), str(tmp_path / "masks"), classes=["x"])
    msg = str(e.value)
    assert msg.startswith(str(tmp_path / "masks/a.png")) and "mask is 41x30" in msg
    assert str(tmp_path / "img/a.png") in msg and "40x30" in msg
    # MVTec ground truth: found when the sample is loaded
    root = tmp_path / "mv"
    (root / "test/crack").mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(root / "test/crack/000.png")
    (root / "ground_truth/crack").mkdir(parents=True)
    Image.new("L", (40, 31)).save(root / "ground_truth/crack/000_mask.png")
    with pytest.raises(DataFormatError) as e:
        MVTecDataset(str(root), split="test")[0]
    msg = str(e.value)
    assert msg.startswith(str(root / "ground_truth/crack/000_mask.png")) and "mask is 40x31" in msg
    assert str(root / "test/crack/000.png") in msg


def test_labelme_size_mismatch_names_image_and_json(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "img/a.jpg")
    lm = labelme_json(tmp_path, 41, 30)
    with pytest.raises(DataFormatError) as e:
        LabelMeDataset(str(lm))[0]
    msg = str(e.value)
    assert "img/a.jpg: image is 40x30" in msg
    assert str(lm / "a.json") in msg and "imageWidth/imageHeight 41x30" in msg
    assert "EXIF" not in msg                          # no orientation tag: no EXIF hint


def test_exif_orientation_is_a_key_of_every_dataset(tmp_path):
    import inspect

    from defectkit.registry import DATASETS
    ours = [n for n in DATASETS.keys() if DATASETS.get(n).__module__.startswith("defectkit.")]
    missing = [n for n in ours
               if "exif_orientation" not in inspect.signature(DATASETS.get(n)).parameters]
    assert ours and missing == []    # test helpers register toy datasets of their own
    exif_jpeg(tmp_path / "cls/good/a.jpg", 48, 32)
    for flag, shape in ((True, (3, 32, 48)), (False, (3, 48, 32))):   # built from a config dict
        ds = DATASETS.build({"type": "ImageFolderDataset", "root": str(tmp_path / "cls"),
                             "exif_orientation": flag})
        assert tuple(ds[0]["image"].shape) == shape
        ds = DATASETS.build({"type": "FolderAnomalyDataset", "normal_dir": str(tmp_path / "cls"),
                             "exif_orientation": flag})
        assert tuple(ds[0]["image"].shape) == shape
