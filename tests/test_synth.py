"""Synthetic generator: determinism, counts, and consistency between every output format."""
from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from defectkit.data.synth import PRESETS, SynthError, generate, severity_grade
from defectkit.data.synth.generator import MIN_BOX_SIDE, annotation_box

REPO = Path(__file__).resolve().parents[1]
N, SIZE, SEED = 16, (128, 128), 3


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _load(path: Path):
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "fabric"
    meta = generate("fabric", out, num_images=N, size=SIZE, seed=SEED, workers=1)
    return out, meta


@pytest.fixture(scope="module")
def coco(ds):
    out, _ = ds
    return {s: _load(out / "coco" / "annotations" / f"instances_{s}.json") for s in ("train", "test")}


def _images(coco):
    """image record + its annotations, over both splits, keyed by stem."""
    res = {}
    for split, c in coco.items():
        anns = {}
        for a in c["annotations"]:
            anns.setdefault(a["image_id"], []).append(a)
        for im in c["images"]:
            res[Path(im["file_name"]).stem] = (split, im, anns.get(im["id"], []))
    return res


def _raster(points, h, w):
    canvas = Image.new("L", (w, h), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in points], fill=1, outline=1)
    return np.asarray(canvas, bool)


def _bbox(mask):
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


# ---------------------------------------------------------------------------- determinism
def test_byte_identical_across_runs_and_worker_counts(ds, tmp_path):
    out, meta = ds
    again = generate("fabric", tmp_path / "b", num_images=N, size=SIZE, seed=SEED, workers=2)
    a, b = _files(out), _files(tmp_path / "b")
    assert sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == []
    assert again == meta


def test_other_seed_gives_other_images(ds, tmp_path):
    out, _ = ds
    generate("fabric", tmp_path / "c", num_images=4, size=SIZE, seed=SEED + 1, workers=1)
    first = (out / "images" / "000000.jpg").read_bytes()
    assert (tmp_path / "c" / "images" / "000000.jpg").read_bytes() != first


