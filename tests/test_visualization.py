import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from defectkit.structures import ClassificationResult
from defectkit.visualization import (IMAGENET_MEAN, IMAGENET_STD, draw_banner, draw_boxes,
                                     draw_classification, draw_heatmap, draw_mask, draw_sample,
                                     make_grid, palette, plot_confusion_matrix, plot_pr_curve,
                                     plot_roc_curve, plot_scalars, read_scalars, to_pil)

PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG


def test_to_pil_denormalises():
    img = torch.full((3, 4, 5), 0.5)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    normed = (img - mean[:, None, None]) / std[:, None, None]
    out = np.asarray(to_pil(normed, IMAGENET_MEAN, IMAGENET_STD))
    assert out.shape == (4, 5, 3) and np.all(np.abs(out.astype(int) - 128) <= 1)
    # 0..255-scale mean/std (mmdet style) give the same picture
    out255 = np.asarray(to_pil(normed, [m * 255 for m in IMAGENET_MEAN], [s * 255 for s in IMAGENET_STD]))
    assert np.array_equal(out, out255)
    assert to_pil(torch.zeros(1, 4, 5, dtype=torch.uint8)).mode == "RGB"
    assert to_pil(np.zeros((4, 5, 3), np.uint8)).size == (5, 4)


def test_draw_boxes_masks_heatmap_banner():
    base = torch.zeros(3, 40, 60)
    img = draw_boxes(base, torch.tensor([[5.0, 5.0, 30.0, 30.0]]), torch.tensor([1]),
                     torch.tensor([0.9]), class_names=["hole", "stain"], width=2)
    a = np.asarray(img)
    assert a.shape == (40, 60, 3) and tuple(a[20, 5]) == palette(2)[1]   # left edge in label colour
    skipped = draw_boxes(base, [[5, 5, 30, 30]], [0], [0.1], score_thr=0.5)
    assert np.asarray(skipped).max() == 0

    mask = torch.zeros(40, 60, dtype=torch.long)
    mask[0:10, 0:10] = 2
    over = np.asarray(draw_mask(base, mask, alpha=1.0))
    assert tuple(over[5, 5]) == palette(2)[1] and over[30, 30].max() == 0

    hm = draw_heatmap(base, torch.rand(10, 15), alpha=0.5)
    assert hm.size == (60, 40)

    ban = draw_banner(base, "defective 0.97")
    assert ban.height > 40 and ban.width >= 60
    assert draw_banner(base, "x", position="inside").size == (60, 40)


def test_draw_classification_and_sample():
    res = ClassificationResult(label=1, scores=torch.tensor([0.2, 0.8]))
    wrong = np.asarray(draw_classification(torch.zeros(3, 20, 80), res, gt=0))
    assert tuple(wrong[1, 1]) == (210, 40, 40)   # red banner when the prediction is wrong
    sample = {
        "image": tv_tensors.Image(torch.rand(3, 32, 48)),
        "boxes": tv_tensors.BoundingBoxes([[2, 2, 20, 20]], format="XYXY", canvas_size=(32, 48)),
        "labels": torch.tensor([0]),
        "mask": tv_tensors.Mask(torch.zeros(32, 48, dtype=torch.int64)),
        "is_defective": 1,
        "meta": {"id": "a1", "path": "/x/a1.png"},
    }
    out = draw_sample(sample, classes=["hole"])
    assert isinstance(out, Image.Image) and out.width >= 48 and out.height > 32
    grid = make_grid([out, out, out], ncols=2)
    assert grid.width > 2 * 48 and grid.height > 2 * 32


def test_plots_write_pngs(tmp_path):
    y = [0, 0, 1, 1, 1]
    s = [0.1, 0.6, 0.4, 0.8, 0.9]
    paths = [
        plot_confusion_matrix([[3, 1], [2, 4]], ["normal", "defective"], tmp_path / "cm.png"),
        plot_roc_curve(y, s, tmp_path / "sub" / "roc.png"),
        plot_pr_curve(y, s, tmp_path / "pr.png"),
    ]
    for p in paths:
        assert is_png(p)


def test_scalars_jsonl_to_png(tmp_path):
    path = tmp_path / "scalars.jsonl"
    with open(path, "w") as f:
        for step in range(1, 21):
            f.write(json.dumps({"step": step, "mode": "train", "loss": 1 / step,
                                "loss_cls": 1 / step, "lr": 0.0025}) + "\n")
        for step in (10, 20):
            f.write(json.dumps({"step": step, "mode": "val", "f1_macro": step / 25,
                                "confusion_matrix": [[1, 0], [0, 1]]}) + "\n")
        f.write('{"step": 21, "mode": "tra')   # a run still writing: ignored
    recs = read_scalars(path)
    assert len(recs) == 22
    out = plot_scalars(path, tmp_path / "curves.png")
    assert is_png(out)
    only = plot_scalars(recs, tmp_path / "f1.png", keys=["f1_macro"])
    assert is_png(only)


@pytest.mark.parametrize("n", [1, 7])
def test_palette_distinct(n):
    cols = palette(n)
    assert len(set(cols)) == n
