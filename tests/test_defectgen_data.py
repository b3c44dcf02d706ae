"""Defect-Gen data: DefectSpectrumDataset (every layout, pairing by stem, the 5-per-class split,
MVTec AD 0/255 -> class index by folder, errors) and MixedDataset (ratio, determinism, class
check, config validation of its children, a short training through the engine)."""
from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from defectkit.config import ConfigError, load_config
from defectkit.data import DataFormatError
from defectkit.data.defect_spectrum import DefectSpectrumDataset
from defectkit.data.mixed import MixedDataset
from defectkit.engine import Trainer
from defectkit.registry import DATASETS

ROOT = Path(__file__).resolve().parents[1]
SIZE = 8


# ------------------------------------------------------------------------------ file helpers
def _img(path: Path, value: int = 100, size=(SIZE, SIZE)) -> None:
    """A grey RGB image whose red channel holds ``value`` (identifies the image)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3), 60, np.uint8)
    arr[..., 0] = value
    Image.fromarray(arr).save(path)


def _mask(path: Path, counts: dict[int, int] | None = None, size=(SIZE, SIZE), scale: int = 1) -> None:
    """An L-mode mask: ``counts[v]`` pixels of value ``v * scale`` written row-major from the top."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = np.zeros(size[0] * size[1], np.uint8)
    pos = 0
    for v, n in (counts or {}).items():
        flat[pos:pos + n] = v * scale
        pos += n
    Image.fromarray(flat.reshape(size[1], size[0])).save(path)


