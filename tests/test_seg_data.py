"""BSData / LabelMe for segmentation: a known polygon's mask, label -> class id, unannotated
images, and reproducible random / wear-sequence splits."""
import json

import numpy as np
import pytest
from PIL import Image

from defectkit.data.datasets import LabelMeDataset
from defectkit.data.formats import DataFormatError
from defectkit.data.formats.labelme import random_split, read_labelme


def write_labelme(root, stem, shapes, w=10, h=8):
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "label").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (90, 90, 90)).save(root / "data" / f"{stem}.jpg")
    if shapes is not None:
        (root / "label" / f"{stem}.json").write_text(json.dumps({
            "version": "4.5.6", "flags": {}, "imagePath": f"{stem}.jpg", "imageData": None,
            "imageHeight": h, "imageWidth": w,
            "shapes": [{"label": lab, "points": pts, "group_id": None, "shape_type": "polygon",
                        "flags": {}} for lab, pts in shapes]}))


def test_polygon_mask_and_class_ids(tmp_path):
    # a right triangle (1,1) (5,1) (1,5): LabelMe's PIL rule fills x >= 1, y >= 1, x + y <= 6
    tri = [[1, 1], [5, 1], [1, 5]]
    write_labelme(tmp_path, "a", [("Pitting", tri), ("Scratch", [[7, 5], [9, 5], [9, 7], [7, 7]])])
    write_labelme(tmp_path, "b", None)                              # image without JSON
    ds = LabelMeDataset(ann_dir=str(tmp_path / "label"), img_dir=str(tmp_path / "data"))
    assert ds.classes == ["Pitting", "Scratch"] and len(ds) == 1   # sorted names; b is unlabelled
    expected = np.zeros((8, 10), np.int64)
    for y in range(8):
        for x in range(10):
            if x >= 1 and y >= 1 and x + y <= 6:
                expected[y, x] = 1
    expected[5:8, 7:10] = 2                                         # the square, borders included
    np.testing.assert_array_equal(ds[0]["mask"].numpy(), expected)
    assert ds[0]["is_defective"] == 1
    # classes from the config set the ids
    ds2 = LabelMeDataset(ann_dir=str(tmp_path / "label"), img_dir=str(tmp_path / "data"),
                         classes=["Scratch", "Pitting"])
    np.testing.assert_array_equal(ds2[0]["mask"].numpy(), np.choose(expected, [0, 2, 1]))
    # unlabeled: normal keeps b as a clean image with an empty mask
    ds3 = LabelMeDataset(ann_dir=str(tmp_path / "label"), img_dir=str(tmp_path / "data"), unlabeled="normal")
    assert len(ds3) == 2 and not ds3[1]["mask"].any() and ds3[1]["is_defective"] == 0


def test_random_split_is_reproducible(tmp_path):
    stems = [f"img{i:02d}" for i in range(23)]
    a, b = random_split(stems, 0.2, 7), random_split(list(reversed(stems)), 0.2, 7)
    assert a == b                                                   # input order does not matter
    assert len(a["test"]) == 23 // 5 and a["test"].isdisjoint(a["train"])
    assert a["test"] | a["train"] == set(stems)
    assert random_split(stems, 0.2, 8)["test"] != a["test"]
    for s in stems[:10]:
        write_labelme(tmp_path, s, [("Pitting", [[1, 1], [4, 1], [4, 4]])])
    kw = dict(ann_dir=tmp_path / "label", img_dir=tmp_path / "data", split_mode="random")
    test = {r.id for r in read_labelme(split="test", **kw)[0]}
    train = {r.id for r in read_labelme(split="train", **kw)[0]}
    assert len(test) == 2 and test | train == set(stems[:10]) and not test & train
    assert test == random_split(stems[:10], 0.2, 7)["test"]
    with pytest.raises(DataFormatError, match="split: must be 'train' or 'test'"):
        read_labelme(split="val", **kw)


def test_wear_dev_split_keeps_sequences_apart(tmp_path):
    seqs = {"s0": [1], "s1": [1], "s2": [2], "s3": [2], "s4": [3], "s5": [3], "s6": [1, 2], "s7": []}
    images = []
    for stem, wd in seqs.items():
        write_labelme(tmp_path, stem, [("Pitting", [[1, 1], [4, 1], [4, 4]])])
        images.append({"filename": f"{stem}.jpg", "wear_dev": wd, "type": 2, "annotations": f"{stem}.json",
                       "train_test_split": "test" if stem == "s7" else "train"})
    (tmp_path / "image_data.json").write_text(json.dumps({"images": images}))
    kw = dict(ann_dir=tmp_path / "label", img_dir=tmp_path / "data", split_mode="wear_dev",
              split_file=tmp_path / "image_data.json", test_fraction=0.34, split_seed=0)
    test = {r.id for r in read_labelme(split="test", **kw)[0]}
    train = {r.id for r in read_labelme(split="train", **kw)[0]}
    assert test == {r.id for r in read_labelme(split="test", **kw)[0]}     # reproducible
    assert not test & train and "s7" in test                         # no sequence: official split
    side = {stem: ("test" if stem in test else "train" if stem in train else None) for stem in seqs}
    for seq in (1, 2, 3):
        members = {side[s] for s, wd in seqs.items() if wd == [seq]}
        assert len(members) == 1                                      # a sequence is on one side
    seq_side = {seq: side[f"s{2 * (seq - 1)}"] for seq in (1, 2, 3)}
    assert list(seq_side.values()).count("test") == 1                 # round(0.34 * 3) = 1 sequence
    if seq_side[1] != seq_side[2]:
        assert side["s6"] is None                                     # straddles both sides: dropped
    with pytest.raises(DataFormatError, match="image_data.json"):
        read_labelme(tmp_path / "label", split="test", split_mode="wear_dev")