# ---------------------------------------------------------------------------- counts
def test_split_and_normal_ratio(ds, coco):
    out, meta = ds
    n_train = int(0.8 * N)
    order = np.random.default_rng(SEED).permutation(N)
    assert sorted(im["id"] for im in coco["train"]["images"]) == sorted(int(i) + 1 for i in order[:n_train])
    assert sorted(im["id"] for im in coco["test"]["images"]) == sorted(int(i) + 1 for i in order[n_train:])
    ratio = PRESETS["fabric"].normal_ratio
    c = meta["counts"]
    assert c["total"]["images"] == N and c["train"]["images"] == n_train
    assert c["total"]["normal"] == round(ratio * N)
    assert c["train"]["normal"] == round(ratio * n_train)
    for split in ("train", "test"):
        with_ann = {a["image_id"] for a in coco[split]["annotations"]}
        normal = [im for im in coco[split]["images"] if im["id"] not in with_ann]
        assert len(normal) == c[split]["normal"]
        assert len(coco[split]["annotations"]) == c[split]["instances"]
        assert meta["splits"][split] == [im["file_name"] for im in coco[split]["images"]]
        stems = (out / "voc" / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
        assert stems == [Path(f).stem for f in meta["splits"][split]]
    per_class = {k: v["total"] for k, v in c["per_class"].items()}
    assert sum(per_class.values()) == c["total"]["instances"]
    assert _load(out / "dataset.json") == meta
    assert meta["classes"] == PRESETS["fabric"].classes


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_normal_ratio_extremes(tmp_path, ratio):
    meta = generate("texture", tmp_path, num_images=10, size=(64, 64), normal_ratio=ratio, workers=1)
    assert meta["counts"]["total"]["normal"] == round(10 * ratio)
    assert len(list((tmp_path / "labelme").glob("*.json"))) == 10 - round(10 * ratio)
    if ratio == 1.0:
        assert meta["counts"]["total"]["instances"] == 0
        assert sorted(p.name for p in (tmp_path / "mvtec" / "test").iterdir()) == ["good"]


# ---------------------------------------------------------------------------- formats agree
@pytest.mark.filterwarnings("ignore::DeprecationWarning")      # pycocotools vs numpy 2
def test_every_format_present_and_consistent(ds, coco):
    out, meta = ds
    w, h = SIZE
    classes = meta["classes"]
    assert [c["name"] for c in sorted(coco["train"]["categories"], key=lambda c: c["id"])] == classes
    assert [c["id"] for c in coco["train"]["categories"]] == list(range(1, len(classes) + 1))
    ious = []
    for stem, (split, im, anns) in _images(coco).items():
        assert (im["width"], im["height"]) == (w, h)
        img = np.asarray(Image.open(out / "images" / im["file_name"]).convert("RGB"))
        assert img.shape == (h, w, 3)
        cmask = np.asarray(Image.open(out / "masks" / f"{stem}.png"))
        assert cmask.dtype == np.uint8 and cmask.shape == (h, w)
        # class mask pixels <-> annotations
        assert set(np.unique(cmask)) - {0} == {a["category_id"] for a in anns}
        assert int((cmask > 0).sum()) == sum(a["area"] for a in anns)

        voc = ET.parse(out / "voc" / "Annotations" / f"{stem}.xml").getroot()
        assert voc.findtext("filename") == im["file_name"]
        assert (int(voc.findtext("size/width")), int(voc.findtext("size/height"))) == (w, h)
        objs = voc.findall("object")
        assert len(objs) == len(anns)

        lm_path = out / "labelme" / f"{stem}.json"
        assert lm_path.exists() == bool(anns)
        shapes = _load(lm_path)["shapes"] if anns else []
        if anns:
            lm = _load(lm_path)
            assert lm["imagePath"] == f"../images/{im['file_name']}"
            assert (lm["imageWidth"], lm["imageHeight"], lm["imageData"]) == (w, h, None)
            assert (out / "labelme" / lm["imagePath"]).resolve() == (out / "images" / im["file_name"]).resolve()

        for k, (a, obj, shape) in enumerate(zip(anns, objs, shapes)):
            x, y, bw, bh = a["bbox"]
            assert 0 <= x and 0 <= y and bw > 0 and bh > 0 and x + bw <= w and y + bh <= h
            name = classes[a["category_id"] - 1]
            # the LabelMe polygon rasterises (LabelMe's own rule) exactly to this defect's pixels
            assert shape["label"] == name and shape["shape_type"] == "polygon"
            inst = _raster(shape["points"], h, w)
            assert (cmask[inst] == a["category_id"]).all()
            assert int(inst.sum()) == a["area"]
            # the annotation box: the mask's tight box grown to >= 8 px a side (labeller-like)
            assert annotation_box(_bbox(inst), w, h) == [x, y, x + bw, y + bh]
            assert min(bw, bh) >= min(MIN_BOX_SIDE, w, h)
            # VOC box == COCO box
            bb = obj.find("bndbox")
            assert obj.findtext("name") == name
            assert [int(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")] == [x, y, x + bw, y + bh]
            assert 1 <= a["severity"] <= 5
            # COCO polygon (pycocotools) lands on the same pixels, approximately
            from pycocotools import mask as cm
            rle = cm.merge(cm.frPyObjects(a["segmentation"], h, w))
            m = cm.decode(rle).astype(bool)
            ious.append((m & inst).sum() / max((m | inst).sum(), 1))
            # severity crop exists and covers the box
            crop = Image.open(out / "severity" / str(a["severity"]) / f"{stem}_{k}.png")
            tb = _bbox(inst)                     # crops are cut around the mask's tight box
            assert crop.size[0] >= tb[2] - tb[0] and crop.size[1] >= tb[3] - tb[1]

        # MVTec layout
        gt_dirs = list((out / "mvtec" / "ground_truth").glob(f"*/{stem}_mask.png"))
        if not anns:
            assert (out / "mvtec" / split / "good" / f"{stem}.png").exists()
            assert gt_dirs == []
            good = np.asarray(Image.open(out / "mvtec" / split / "good" / f"{stem}.png"))
            assert np.array_equal(good, img)
        elif split == "test":
            largest = max(anns, key=lambda a: a["area"])
            dtype = classes[largest["category_id"] - 1]
            assert np.array_equal(np.asarray(Image.open(out / "mvtec" / "test" / dtype / f"{stem}.png")), img)
            gt = np.asarray(Image.open(out / "mvtec" / "ground_truth" / dtype / f"{stem}_mask.png"))
            assert set(np.unique(gt)) == {0, 255}
            assert np.array_equal(gt == 255, cmask > 0)
        else:                                   # defective train images are not in MVTec
            assert not list((out / "mvtec").rglob(f"{stem}.png")) and gt_dirs == []
    assert ious and float(np.mean(ious)) > 0.6 and min(ious) > 0.2
    n_crops = sum(1 for _ in (out / "severity").rglob("*.png"))
    assert n_crops == meta["counts"]["total"]["instances"]
    assert sorted(p.name for p in (out / "severity").iterdir()) == ["1", "2", "3", "4", "5"]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_renders_small_images(tmp_path, preset):
    meta = generate(preset, tmp_path, num_images=6, size=(96, 64), normal_ratio=0.0, workers=1)
    c = meta["counts"]["total"]
    assert c["defective"] == 6 and c["instances"] >= 6
    train = _load(tmp_path / "coco" / "annotations" / "instances_train.json")
    for a in train["annotations"]:
        x, y, bw, bh = a["bbox"]
        assert x + bw <= 96 and y + bh <= 64 and 1 <= a["severity"] <= 5


def test_severity_grade_formula():
    base = severity_grade(100, 256 * 256, 10.0, 5.0)
    assert 1 <= base <= 5
    assert severity_grade(1, 256 * 256, 0.0, 50.0) == 1
    assert severity_grade(256 * 256 // 10, 256 * 256, 200.0, 0.0) == 5
    assert severity_grade(400, 256 * 256, 10.0, 5.0) >= base        # larger -> not milder
    assert severity_grade(100, 256 * 256, 40.0, 5.0) >= base         # stronger -> not milder


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, message", [
    ({"preset": "fabrik"}, "did you mean 'fabric'"),
    ({"preset": "nope"}, "choose one of: fabric, bottle, ballscrew, sensor, texture"),
    ({"normal_ratio": 1.5}, "normal_ratio must be within [0, 1]"),
    ({"normal_ratio": -0.1}, "normal_ratio must be within [0, 1]"),
    ({"size": "512"}, "expected WIDTHxHEIGHT"),
    ({"size": "8x8"}, "width must be within"),
    ({"num_images": 0}, "num_images must be a positive integer"),
    ({"seed": -1}, "seed must be a non-negative integer"),
])
def test_bad_arguments(tmp_path, kwargs, message):
    args = {"preset": "texture", "num_images": 2, "size": (64, 64), "workers": 1} | kwargs
    preset = args.pop("preset")
    with pytest.raises(SynthError, match=message.replace("[", r"\[").replace("]", r"\]")):
        generate(preset, tmp_path / "x", **args)
    assert not (tmp_path / "x").exists()


def test_output_dir_rules(tmp_path):
    generate("texture", tmp_path / "d", num_images=6, size=(64, 64), workers=1)
    generate("texture", tmp_path / "d", num_images=3, size=(64, 64), workers=1)   # replaces
    assert len(list((tmp_path / "d" / "images").iterdir())) == 3
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "notes.txt").write_text("mine")
    with pytest.raises(SynthError, match="does not look like a synthetic dataset"):
        generate("texture", tmp_path / "e", num_images=2, size=(64, 64), workers=1)
    assert (tmp_path / "e" / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------------------- CLI
def test_cli(tmp_path):
    cmd = [sys.executable, "tools/make_synth.py", "--preset", "sensor", "--out", str(tmp_path / "s"),
           "--num-images", "10", "--size", "96x64", "--seed", "1", "--workers", "1"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "images     10" in r.stdout and "done in" in r.stdout
    meta = _load(tmp_path / "s" / "dataset.json")
    assert meta["arguments"] == {"preset": "sensor", "num_images": 10, "normal_ratio": 0.3,
                                 "size": [96, 64], "seed": 1}

    bad = subprocess.run([sys.executable, "tools/make_synth.py", "--preset", "metal", "--out",
                          str(tmp_path / "t")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert "unknown preset 'metal'" in bad.stderr and "ballscrew" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_demo_preset_draws_every_defect_at_strength_half_or_more(monkeypatch):
    """The `demo` preset (make demo's detector set) floors the painters' strength at 0.5;
    other presets keep drawing it from [0, 1)."""
    import dataclasses

    from defectkit.data.synth import generator

    for name, floor in (("demo", 0.5), ("fabric", 0.0)):
        seen: list[float] = []
        base = PRESETS[name]

        def spy(fn):
            def paint(canvas, rng, s):
                seen.append(s)
                return fn(canvas, rng, s)
            return paint

        preset = dataclasses.replace(base, painters={k: spy(f) for k, f in base.painters.items()})
        for i in range(12):
            generator.render(preset, i, seed=0, width=96, height=96, normal=False)
        assert seen and min(seen) >= floor
        assert (min(seen) < 0.5) == (floor == 0.0)


def test_annotation_box_hand_values():
    """Thin defects get labeller-like boxes: >= 8 px a side, centred, kept inside the image."""
    assert MIN_BOX_SIDE == 8
    assert annotation_box([100, 0, 101, 288], 512, 288) == [97, 0, 105, 288]     # 1 px: 7 more, 3 left, 4 right
    assert annotation_box([100, 10, 103, 200], 512, 288) == [98, 10, 106, 200]   # 3 px: odd remainder right
    assert annotation_box([0, 5, 2, 9], 512, 288) == [0, 3, 8, 11]               # left border: shifted in
    assert annotation_box([511, 284, 512, 288], 512, 288) == [504, 280, 512, 288]  # bottom-right corner
    assert annotation_box([10, 10, 40, 30], 512, 288) == [10, 10, 40, 30]        # large: unchanged
    assert annotation_box([2, 2, 3, 3], 6, 64) == [0, 0, 6, 8]                  # image narrower than 8: clipped