def _colour(path: Path) -> None:
    """A colour mask that the mask decoder refuses: it must never be read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((SIZE, SIZE, 3), np.uint8)
    arr[0, 0] = (255, 0, 0)
    Image.fromarray(arr).save(path)


def _ds(**kw) -> DefectSpectrumDataset:
    return DATASETS.build({"type": "DefectSpectrumDataset", **kw})


def _ds_mvtec(root: Path, per_defect: dict[str, int], rbg: str = "rbg_mask") -> Path:
    """root/bottle/{image,mask,<rbg>}/<defect>/NNN[_mask].png; mask pixels = the defect's class id
    (defect k of per_defect is class k + 1), 1 + index pixels each; plus a good/ folder."""
    obj = root / "bottle"
    for k, (defect, n) in enumerate(per_defect.items()):
        for i in range(n):
            _img(obj / "image" / defect / f"{i:03d}.png", value=10 * k + i)
            _mask(obj / "mask" / defect / f"{i:03d}_mask.png", {k + 1: 1 + i})
            _colour(obj / rbg / defect / f"{i:03d}_{rbg}.png")
    _img(obj / "image" / "good" / "000.png")
    return obj


# ------------------------------------------------------------------------------- layouts
@pytest.mark.parametrize("rbg", ["rbg_mask", "rgb_mask"])
def test_ds_mvtec_layout(tmp_path, rbg):
    _ds_mvtec(tmp_path, {"broken_large": 2, "contamination": 3}, rbg=rbg)
    ds = _ds(root=str(tmp_path), category="bottle", classes=["broken_large", "broken_small", "contamination"])
    assert ds.layout_read == "ds_mvtec" and ds.defect_types == ["broken_large", "contamination"]
    assert len(ds) == 5                                                   # good/ skipped, rbg ignored
    assert [r.id for r in ds.records] == ["broken_large/000", "broken_large/001", "contamination/000",
                                          "contamination/001", "contamination/002"]
    s = ds[3]
    assert s["image"].dtype == torch.float32 and s["image"].shape == (3, SIZE, SIZE)
    assert 0.0 <= float(s["image"].min()) and float(s["image"].max()) <= 1.0
    assert abs(float(s["image"][0, 0, 0]) - 11 / 255) < 1e-6              # contamination/001
    assert s["mask"].dtype == torch.int64 and s["mask"].shape == (SIZE, SIZE)
    # the mask holds the class index as stored (contamination = class 2 of the file)
    assert torch.bincount(s["mask"].flatten(), minlength=4).tolist() == [SIZE * SIZE - 2, 0, 2, 0]
    assert s["is_defective"] == 1
    assert s["meta"]["defect_type"] == "contamination" and s["meta"]["mask_path"].endswith("001_mask.png")


def test_ds_flat_cotton_layout(tmp_path):
    names = ["00960_0001_Slubs", "00987_0047_Thick-Place", "01000_0002_Slubs"]
    for i, n in enumerate(names):
        _img(tmp_path / "image" / f"{n}.jpg", value=50 + i)
        _mask(tmp_path / "mask" / f"{n}_mask.png", {1 + i % 2: 4})
        _colour(tmp_path / "rbg_mask" / f"{n}_rbg_mask.png")
    ds = _ds(root=str(tmp_path), classes=["texture", "bubble"])
    assert ds.layout_read == "ds_flat" and ds.defect_types == []
    assert [r.id for r in ds.records] == names
    s = ds[1]
    assert int(s["mask"].max()) == 2 and s["meta"]["defect_type"] is None and s["meta"]["group"] == "bubble"


def test_synthetic_layout_reads_masks_converted_dir(tmp_path):
    obj = tmp_path / "synthetic_MVTec" / "bottle"
    for i in range(3):
        _img(obj / "images" / f"{i}.png", value=i)
        _colour(obj / "masks" / f"{i}.png")                               # colour masks: ignored
        _mask(obj / "masks_converted_dir" / f"{i}.png", {3: 2 + i})
    ds = _ds(root=str(tmp_path / "synthetic_MVTec"), category="bottle",
             classes=["broken_large", "broken_small", "contamination"])
    assert ds.layout_read == "synthetic" and len(ds) == 3
    assert int(ds[2]["mask"].eq(3).sum()) == 4
    # tools/generate.py style names <stem>_image.png / <stem>_mask.png pair too
    gen = tmp_path / "gen"
    _img(gen / "images" / "000_image.png")
    _mask(gen / "masks_converted_dir" / "000_mask.png", {1: 3})
    g = _ds(root=str(gen), classes=["hole"], layout="synthetic")
    assert [r.id for r in g.records] == ["000_image"] and int(g[0]["mask"].sum()) == 3


def test_original_loader_layout(tmp_path):
    for d, k in (("crack", 1), ("poke", 2)):
        for i in range(2):
            _img(tmp_path / "test" / d / f"{i:03d}.png")
            _mask(tmp_path / "converted_ground_truth" / d / f"{i:03d}.png", {k: 5})
    _img(tmp_path / "test" / "good" / "000.png")
    ds = _ds(root=str(tmp_path), classes=["crack", "poke"])
    assert ds.layout_read == "original" and len(ds) == 4
    assert ds[2]["meta"]["defect_type"] == "poke" and int(ds[2]["mask"].max()) == 2


def test_mvtec_ad_masks_become_class_index_by_folder(tmp_path):
    cat = tmp_path / "bottle"
    for d in ("broken_large", "contamination"):
        _img(cat / "test" / d / "000.png")
        _mask(cat / "ground_truth" / d / "000_mask.png", {1: 6}, scale=255)   # 0/255
    _img(cat / "test" / "good" / "000.png")
    _img(cat / "train" / "good" / "000.png")
    classes = ["broken_large", "broken_small", "contamination"]
    ds = _ds(root=str(tmp_path), category="bottle", classes=classes, layout="mvtec_ad")
    assert ds.layout_read == "mvtec_ad" and len(ds) == 2
    by_type = {ds[i]["meta"]["defect_type"]: ds[i]["mask"] for i in range(2)}
    assert sorted(by_type["broken_large"].unique().tolist()) == [0, 1]
    assert sorted(by_type["contamination"].unique().tolist()) == [0, 3]       # index in classes + 1
    assert int(by_type["contamination"].eq(3).sum()) == 6
    # a defect folder that is not a class: the error names it; skip_folders leaves it out
    with pytest.raises(DataFormatError, match=r"defect folder 'contamination' is not in classes"):
        _ds(root=str(tmp_path), category="bottle", classes=["broken_large"], layout="mvtec_ad")
    assert len(_ds(root=str(tmp_path), category="bottle", classes=["broken_large"],
                   skip_folders=["contamination"])) == 1


def test_layout_option_is_validated(tmp_path):
    _ds_mvtec(tmp_path, {"a": 1})
    with pytest.raises(DataFormatError) as e:
        _ds(root=str(tmp_path), category="bottle", classes=["a"], layout="ds_mvtc")
    msg = str(e.value)
    assert "\n" not in msg and "'ds_mvtc'" in msg
    for choice in ("auto", "ds_mvtec", "ds_flat", "synthetic", "original", "mvtec_ad"):
        assert choice in msg
    with pytest.raises(DataFormatError, match=r"layout auto: no known layout.*sub-folders found: \['bottle'\]"):
        _ds(root=str(tmp_path), classes=["a"])                          # root without the category
    with pytest.raises(DataFormatError, match=r"category: .*cable not found .*\['bottle'\]"):
        _ds(root=str(tmp_path), category="cable", classes=["a"])
    with pytest.raises(DataFormatError, match="split: 'test' is not one of train, val, all"):
        _ds(root=str(tmp_path), category="bottle", classes=["a"], split="test")


# ------------------------------------------------------------------------------- pairing
def test_pairing_is_by_stem_even_when_sort_orders_differ(tmp_path):
    # sorted images: 1, 10, 2; sorted masks: 10_mask, 1_mask, 2_mask ('0' < '_'): index pairing
    # (the original loader's) would give image 1 the mask of 10
    stems = {"1": 1, "10": 10, "2": 2}
    for stem, n in stems.items():
        _img(tmp_path / "image" / f"{stem}.png", value=n)
        _mask(tmp_path / "mask" / f"{stem}_mask.png", {1: n})
    assert sorted(p.name for p in (tmp_path / "mask").iterdir())[:2] == ["10_mask.png", "1_mask.png"]
    ds = _ds(root=str(tmp_path), classes=["x"])
    for i in range(len(ds)):
        s = ds[i]
        n = round(float(s["image"][0, 0, 0]) * 255)                   # which image this is
        assert int(s["mask"].sum()) == n, (s["meta"]["path"], s["meta"]["mask_path"])
        assert Path(s["meta"]["mask_path"]).stem == f"{Path(s['meta']['path']).stem}_mask"


def test_unpaired_files_are_errors_naming_them(tmp_path, caplog):
    obj = _ds_mvtec(tmp_path, {"crack": 2})
    _img(obj / "image" / "crack" / "007.png")                          # no mask
    with pytest.raises(DataFormatError, match=r"crack/007\.png: no mask for this image"):
        _ds(root=str(tmp_path), category="bottle", classes=["crack"])
    (obj / "image" / "crack" / "007.png").unlink()
    _mask(obj / "mask" / "crack" / "009_mask.png", {1: 1})             # no image
    with pytest.raises(DataFormatError, match=r"crack/009_mask\.png: mask without an image"):
        _ds(root=str(tmp_path), category="bottle", classes=["crack"])
    # skip_invalid: dropped with one warning, the paired ones kept
    with caplog.at_level(logging.WARNING, logger="defectkit"):
        ds = _ds(root=str(tmp_path), category="bottle", classes=["crack"], skip_invalid=True)
    assert len(ds) == 2 and "009_mask.png" in caplog.text


def test_mask_value_above_k_is_an_error_naming_file_and_value(tmp_path):
    _img(tmp_path / "image" / "a.png")
    _mask(tmp_path / "mask" / "a_mask.png", {3: 2})
    with pytest.raises(DataFormatError, match=r"a_mask\.png: mask value 3 is outside 0\.\.2"):
        _ds(root=str(tmp_path), classes=["texture", "bubble"])


def test_mask_size_must_match_image(tmp_path):
    _img(tmp_path / "image" / "a.png")
    _mask(tmp_path / "mask" / "a_mask.png", {1: 2}, size=(SIZE + 1, SIZE))
    with pytest.raises(DataFormatError, match=r"a_mask\.png: mask is 9x8 but its image .*a\.png is 8x8"):
        _ds(root=str(tmp_path), classes=["texture"])


# --------------------------------------------------------------------------------- split
def test_five_per_class_split_by_defect_folder(tmp_path):
    _ds_mvtec(tmp_path, {"broken_large": 7, "contamination": 3})
    kw = dict(root=str(tmp_path), category="bottle", classes=["broken_large", "contamination"])
    train, val, full = (_ds(split=s, **kw) for s in ("train", "val", "all"))
    assert [r.id for r in train.records] == [f"broken_large/{i:03d}" for i in range(5)] + \
        [f"contamination/{i:03d}" for i in range(3)]
    assert [r.id for r in val.records] == ["broken_large/005", "broken_large/006"]
    assert len(full) == 10 and {r.meta["split"] for r in val.records} == {"val"}
    two = _ds(split="train", num_train_per_class=2, **kw)
    assert Counter(r.meta["defect_type"] for r in two.records) == {"broken_large": 2, "contamination": 2}
    with pytest.raises(DataFormatError, match="num_train_per_class: must be an integer >= 1"):
        _ds(split="train", num_train_per_class=0, **kw)


def test_split_groups_flat_layouts_by_dominant_mask_class(tmp_path):
    # class of an image = the class with most pixels; stems sorted before taking the first N
    plan = {"a0": {1: 5, 2: 1}, "a1": {2: 6, 1: 1}, "a2": {1: 3}, "a3": {1: 4, 2: 4},   # tie -> class 1
            "b0": {2: 2}, "c0": {}}
    for stem, counts in plan.items():
        _img(tmp_path / "images" / f"{stem}.png")
        _mask(tmp_path / "masks_converted_dir" / f"{stem}.png", counts)
    kw = dict(root=str(tmp_path), classes=["texture", "bubble"], num_train_per_class=2)
    full = _ds(**kw)
    assert {r.id: r.meta["group"] for r in full.records} == {
        "a0": "texture", "a1": "bubble", "a2": "texture", "a3": "texture", "b0": "bubble",
        "c0": "(no defect)"}
    assert [r.id for r in _ds(split="train", **kw).records] == ["a0", "a1", "a2", "b0", "c0"]
    assert [r.id for r in _ds(split="val", **kw).records] == ["a3"]
    assert {r.id: r.is_defective for r in full.records}["c0"] == 0


def test_class_table_and_per_object_configs_agree():
    base = ROOT / "configs/_base_/datasets"
    table = yaml.safe_load((base / "defect_spectrum_classes.yaml").read_text())
    assert len(table["DS-MVTec"]) == 15 and len(table["DS-VISION"]) == 6
    assert table["DS-MVTec"]["bottle"] == ["broken_large", "broken_small", "contamination"]
    assert table["DS-Cotton-Fabric"]["all"] == ["texture", "bubble"]
    checked = 0
    for subset, key in (("mvtec", "DS-MVTec"), ("vision", "DS-VISION")):
        for obj, classes in table[key].items():
            cfg = load_config(base / f"defect_spectrum_{subset}_{obj.lower()}.yaml")
            for split, want in (("train", "train"), ("val", "val"), ("test", "val")):
                d = cfg["data"][split]
                assert d["type"] == "DefectSpectrumDataset" and d["category"] == obj, (obj, split)
                assert d["classes"] == classes and d["split"] == want, (obj, split)
                checked += 1
    for subset, key in (("dagm", "DS-DAGM"), ("cotton", "DS-Cotton-Fabric")):
        cfg = load_config(base / f"defect_spectrum_{subset}.yaml")
        assert cfg["data"]["train"]["classes"] == table[key]["all"]
        checked += 1
    assert checked == 21 * 3 + 2


# --------------------------------------------------------------------------------- mixed
def _mask_folder(root: Path, n: int, classes=("hole", "stain"), value: int = 0, size=SIZE) -> dict:
    for i in range(n):
        _img(root / "images" / f"{i:03d}.png", value=value + i, size=(size, size))
        _mask(root / "masks" / f"{i:03d}.png", {1 + i % len(classes): 4}, size=(size, size))
    return {"type": "MaskFolderDataset", "img_dir": str(root / "images"), "mask_dir": str(root / "masks"),
            "classes": list(classes)}


def _sources(ds) -> Counter:
    return Counter(ds[i]["meta"]["source"] for i in range(len(ds)))


def test_mixed_dataset_honours_the_ratio(tmp_path):
    real, gen = _mask_folder(tmp_path / "real", 4), _mask_folder(tmp_path / "gen", 10, value=100)
    for ratio, n_gen in ((0, 0), (0.2, 1), (0.5, 2), (1.0, 4), (2, 8), (0.375, 2)):   # 1.5 rounds up
        ds = MixedDataset(datasets=[real, gen], ratio=ratio, seed=0)
        assert len(ds) == 4 + n_gen and ds.counts() == {"real": 4, "generated": n_gen}
        assert _sources(ds) == Counter({"real": 4, "generated": n_gen}) - Counter()
    # ratio 0: the real set alone, in order
    only = MixedDataset(datasets=[real, gen], ratio=0)
    assert [only[i]["meta"]["path"] for i in range(4)] == [r.img_path for r in DATASETS.build(real).records]
    # without replacement while it lasts: 8 of 10 generated images are all different
    ds = MixedDataset(datasets=[real, gen], ratio=2, seed=3)
    picked = [ds[i]["meta"]["source_index"] for i in range(4, 12)]
    assert len(set(picked)) == 8
    # then cycling: 3 x 4 = 12 > 10 -> every generated image once, two of them twice
    ds = MixedDataset(datasets=[real, gen], ratio=3, seed=3)
    uses = Counter(ds[i]["meta"]["source_index"] for i in range(4, 16))
    assert set(uses) == set(range(10)) and sorted(uses.values()) == [1] * 8 + [2] * 2
    assert len({r.id for r in ds.records}) == len(ds)                 # ids stay unique
    with pytest.raises(ValueError, match="ratio: must be a finite number >= 0"):
        MixedDataset(datasets=[real, gen], ratio=-1)


def test_mixed_dataset_draw_is_deterministic_per_seed(tmp_path):
    real, gen = _mask_folder(tmp_path / "real", 3), _mask_folder(tmp_path / "gen", 12, value=100)

    def draw(seed):
        return MixedDataset(datasets=[real, gen], ratio=2, seed=seed).generated_order.tolist()

    assert draw(0) == draw(0) and draw(1) == draw(1)
    assert draw(0) != draw(1)
    ds = MixedDataset(datasets=[real, gen], ratio=2, seed=0)
    first = ds.generated_order.tolist()
    ds.set_epoch(3)
    assert ds.generated_order.tolist() == first                         # fixed by default
    rs = MixedDataset(datasets=[real, gen], ratio=2, seed=0, resample_per_epoch=True)
    orders = []
    for epoch in (0, 1, 0):
        rs.set_epoch(epoch)
        orders.append(rs.generated_order.tolist())
    assert orders[0] != orders[1] and orders[0] == orders[2]


def test_mixed_dataset_sample_meta_and_forwarded_attributes(tmp_path):
    real, gen = _mask_folder(tmp_path / "real", 2), _mask_folder(tmp_path / "gen", 2, value=100)
    ds = MixedDataset(datasets=[real, gen], ratio=1, seed=0)
    s = ds[3]
    assert s["meta"]["source"] == "generated" and s["meta"]["id"].startswith("generated/")
    assert s["mask"].dtype == torch.int64 and ds[0]["meta"]["source"] == "real"
    assert ds.classes == ["hole", "stain"] and ds.category_ids is None and ds.skipped_at_read == []
    assert ds.with_mask and not ds.with_boxes
    rec = ds.records[3]
    assert rec.id == s["meta"]["id"] and rec.img_path == s["meta"]["path"]
    assert torch.equal(torch.from_numpy(ds.load_mask(rec, SIZE, SIZE)), s["mask"])
    assert ds.load_sample(3)["meta"]["source"] == "generated"
    flip = MixedDataset(datasets=[real, gen], ratio=1, exif_orientation=False)
    assert flip.real.exif_orientation is False and flip.generated.exif_orientation is False
    assert ds.real.exif_orientation is True


def test_mixed_dataset_classes_must_match(tmp_path):
    real = _mask_folder(tmp_path / "real", 2)
    gen = _mask_folder(tmp_path / "gen", 2, classes=("stain", "hole"))
    # ConfigErrors: tools/train.py builds the dataset outside the model's ValueError -> ConfigError
    # wrapping, and prints one `config error:` line for them instead of a traceback
    with pytest.raises(ConfigError, match=r"different classes: real \['hole', 'stain'\] vs generated "
                                          r"\['stain', 'hole'\]"):
        MixedDataset(datasets=[real, gen])
    with pytest.raises(ConfigError, match=r"datasets: expected \[real, generated\]"):
        MixedDataset(datasets=[real])
    with pytest.raises(ConfigError, match=r"ratio: must be a finite number >= 0, got -1"):
        MixedDataset(datasets=[real, real], ratio=-1)


def test_mixed_dataset_children_are_validated_by_config(tmp_path):
    real, gen = _mask_folder(tmp_path / "real", 2), _mask_folder(tmp_path / "gen", 2)
    gen["mask_suffx"] = ""
    cfg = {"data": {"train": {"type": "MixedDataset", "ratio": 1.0, "datasets": [real, gen]}}}
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"data\.train\.datasets\.1\.mask_suffx: unknown key"):
        load_config(path)
    gen.pop("mask_suffx")
    gen["pipeline"] = [{"type": "Resise"}]
    path.write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"data\.train\.datasets\.1\.pipeline\.0\.type"):
        load_config(path)


def _train(cfg: dict, work_dir: Path):
    t = Trainer(cfg, work_dir=work_dir)
    try:
        return t, t.train()
    finally:
        t.close()


def test_mixed_dataset_in_a_segmentation_training(tmp_path):
    real = _mask_folder(tmp_path / "real", 4, size=16)
    gen = _mask_folder(tmp_path / "gen", 6, value=100, size=16)
    mixed = {"type": "MixedDataset", "datasets": [real, gen], "ratio": 0.5, "seed": 1}
    cfg = {"model": {"type": "ZNet", "widths": [8, 16, 32, 64]},
           "data": {"train": mixed, "val": mixed, "batch_size": 2, "num_workers": 0},
           "optimizer": {"type": "Adam", "lr": 1e-3},
           "train": {"max_iters": 2, "val_interval": 2, "checkpoint_interval": 2, "log_interval": 1,
                     "progress": False, "max_keep_ckpts": 0},
           "evaluation": {"type": "SegmentationEvaluator", "resolution": "original"},
           "seed": 0, "device": "cpu"}
    path = tmp_path / "seg.yaml"
    path.write_text(json.dumps(cfg))
    t, r = _train(load_config(path), tmp_path / "work")
    assert len(t.train_set) == 6 and t.classes == ["hole", "stain"]
    assert r.iter == 2 and all(np.isfinite(h["loss"]) for h in r.history)
    # the evaluator read the ground truth of every mixed record (real and generated) at native size
    assert r.metrics["num_images"] == 6 and 0.0 <= r.metrics["mIoU"] <= 1.0


def test_mixed_dataset_in_a_classification_training(tmp_path):
    def folder(root: Path, n: int, value: int):
        for cls in ("good", "defect"):
            for i in range(n):
                _img(root / cls / f"{i}.png", value=value + i)
        return {"type": "ImageFolderDataset", "root": str(root), "classes": ["good", "defect"],
                "normal_class": "good"}
    mixed = {"type": "MixedDataset", "datasets": [folder(tmp_path / "r", 2, 0), folder(tmp_path / "g", 3, 50)],
             "ratio": 1.0}
    cfg = {"model": {"type": "ImageClassifier", "backbone": "small_cnn", "pretrained": None, "pool": "max"},
           "data": {"train": mixed, "batch_size": 4, "num_workers": 0},
           "optimizer": {"type": "Adam", "lr": 1e-3},
           "train": {"max_iters": 2, "val_interval": 0, "checkpoint_interval": 2, "log_interval": 1,
                     "progress": False, "max_keep_ckpts": 0},
           "seed": 0, "device": "cpu"}
    t, r = _train(cfg, tmp_path / "work")
    assert len(t.train_set) == 8 and _sources(t.train_set) == {"real": 4, "generated": 4}
    assert r.iter == 2


def test_mixed_dataset_of_detection_sets_keeps_ids_apart(tmp_path):
    def coco(root: Path, n: int):
        images, anns = [], []
        for i in range(n):
            _img(root / f"{i}.png")
            images.append({"id": i + 1, "file_name": f"{i}.png", "width": SIZE, "height": SIZE})
            anns.append({"id": i + 1, "image_id": i + 1, "category_id": 3, "bbox": [1, 1, 3, 3], "iscrowd": 0})
        (root / "ann.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                   "categories": [{"id": 3, "name": "hole"}]}))
        return {"type": "CocoDataset", "ann_file": str(root / "ann.json"), "img_dir": str(root)}
    ds = MixedDataset(datasets=[coco(tmp_path / "r", 2), coco(tmp_path / "g", 2)], ratio=1.0)
    assert ds.with_boxes and ds.category_ids == [3]
    ids = [r.id for r in ds.records]
    assert len(set(ids)) == 4 and ids[:2] == ["real/1", "real/2"]
    s = ds[2]
    assert s["boxes"].shape == (1, 4) and s["labels"].tolist() == [0] and s["meta"]["id"] in ids
