"""Segmentation metrics against values computed by hand on two small masks.

    image A (2x4)            image B (2x4, one ignored pixel)
    gt   0 0 1 1             gt   0 0 0 0
         0 0 1 1                  0 0 0 255
    pred 0 1 1 1             pred 1 0 0 0
         0 0 0 1                  0 0 0 1     (the 1 under 255 does not count)

    confusion (rows gt, cols pred): A [[3,1],[1,3]]  B [[6,1],[0,0]]  sum [[9,2],[1,3]]
    background: I 9, P 10, L 11, U 12 -> IoU 0.75, Dice 18/21
    defect:     I 3, P 5,  L 4,  U 6  -> IoU 0.5,  Dice 6/9
    mIoU 0.625, aAcc 12/15 = 0.8
    znet_repo per image (I+1)/(U+1): A bg 4/6, def 4/6; B bg 7/8, def 1/2
      defect (4/6 + 1/2)/2 = 7/12, background (4/6 + 7/8)/2 = 37/48,
      mean ((4/6+4/6)/2 + (7/8+1/2)/2)/2 = 65/96
"""
import math

import numpy as np
import pytest
import torch

from defectkit.data.formats.common import Record
from defectkit.engine import build_evaluator
from defectkit.evaluation.segmentation import confusion_matrix, dataset_metrics
from defectkit.structures import SegmentationResult

GT = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1]], [[0, 0, 0, 0], [0, 0, 0, 255]]])
PRED = torch.tensor([[[0, 1, 1, 1], [0, 0, 0, 1]], [[1, 0, 0, 0], [0, 0, 0, 1]]])
EXPECTED = {"mIoU": 0.625, "defect_IoU": 0.5, "IoU.background": 0.75, "IoU.pitting": 0.5,
            "mDice": (18 / 21 + 6 / 9) / 2, "defect_Dice": 6 / 9, "aAcc": 0.8,
            "znet_defect_IoU": 7 / 12, "znet_bg_IoU": 37 / 48, "znet_mIoU": 65 / 96}


def check(metrics):
    for k, v in EXPECTED.items():
        assert metrics[k] == pytest.approx(v, abs=1e-9), k


def test_confusion_matrix_and_dataset_metrics():
    a = confusion_matrix(PRED[0], GT[0], 2)
    b = confusion_matrix(PRED[1], GT[1], 2)
    assert a.tolist() == [[3, 1], [1, 3]] and b.tolist() == [[6, 1], [0, 0]]
    d = dataset_metrics(a + b)
    assert d["mIoU"] == pytest.approx(0.625) and d["aAcc"] == pytest.approx(0.8)
    # a class absent from ground truth and prediction is NaN and left out of the mean
    d3 = dataset_metrics(np.pad(a + b, ((0, 1), (0, 1))))
    assert math.isnan(d3["iou"][2]) and d3["mIoU"] == pytest.approx(0.625)
    assert d3["defect_IoU"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="class index 2"):
        confusion_matrix(torch.tensor([2]), torch.tensor([0]), 2)


def test_evaluator_input_resolution():
    ev = build_evaluator({"type": "SegmentationEvaluator", "resolution": "input"}, ["pitting"])
    batch = {"mask": GT, "image_sizes": [(2, 4), (2, 4)],
             "meta": [{"id": 0, "orig_size": (4, 8)}, {"id": 1, "orig_size": (4, 8)}]}
    # predictions in original pixels (twice the size): resized back with nearest neighbour
    up = PRED.repeat_interleave(2, 1).repeat_interleave(2, 2)
    ev.process(batch, [SegmentationResult(mask=up[0]), SegmentationResult(mask=up[1])])
    m = ev.compute()
    check(m)
    assert ev.main_metric == "mIoU" and m["num_images"] == 2
    assert m["confusion_matrix"] == [[9, 2], [1, 3]]
    assert "mIoU 62.50" in ev.summary(m) and "defect 58.33" in ev.summary(m)


def test_pixel_confusion_matrix_in_metrics_summary_and_plot(tmp_path):
    """Where each class's pixels went: gt 0 -> [0, 1]; gt 1 (scratch) -> [1, 2]; gt 2 (crack)
    -> [2, 0, 0, 2], half of the crack taken for background."""
    ev = build_evaluator({"type": "SegmentationEvaluator", "resolution": "input"}, ["scratch", "crack"])
    gt = torch.tensor([[[0, 1, 1, 2], [0, 2, 2, 2]]])
    pred = torch.tensor([[[0, 1, 2, 2], [1, 0, 0, 2]]])
    ev.process({"mask": gt, "meta": [{"id": 0}]}, [SegmentationResult(mask=pred[0])])
    m = ev.compute()
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 1], [2, 0, 2]]
    lines = ev.summary(m).splitlines()
    crack = [line for line in lines if line.startswith("crack ")][-1]      # the confusion table's row
    assert crack.split() == ["crack", "50.0", "0.0", "50.0"]
    paths = ev.save_artifacts(m, str(tmp_path / "test"))
    assert paths == [str(tmp_path / "test" / "confusion_matrix.png")]
    assert (tmp_path / "test" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


class StubDataset:
    """Ground truth at native resolution, as a dataset re-reads it."""

    def __init__(self):
        self.records = [Record(img_path="a.png"), Record(img_path="b.png")]
        self.masks = {"a.png": GT[0].numpy(), "b.png": GT[1].numpy()}

    def load_mask(self, rec, h, w):
        m = self.masks[rec.img_path]
        assert m.shape == (h, w)
        return m


def test_evaluator_original_resolution_and_znet_protocol():
    ev = build_evaluator({"type": "SegmentationEvaluator", "protocol": "znet_repo"}, ["pitting"],
                         dataset=StubDataset())
    batch = {"mask": torch.zeros(2, 1, 1, dtype=torch.long),      # not used at 'original'
             "meta": [{"path": "b.png", "orig_size": (2, 4)}, {"path": "a.png", "orig_size": (2, 4)}]}
    ev.process(batch, [SegmentationResult(mask=PRED[1]), SegmentationResult(mask=PRED[0])])
    check(ev.compute())
    assert ev.main_metric == "znet_defect_IoU"
    with pytest.raises(ValueError, match="protocol"):
        build_evaluator({"type": "SegmentationEvaluator", "protocol": "voc"}, ["pitting"])
    no_ds = build_evaluator({"type": "SegmentationEvaluator"}, ["pitting"])
    with pytest.raises(RuntimeError, match="resolution: input"):
        no_ds.process(batch, [SegmentationResult(mask=PRED[1])])


def test_znet_protocol_counts_clean_images_as_perfect():
    """A model that predicts nothing scores 1.0 on defect-free images under the +1
    smoothing, so znet_repo is only meaningful on annotated (defective) images."""
    ev = build_evaluator({"type": "SegmentationEvaluator", "resolution": "input"}, ["pitting"])
    gt = torch.zeros(2, 4, 4, dtype=torch.long)
    gt[0, :2, :2] = 1
    ev.process({"mask": gt}, [SegmentationResult(mask=torch.zeros(4, 4, dtype=torch.long))] * 2)
    m = ev.compute()
    assert m["defect_IoU"] == 0.0
    assert m["znet_defect_IoU"] == pytest.approx((1 / 5 + 1.0) / 2)   # (0+1)/(4+1), (0+1)/(0+1)
