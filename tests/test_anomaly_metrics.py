"""Anomaly metrics (defectkit/evaluation/anomaly.py) against hand-computed values and sklearn."""
import math

import numpy as np
import pytest
import torch

from defectkit.evaluation.anomaly import (AnomalyEvaluator, aupro, auroc, clipped_auc, f1_max, f1_score,
                                          pro_curve)
from defectkit.structures import AnomalyResult


def test_auroc_hand_and_ties():
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([0.5, 0.5], [0, 1]) == pytest.approx(0.5)           # a tie counts 1/2
    assert auroc([1, 2, 3], [0, 1, 1]) == 1.0
    assert auroc([3, 2, 1], [0, 1, 1]) == 0.0
    assert math.isnan(auroc([1, 2], [0, 0]))


def test_auroc_equals_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.integers(0, 2, 500)
        s = np.round(rng.normal(size=500) + y, 1)                      # many ties
        assert auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_f1_max_and_f1_hand():
    # t=0.9: P1 R.5 F.667; t=0.8: F.5; t=0.7: P2/3 R1 F.8; t=0.6: F.667
    f1, t = f1_max([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0])
    assert f1 == pytest.approx(0.8) and t == pytest.approx(0.7)
    assert f1_score([1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(0.5)
    assert f1_score([0, 0], [0, 0]) != f1_score([0, 0], [0, 0])      # NaN: nothing to score


def test_f1_max_equals_sklearn_pr_curve():
    from sklearn.metrics import precision_recall_curve

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    s = rng.normal(size=300) + y
    p, r, _ = precision_recall_curve(y, s)
    ref = np.max(2 * p * r / np.maximum(p + r, 1e-12))
    assert f1_max(s, y)[0] == pytest.approx(ref, abs=1e-12)


def test_pro_curve_and_aupro_hand():
    # one 1x7 image: region A = pixels 0-1 (size 2), region B = pixel 3, background 2,4,5,6
    m = np.array([[0.9, 0.5, 0.6, 0.8, 0.3, 0.2, 0.1]])
    g = np.array([[1, 1, 0, 1, 0, 0, 0]])
    fpr, pro = pro_curve([m], [g])
    # 0.9: PRO .25 | 0.8: .75 | 0.6: FPR .25 | 0.5: PRO 1 | then FPR .5, .75, 1
    np.testing.assert_allclose(fpr, [0, 0, 0, 0.25, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(pro, [0, 0.25, 0.75, 0.75, 1.0, 1.0, 1.0, 1.0])
    # area to 0.3: 0.25 * 0.75 + 0.05 * 1.0 = 0.2375, normalised by 0.3
    assert aupro([m], [g], 0.3) == pytest.approx(0.2375 / 0.3)
    # a normal image adds to the global background: its 0.95 pixel is the first false positive
    m2, g2 = np.array([[0.95, 0.0]]), np.zeros((1, 2), int)
    # FPR 1/6 before any region pixel, then PRO .75 until FPR 2/6: area .75 * (0.3 - 1/6)
    assert aupro([m, m2], [g, g2], 0.3) == pytest.approx(0.75 * (0.3 - 1 / 6) / 0.3)


def test_regions_are_8_connected_and_per_image():
    # (0,0),(0,1),(1,1),(2,2): one 8-connected region of 4 pixels (4-connectivity: 3 regions)
    g = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1]])
    m = np.zeros((3, 3))
    m[0, 0] = 1.0
    fpr, pro = pro_curve([m], [g])
    assert pro[1] == pytest.approx(1 / 4)            # 4-connectivity would give (1/2) / 3
    fpr, pro = pro_curve([m, np.zeros((3, 3))], [g, g])
    assert pro[1] == pytest.approx(1 / 8)            # same mask in 2 images: 2 regions, one 1/4 covered


def test_clipped_auc_interpolates_at_the_limit():
    x, y = np.array([0.0, 0.2, 0.4]), np.array([0.0, 0.2, 0.6])
    # y(0.3) = 0.4; area = .5*.2*.2 + .1*(.2+.4)/2 = 0.02 + 0.03
    assert clipped_auc(x, y, 0.3) == pytest.approx(0.05)


def _result(score, m, pred=None, pmask=None):
    m = torch.as_tensor(m, dtype=torch.float32)
    return AnomalyResult(score=score, anomaly_map=m, pred_label=pred, pred_mask=pmask, raw_score=score, raw_map=m)


def test_evaluator_end_to_end_values():
    ev = AnomalyEvaluator(num_overlays=0)
    masks = torch.zeros(3, 2, 2, dtype=torch.int64)
    masks[1, 0, 0] = 1
    masks[2, 1, 1] = 1
    maps = [[[0.1, 0.2], [0.0, 0.3]], [[0.9, 0.1], [0.2, 0.1]], [[0.1, 0.0], [0.1, 0.25]]]
    results = [_result(float(np.max(mp)), mp, pred=int(np.max(mp) > 0.28),
                       pmask=torch.as_tensor(mp) > 0.28) for mp in maps]
    batch = {"image": torch.zeros(3, 3, 2, 2), "mask": masks, "is_defective": torch.tensor([0, 1, 1]),
             "meta": [{"defect_type": "good"}, {"defect_type": "a"}, {"defect_type": "b"}]}
    ev.process(batch, results)
    out = ev.compute()
    # image scores .3 (normal), .9, .25 -> AUROC 1/2
    assert out["image_auroc"] == pytest.approx(0.5)
    assert out["per_defect_type"]["a"]["image_auroc"] == 1.0
    assert out["per_defect_type"]["b"]["image_auroc"] == 0.0
    pix = np.array(maps).ravel()
    assert out["pixel_auroc"] == pytest.approx(auroc(pix, masks.numpy().ravel()))
    # pred labels [1, 1, 0] vs [0, 1, 1] -> F1 0.5
    assert out["image_f1"] == pytest.approx(0.5)
    assert "aupro" in out and 0 <= out["aupro"] <= 1
    assert "img AUROC" in ev.summary(out)
