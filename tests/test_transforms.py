"""defectkit.data.transforms: sizes, alignment of boxes and masks, pass-through fields."""
from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from defectkit.data.transforms import (Pad, RandomCrop, RandomFlip, Resize, SanitizeBoundingBoxes,
                                       build_pipeline)
from defectkit.registry import TRANSFORMS


def make_sample(h=60, w=100, boxes=((10, 20, 40, 35), (60, 5, 90, 50))):
    mask = torch.zeros(h, w, dtype=torch.int64)
    for k, (x1, y1, x2, y2) in enumerate(boxes):
        mask[y1:y2, x1:x2] = k + 1
    return {
        "image": tv_tensors.Image(torch.rand(3, h, w)),
        "boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                          format="XYXY", canvas_size=(h, w)),
        "labels": torch.arange(len(boxes), dtype=torch.int64),
        "mask": tv_tensors.Mask(mask),
        "is_defective": 1,
        "label": 3,
        "meta": {"path": "x.png", "id": 7, "orig_size": (h, w), "difficult": [False, True]},
    }


def mask_extent(mask, value):
    ys, xs = torch.nonzero(mask == value, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


def test_resize_keep_ratio_mmdet_semantics():
    # boxes alone carry the canvas size: no need to allocate a 2446x1000 image
    s = {"boxes": tv_tensors.BoundingBoxes(torch.tensor([[0, 0, 2446, 1000.]]), format="XYXY",
                                           canvas_size=(1000, 2446))}
    out = Resize(scale=(1333, 800), keep_ratio=True)(s)
    assert out["boxes"].canvas_size == (545, 1333)
    assert Resize(scale=(1333, 800)).target_size(1000, 2446) == (545, 1333)
    assert Resize(scale=(1333, 800)).target_size(492, 658) == (800, 1070)
    assert Resize(scale=(224, 224), keep_ratio=False).target_size(1000, 2446) == (224, 224)


def test_resize_pad_flip_keep_boxes_and_masks_aligned():
    pipe = build_pipeline([{"type": "Resize", "scale": [133, 80], "keep_ratio": True},
                           {"type": "Pad", "size_divisor": 32},
                           {"type": "RandomFlip", "prob": 1.0},
                           {"type": "RandomFlip", "prob": 1.0, "direction": "vertical"}])
    out = pipe(make_sample())
    assert out["image"].shape == (3, 96, 160) and out["mask"].shape == (96, 160)   # 80x133 -> pad
    assert out["mask"].dtype == torch.int64 and isinstance(out["mask"], tv_tensors.Mask)
    assert out["boxes"].canvas_size == (96, 160)
    for k in range(2):
        assert torch.allclose(mask_extent(out["mask"], k + 1), out["boxes"][k].as_subclass(torch.Tensor),
                              atol=1.0)
    assert out["mask"].unique().tolist() == [0, 1, 2]          # nearest: no new values
    # plain fields pass through; Resize/Pad record what they did
    assert out["labels"].tolist() == [0, 1] and out["is_defective"] == 1 and out["label"] == 3
    meta = out["meta"]
    assert meta["path"] == "x.png" and meta["id"] == 7 and meta["orig_size"] == (60, 100)
    assert meta["difficult"] == [False, True]
    assert meta["img_shape"] == (80, 133) and meta["pad_shape"] == (96, 160)
    assert meta["scale_factor"] == pytest.approx((1.33, 80 / 60))


def test_resize_exact_and_pad_to_size():
    out = Resize(scale=(32, 16), keep_ratio=False)(make_sample())
    assert out["image"].shape == (3, 16, 32)
    out = Pad(size=(40, 20), fill=0.5)(out)
    assert out["image"].shape == (3, 20, 40) and out["mask"].shape == (20, 40)
    assert torch.all(out["image"][:, 16:, :] == 0.5) and torch.all(out["mask"][16:, :] == 0)
    with pytest.raises(ValueError, match="larger than size"):
        Pad(size=(10, 10))(make_sample())
    with pytest.raises(ValueError, match="exactly one"):
        Pad()


def test_sanitize_after_crop_keeps_labels_aligned_and_mask_whole():
    # 2 boxes and a 2-row mask: the semantic mask must not be indexed by the box filter
    s = make_sample(h=60, w=100)
    crop = build_pipeline([{"type": "CenterCrop", "size": [40, 60]}])   # (w, h) = 40x60: x 30..70
    out = crop(s)
    assert out["image"].shape == (3, 60, 40)
    out = SanitizeBoundingBoxes()(out)
    assert len(out["boxes"]) == 2 and out["labels"].tolist() == [0, 1]   # both overlap the crop
    s2 = make_sample(h=2, w=100, boxes=((10, 0, 20, 2), (60, 0, 70, 2)))
    s2["boxes"] = tv_tensors.wrap(torch.tensor([[10, 0, 20, 2], [60, 0, 60, 2.]]), like=s2["boxes"])
    out = SanitizeBoundingBoxes()(s2)
    assert out["labels"].tolist() == [0] and out["mask"].shape == (2, 100)
    assert list(out) == list(s2)                                   # key order kept
    out = RandomCrop(size=(30, 20))(make_sample())
    out = SanitizeBoundingBoxes()(out)
    assert out["image"].shape == (3, 20, 30) and len(out["boxes"]) == len(out["labels"])
    empty = make_sample(boxes=((10, 20, 40, 35),))
    empty["boxes"] = tv_tensors.wrap(torch.tensor([[10, 20, 10, 35.]]), like=empty["boxes"])
    empty["mask"].zero_()
    out = SanitizeBoundingBoxes()(empty)
    assert len(out["boxes"]) == 0 and out["is_defective"] == 0


def test_normalize_and_colour_and_registry():
    s = make_sample()
    s["image"] = tv_tensors.Image(torch.full((3, 60, 100), 0.5))
    out = TRANSFORMS.build({"type": "Normalize", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]})(s)
    assert torch.allclose(out["image"], torch.zeros(3, 60, 100))
    out = TRANSFORMS.build({"type": "ColorJitter", "brightness": 0.2})(make_sample())
    assert out["image"].shape == (3, 60, 100)
    out = TRANSFORMS.build({"type": "RandomResizedCrop", "size": [32, 16]})(make_sample())
    assert out["image"].shape == (3, 16, 32) and out["mask"].shape == (16, 32)
    out = TRANSFORMS.build({"type": "Compose", "pipeline": [{"type": "ToGray"}]})(make_sample())
    assert torch.allclose(out["image"][0], out["image"][1])


def test_build_pipeline_errors_name_the_step():
    assert build_pipeline(None) is None and build_pipeline([]) is None
    with pytest.raises(TypeError, match=r"pipeline\[1\] \(Resize\)"):
        build_pipeline([{"type": "Normalize"}, {"type": "Resize", "kep_ratio": True}])
    with pytest.raises(KeyError, match=r"pipeline\[0\].*did you mean 'Resize'"):
        build_pipeline([{"type": "Resise"}])
    with pytest.raises(ValueError, match="direction"):
        RandomFlip(direction="diagonal")
