"""Severity family models (issue 13): score formula, crops, verdict rules, DashNet, shallownet,
SeverityFasterRCNN / SeverityDetector training and prediction, SeverityResult outputs."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import defectkit.models  # noqa: F401  (registers every family)
from defectkit.models.backbones import BACKBONES, build_backbone
from defectkit.models.base import BaseModel
from defectkit.models.severity import (CropSpec, DashNet, SeverityDetector, SeverityResult, VerdictRules,
                                       adjust_boundary, column_strip_regions, compat_weights, crop_regions,
                                       default_weights, draw_severity, resolve_weights, severity_score)
from defectkit.engine.builders import build_model
from defectkit.registry import MODELS
from defectkit.structures import DetectionResult

GRADES = ["1", "2", "3", "4", "5"]


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one intra-op thread is as fast, and on a busy machine two
    spinning threads (conftest's setting) made the training test 10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
TYPES = ["dash_col", "blemish", "spot"]


# ----------------------------------------------------------------------- score formula
def test_severity_score_readme_example():
    # README: w = [0.2, 0.4, 0.6, 0.8, 1.0], p = [0, 0.02, 0.08, 0.85, 0.05] -> 0.786
    p = torch.tensor([0.0, 0.02, 0.08, 0.85, 0.05])
    w = torch.tensor([0.2, 0.4, 0.6, 0.8, 1.0])
    assert float(severity_score(p, w)) == pytest.approx(0.786, abs=1e-6)
    # batched: (K, G) -> (K,)
    assert severity_score(torch.stack([p, torch.eye(5)[4]]), w).tolist() == pytest.approx([0.786, 1.0])


def test_default_and_compat_weights():
    assert default_weights(5).tolist() == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    # the original's inference.py: score += scores[j] * 0.2 * j
    assert compat_weights(6).tolist() == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert resolve_weights(None, GRADES, "dash_col", compat=True).tolist() == pytest.approx([0, 0.2, 0.4, 0.6, 0.8])
    assert resolve_weights([0.2, 0.4, 0.6, 0.8, 1.0], GRADES, "x").tolist() == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])


def test_score_weights_length_is_validated():
    with pytest.raises(ValueError, match=r"model\.severity_heads\.dash_col\.score_weights: 3 weights .* 5 grades"):
        resolve_weights([0.1, 0.5, 1.0], GRADES, "dash_col")
    with pytest.raises(ValueError, match=r"model\.severity_heads\.blemish\.score_weights"):
        SeverityDetector(StubDetector(TYPES), GRADES, severity_heads={
            "blemish": {"crop": {"kind": "box"}, "classifier": FixedHead([0.2] * 5), "score_weights": [1, 2]}})


# ----------------------------------------------------------------------------- crops
def _column_image(h: int = 50, w: int = 100) -> torch.Tensor:
    """(1, 3, h, w) whose value at (y, x) is x (channel 0), x + 1000 (1), y (2)."""
    xs = torch.arange(w, dtype=torch.float32).expand(h, w)
    ys = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    return torch.stack([xs, xs + 1000, ys])[None]


@pytest.mark.parametrize("box, window", [
    ([40, 10, 50, 20], (36, 54)),     # centre int(45) - 9 .. + 9
    ([40, 10, 51, 20], (36, 54)),     # int(45.5) = 45
    ([2, 10, 6, 20], (0, 18)),        # left border: [-5, 13) shifted right by 5
    ([95, 10, 99, 20], (82, 100)),    # right border: [88, 106) shifted left by 6
    ([0, 0, 100, 50], (41, 59)),      # whole image: centre 50
])
def test_column_strip_geometry(box, window):
    img = _column_image()
    hw = torch.tensor([[50.0, 100.0]])
    reg = column_strip_regions(torch.tensor([box], dtype=torch.float32), hw, 18)
    assert reg.tolist() == [[window[0], 0.0, window[1], 50.0]]        # full height
    crop = crop_regions(img, reg, torch.zeros(1, dtype=torch.long), (50, 18))
    # every output column is exactly one source column (no blending), every row one row
    assert crop[0, 0, 0].tolist() == list(range(window[0], window[1]))
    assert crop[0, 2, :, 0].tolist() == list(range(50))


def test_column_strip_narrow_image_and_adjust_boundary():
    reg = column_strip_regions(torch.tensor([[3.0, 0, 5, 8]]), torch.tensor([[8.0, 10.0]]), 18)
    assert reg.tolist() == [[0.0, 0.0, 10.0, 8.0]]                    # wider than the image: all of it
    lo, hi = adjust_boundary(torch.tensor([-3.0, 5.0, 90.0]), torch.tensor([15.0, 23.0, 108.0]), torch.tensor(100.0))
    assert lo.tolist() == [0.0, 5.0, 82.0] and hi.tolist() == [18.0, 23.0, 100.0]


def test_column_strip_resized_to_out_size_and_gray():
    img = _column_image()
    spec = CropSpec.parse({"kind": "column_strip", "width": 18, "out_size": [100, 18], "gray": True}, "crop")
    crops, reg = spec.crop(img, torch.tensor([[40.0, 10, 50, 20]]), torch.zeros(1, dtype=torch.long),
                           torch.tensor([[50.0, 100.0]]))
    assert crops.shape == (1, 1, 100, 18)
    # gray = channel mean: (x + x + 1000 + y) / 3 at the sampled (y, x); columns stay exact
    x = torch.arange(36, 54, dtype=torch.float32)
    y_top = 0.0   # aligned bilinear at bin centre 0.25 - 0.5 < 0: clamped to row 0
    assert crops[0, 0, 0].tolist() == pytest.approx(((2 * x + 1000 + y_top) / 3).tolist(), abs=1e-4)


def test_box_crop_matches_a_hand_slice():
    torch.manual_seed(0)
    img = torch.rand(2, 3, 40, 60)
    idx = torch.tensor([1, 0])
    spec = CropSpec.parse({"kind": "box", "out_size": [20, 20]}, "crop")
    crops, reg = spec.crop(img, torch.tensor([[10.0, 5, 30, 25], [0.0, 0, 20, 20]]), idx,
                           torch.tensor([[40.0, 60.0], [40.0, 60.0]]))
    assert torch.allclose(crops[0], img[1, :, 5:25, 10:30], atol=1e-6)
    assert torch.allclose(crops[1], img[0, :, 0:20, 0:20], atol=1e-6)
    # padding 0.25 of a 20x20 box: 5 px per side
    spec = CropSpec.parse({"kind": "box", "padding": 0.25, "out_size": [30, 30]}, "crop")
    crops, reg = spec.crop(img, torch.tensor([[20.0, 10, 40, 30]]), torch.zeros(1, dtype=torch.long),
                           torch.tensor([[40.0, 60.0]]))
    assert reg.tolist() == [[15.0, 5.0, 45.0, 35.0]]
    assert torch.allclose(crops[0], img[0, :, 5:35, 15:45], atol=1e-6)
    # clipped at the image border
    reg = spec.regions(torch.tensor([[0.0, 0, 20, 20]]), torch.tensor([[40.0, 60.0]]))
    assert reg.tolist() == [[0.0, 0.0, 25.0, 25.0]]


def test_window_crop_is_a_fixed_size_unresized_patch():
    torch.manual_seed(0)
    img = torch.rand(1, 3, 40, 60)
    spec = CropSpec.parse({"kind": "window", "out_size": [16, 20]}, "crop")
    boxes = torch.tensor([[20.0, 10, 30, 20],      # centre (25, 15): [15, 35) x [7, 23)
                          [0.0, 0, 4, 4],          # top-left corner: shifted to [0, 20) x [0, 16)
                          [50.0, 30, 60, 40]])     # bottom-right: [40, 60) x [24, 40)
    hw = torch.tensor([[40.0, 60.0]] * 3)
    crops, reg = spec.crop(img, boxes, torch.zeros(3, dtype=torch.long), hw)
    assert reg.tolist() == [[15.0, 7.0, 35.0, 23.0], [0.0, 0.0, 20.0, 16.0], [40.0, 24.0, 60.0, 40.0]]
    assert torch.allclose(crops[0], img[0, :, 7:23, 15:35], atol=1e-6)
    assert torch.allclose(crops[2], img[0, :, 24:40, 40:60], atol=1e-6)


def test_crop_spec_errors_name_the_key():
    with pytest.raises(ValueError, match=r"heads\.x\.crop\.kind: 'strip' is not one of"):
        CropSpec.parse({"kind": "strip"}, "heads.x.crop")
    with pytest.raises(ValueError, match=r"crop\.out_size"):
        CropSpec.parse({"kind": "box", "out_size": [0, 5]}, "crop")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['size'\]"):
        CropSpec.parse({"size": 3}, "crop")


# ---------------------------------------------------------------------------- verdict
RULES = {"rules": [
    {"name": "severe_dash", "types": ["dash_col"], "severity_at_least": 0.6},
    {"name": "confident_spot", "types": ["spot"], "score_at_least": 0.7},
    {"name": "many_defects", "types": "all", "count_at_least": 3},
    {"name": "large_blemish", "types": ["blemish"], "area_at_least": 400},
]}


def test_verdict_rules_fire_in_order_and_name_the_rule():
    rules = VerdictRules.parse(RULES, TYPES)
    # nothing fires
    v = rules.apply(["dash_col", "blemish"], [0.9, 0.9], [0.5, 0.9], [100, 399])
    assert (v.verdict, v.rule, v.fired) == ("OK", None, [None, None])
    # the blemish is large (400 >= 400) and the dash is severe: severe_dash comes first
    v = rules.apply(["blemish", "dash_col"], [0.9, 0.8], [0.1, 0.72], [400, 50])
    assert v.verdict == "NG" and v.rule == "severe_dash: dash_col severity 0.72 >= 0.6"
    assert v.fired == [None, "severe_dash"]
    # only the large blemish
    v = rules.apply(["blemish", "dash_col"], [0.9, 0.8], [0.1, 0.5], [400, 50])
    assert v.rule == "large_blemish: blemish area 400 >= 400" and v.fired == ["large_blemish", None]
    # three defects: many_defects before large_blemish
    v = rules.apply(["blemish", "spot", "spot"], [0.9, 0.6, 0.5], [0.1, 0.6, 0.5], [900, 9, 9])
    assert v.rule == "many_defects: 3 defects >= 3" and v.fired == ["many_defects"] * 3
    # NaN severity (a GT box of unknown grade) never meets severity_at_least
    v = rules.apply(["dash_col"], [1.0], [math.nan], [10])
    assert v.verdict == "OK"


def test_verdict_default_and_errors():
    v = VerdictRules.parse(None, TYPES).apply(["spot"], [0.5], [0.5], [4])
    assert (v.verdict, v.rule) == ("NG", "any_defect: 1 defect >= 1")
    assert VerdictRules.parse({"rules": []}, TYPES).apply(["spot"], [1.0], [1.0], [4]).verdict == "OK"
    with pytest.raises(ValueError, match=r"model\.verdict\.rules\[0\]\.types: \['scratch'\] not among"):
        VerdictRules.parse({"rules": [{"name": "a", "types": ["scratch"], "score_at_least": 0.5}]}, TYPES)
    with pytest.raises(ValueError, match=r"model\.verdict\.rules\[1\]: unknown key\(s\) \['severity_min'\]"):
        VerdictRules.parse({"rules": [{"name": "a", "score_at_least": 0.5},
                                      {"name": "b", "severity_min": 0.5}]}, TYPES)
    with pytest.raises(ValueError, match=r"model\.verdict\.rules\[0\] \(a\): no condition"):
        VerdictRules.parse({"rules": [{"name": "a", "types": "all"}]}, TYPES)
    with pytest.raises(ValueError, match=r"rules\[0\]\.count_at_least"):
        VerdictRules.parse({"rules": [{"name": "a", "count_at_least": 0}]}, TYPES)
    with pytest.raises(ValueError, match=r"unique.*\['a'\]"):
        VerdictRules.parse({"rules": [{"name": "a", "count_at_least": 1}, {"name": "a", "count_at_least": 2}]})


# ------------------------------------------------------------------- DashNet, shallownet
def test_dashnet_parameter_count_and_shapes():
    torch.manual_seed(0)
    net = DashNet(num_classes=6)
    n = sum(p.numel() for p in net.parameters())
    # note §2: ~1.09 M at N = 6 (Keras BN scale=False: 1,093,382; here BN has gamma too: +864)
    assert n == 1_094_246
    net.eval()
    x = torch.randn(2, 1, 1080, 18)
    assert net.features(x).shape == (2, 192, 11, 6)
    assert net.mixed0(net.features(x)).shape == (2, 256, 11, 6)
    assert net.logits(x).shape == (2, 6)
    res = net.predict({"image": torch.randn(1, 3, 1080, 18)})       # 3 channels averaged to 1
    assert len(res) == 1 and res[0].scores.shape == (6,) and float(res[0].scores.sum()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="smaller than the minimum 267x7"):
        net.logits(torch.randn(1, 1, 200, 18))


def test_dashnet_trains_alone_on_label_batches():
    net = MODELS.build({"type": "DashNet", "num_classes": 3, "width_mult": 0.25})
    out = net({"image": torch.randn(2, 1, 270, 18), "label": torch.tensor([0, 2])})
    assert set(out) == {"loss_cls", "acc"} and torch.isfinite(out["loss_cls"])


def test_shallownet_stride_8_and_256_channels():
    assert "shallownet" in BACKBONES
    bb = build_backbone("shallownet", out_indices=(2,))
    assert bb.out_channels == [256] and bb.strides == [8]
    feats = bb(torch.randn(1, 3, 64, 96))
    assert list(feats) == ["layer2"] and feats["layer2"].shape == (1, 256, 8, 12)
    # the Keras original's valid padding: 299 -> 35 (InceptionV3's mixed0 map)
    valid = BACKBONES["shallownet"](out_indices=(2,), frozen_stages=-1, norm_eval=False, padding="valid")
    assert valid(torch.randn(1, 3, 299, 299))["layer2"].shape == (1, 256, 35, 35)
    tiny = BACKBONES["shallownet"](out_indices=(2,), frozen_stages=-1, norm_eval=False, width_mult=0.5)
    assert tiny.out_channels == [128]


def test_registration_at_package_import():
    for name in ("SeverityDetector", "SeverityFasterRCNN", "DashNet"):
        assert name in MODELS
    from defectkit.visualization import drawer_for
    r = SeverityResult(boxes=torch.zeros((0, 4)), scores=torch.zeros(0), labels=torch.zeros(0, dtype=torch.long))
    assert drawer_for(r)[0] is draw_severity


# ------------------------------------------------------------------------- the detector
def _tiny_cfg(**over):
    cfg = dict(
        type="SeverityDetector", grades=GRADES, classes=TYPES,
        detector=dict(type="SeverityFasterRCNN", backbone="shallownet", backbone_options={"width_mult": 0.25},
                      neck_channels=32, fc_dim=64, anchor_sizes=[16, 32, 64], anchor_ratios=[0.5, 1.0, 2.0, 8.0],
                      rpn_pre_nms_topn=200, rpn_topn=50, rois_per_img=32),
        severity_heads={
            "dash_col": {"crop": {"kind": "column_strip", "width": 18, "out_size": [270, 18], "gray": True},
                         "classifier": {"type": "DashNet", "width_mult": 0.25}},
            "blemish": {"crop": {"kind": "box", "padding": 0.1, "out_size": [32, 32]},
                        "classifier": {"type": "ImageClassifier", "backbone": "small_cnn"}}},
        verdict=RULES, report_score_thr=0.0)
    cfg.update(over)
    return cfg


def _synthetic_batch(n: int = 2, h: int = 96, w: int = 128) -> dict:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, h, w, generator=g) * 0.1
    boxes, labels, grades = [], [], []
    for i in range(n):
        x = 20 + 40 * i
        images[i, :, :, x:x + 3] += 1.5 + i                      # a column line, brighter in image 1
        images[i, :, 30:50, 70:90] -= 1.0 + i                    # a dark blob
        boxes.append(torch.tensor([[x, 0.0, x + 3, h], [70.0, 30, 90, 50], [5.0, 80, 11, 86]]))
        labels.append(torch.tensor([0, 1, 2]))
        grades.append(torch.tensor([i * 3, 1 + i * 2, -1]))
    meta = [{"path": f"img{i}.png", "orig_size": (h, w), "scale_factor": (1.0, 1.0)} for i in range(n)]
    return {"image": images, "boxes": boxes, "labels": labels, "grades": grades, "meta": meta,
            "image_sizes": [(h, w)] * n}


def test_severity_detector_forward_losses_and_training_reduces_loss():
    torch.manual_seed(0)
    model = build_model(_tiny_cfg())
    batch = _synthetic_batch()
    model.train()
    out = model(batch)
    for k in ("loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_sev_dash_col", "loss_sev_blemish",
              "acc_sev_dash_col", "acc_sev_blemish"):
        assert k in out and torch.isfinite(out[k]), k
    assert "loss_sev_spot" not in out                                # no head: scored by the detector
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    totals = []
    for _ in range(30):
        out = model(batch)
        loss = sum(v for k, v in out.items() if k.startswith("loss"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        totals.append(float(loss.detach()))
    assert all(math.isfinite(t) for t in totals)
    assert sum(totals[-5:]) / 5 < 0.6 * sum(totals[:5]) / 5, totals


def test_forward_without_grades_or_crops():
    model = build_model(_tiny_cfg())
    batch = _synthetic_batch()
    model.train()
    with pytest.raises(KeyError, match="with_grades: true"):
        model({k: v for k, v in batch.items() if k != "grades"})
    batch["grades"] = [torch.full_like(g, -1) for g in batch["grades"]]     # every grade unknown
    out = model(batch)
    assert float(out["loss_sev_dash_col"].detach()) == 0.0 and out["loss_sev_dash_col"].requires_grad


def test_predict_boxes_in_original_pixels_real_detector():
    torch.manual_seed(0)
    model = build_model(_tiny_cfg()).eval()
    batch = _synthetic_batch(1)
    batch["meta"][0].update(scale_factor=(0.5, 0.5), orig_size=(192, 256))   # the input is half size
    (r,) = model.predict(batch)
    assert isinstance(r, SeverityResult) and r.image_size == (192, 256)
    assert len(r) > 0 and float(r.boxes[:, 2].max()) <= 256 + 1e-3 and float(r.boxes[:, 3].max()) <= 192 + 1e-3
    assert float(r.boxes[:, 2].max()) > 128             # beyond the input's width: original px
    graded = [i for i in range(len(r)) if r.grade_probs[i] is not None]
    assert graded and all(r.labels[i] in (0, 1) for i in graded)
    assert set(r.timing_ms) == {"detector", "severity"}
    assert r.gt_grade_probs.shape == (3, 5) and torch.isnan(r.gt_grade_probs[2]).all()   # spot: no head
    assert r.gt_verdict in ("OK", "NG")


# ---------------------------------------------------------- exact values with stub parts
class StubDetector(BaseModel):
    """A detector whose predictions are given (boxes in original px)."""

    def __init__(self, classes, dets=None):
        super().__init__()
        self.classes = list(classes)
        self.dets = dets
        self.p = nn.Parameter(torch.zeros(()))

    def forward(self, batch):
        return {"loss_det": self.p * 0 + 1.0}

    def predict(self, batch):
        return self.dets


class FixedHead(nn.Module):
    """A 'classifier' giving fixed probabilities; records the crops it saw."""

    def __init__(self, probs, in_channels=1):
        super().__init__()
        self.logit = nn.Parameter(torch.log(torch.tensor(probs, dtype=torch.float32).clamp_min(1e-12)))
        self.in_channels = in_channels
        self.seen = []

    def logits(self, x):
        self.seen.append(x.detach().clone())
        return self.logit.expand(x.shape[0], -1)


def _stub_model(dets, **over):
    head = FixedHead([0.0, 0.02, 0.08, 0.85, 0.05])
    kw = dict(severity_heads={"dash_col": {"crop": {"kind": "column_strip", "width": 18, "out_size": [100, 18],
                                                     "gray": True},
                                           "classifier": head, "score_weights": [0.2, 0.4, 0.6, 0.8, 1.0]}},
              verdict=RULES, report_score_thr=0.5)
    kw.update(over)
    return SeverityDetector(StubDetector(TYPES, dets), GRADES, **kw), head


def test_predict_exact_severity_crop_boxes_and_verdict():
    # original 200 x 400 (h, w); the model input is half size (scale 0.5)
    dets = [DetectionResult(boxes=torch.tensor([[100.0, 20, 104, 180], [300, 50, 340, 90], [10, 10, 14, 14]]),
                            scores=torch.tensor([0.9, 0.8, 0.3]), labels=torch.tensor([0, 1, 2]))]
    model, head = _stub_model(dets)
    image = _column_image(100, 200)
    batch = {"image": image, "image_sizes": [(100, 200)],
             "meta": [{"path": "/data/a/f.png", "orig_size": (200, 400), "scale_factor": (0.5, 0.5)}]}
    (r,) = model.predict(batch)
    assert r.boxes.tolist() == dets[0].boxes.tolist()
    assert r.reported.tolist() == [True, True, False]
    assert float(r.severity[0]) == pytest.approx(0.786, abs=1e-5)       # README example through a head
    assert float(r.severity[1]) == pytest.approx(0.8)                   # blemish: no head -> score
    assert math.isnan(float(r.severity[2]))                             # below report_score_thr
    assert r.grade_probs[1] is None and r.grade_probs[2] is None
    # input-frame box [50, 10, 52, 90] -> centre 51 -> strip [42, 60) x full height -> x2 in original px
    assert r.crop_boxes[0].tolist() == [84.0, 0.0, 120.0, 200.0]
    assert r.crop_boxes[1].tolist() == dets[0].boxes[1].tolist()
    crop = head.seen[0]
    assert crop.shape == (1, 1, 100, 18)
    assert crop[0, 0, 50, :].tolist() == pytest.approx([(2 * x + 1000 + 50) / 3 for x in range(42, 60)], abs=1e-4)
    assert (r.verdict, r.verdict_rule, r.fired) == ("NG", "severe_dash: dash_col severity 0.786 >= 0.6",
                                                    ["severe_dash", None, None])
    assert r.image_size == (200, 400) and r.gt_grade_probs is None and r.gt_verdict is None


def test_crops_come_from_orig_image_when_the_batch_has_it():
    dets = [DetectionResult(boxes=torch.tensor([[100.0, 20, 104, 180]]), scores=torch.tensor([0.9]),
                            labels=torch.tensor([0]))]
    model, head = _stub_model(dets)
    batch = {"image": torch.zeros(1, 3, 100, 200), "image_sizes": [(100, 200)],
             "orig_image": [_column_image(200, 400)[0]],          # original pixels, any size per image
             "meta": [{"orig_size": (200, 400), "scale_factor": (0.5, 0.5)}]}
    (r,) = model.predict(batch)
    # centre int(102) in ORIGINAL px -> [93, 111) x full height, no rescaling
    assert r.crop_boxes[0].tolist() == [93.0, 0.0, 111.0, 200.0]
    assert head.seen[0].shape == (1, 1, 100, 18)
    assert head.seen[0][0, 0, 0].tolist() == pytest.approx([(2 * x + 1000 + 0.5) / 3 for x in range(93, 111)], abs=1e-4)


def test_training_crops_copies_and_flips():
    head = FixedHead([0.2] * 5)
    model = SeverityDetector(StubDetector(TYPES), GRADES, severity_heads={"dash_col": {
        "crop": {"kind": "column_strip", "width": 18, "out_size": [50, 18], "gray": True,
                 "train_copies": 3, "flip": True}, "classifier": head}})
    batch = {"image": _column_image(50, 100), "image_sizes": [(50, 100)],
             "boxes": [torch.tensor([[40.0, 0, 42, 50]])], "labels": [torch.tensor([0])], "grades": [torch.tensor([2])]}
    out = model.train()(batch)
    crops = head.seen[0]
    assert crops.shape == (3, 1, 50, 18) and out["loss_sev_dash_col"].requires_grad
    ref = crop_regions(_column_image(50, 100), torch.tensor([[32.0, 0, 50, 50]]), torch.zeros(1, dtype=torch.long),
                       (50, 18), gray=True)[0]
    for c in crops:      # each copy is the strip, possibly flipped left-right and/or up-down
        assert any(torch.equal(c, f) for f in (ref, ref.flip(-1), ref.flip(-2), ref.flip(-1).flip(-2)))
    with pytest.raises(ValueError, match=r"crop\.train_copies"):
        CropSpec.parse({"train_copies": 0}, "crop")


def test_ignore_types_and_gt_grades_with_stub():
    dets = [DetectionResult(boxes=torch.tensor([[100.0, 20, 104, 180], [10, 10, 40, 40]]),
                            scores=torch.tensor([0.9, 0.95]), labels=torch.tensor([0, 2]))]
    model, head = _stub_model(dets, ignore_types=["spot"],
                              verdict={"rules": [{"name": "severe_dash", "types": ["dash_col"],
                                                  "severity_at_least": 0.7}]})
    batch = {"image": _column_image(100, 200), "image_sizes": [(100, 200)],
             "meta": [{"orig_size": (100, 200)}],
             "boxes": [torch.tensor([[50.0, 0, 52, 100], [10, 10, 20, 20], [60, 0, 61, 100]])],
             "labels": [torch.tensor([0, 1, 0])], "grades": [torch.tensor([3, 2, -1])]}
    (r,) = model.predict(batch)
    assert r.labels.tolist() == [0]                                     # the spot is dropped
    gp = r.gt_grade_probs
    assert gp.shape == (3, 5) and torch.isnan(gp[1]).all()             # blemish GT: no head
    assert gp[0].tolist() == pytest.approx([0.0, 0.02, 0.08, 0.85, 0.05], abs=1e-6)
    assert gp[2].tolist() == pytest.approx(gp[0].tolist())             # graded even when its grade is unknown
    # GT verdict: dash_col grade index 3 -> w = 0.8 >= 0.7 -> NG
    assert r.gt_verdict == "NG"
    with pytest.raises(ValueError, match=r"model\.ignore_types: \['scratch'\]"):
        _stub_model(dets, ignore_types=["scratch"])
    with pytest.raises(TypeError, match="model.detector: SeverityDetector takes a built model"):
        SeverityDetector({"type": "SeverityFasterRCNN"}, GRADES)
    with pytest.raises(ValueError, match=r"model\.severity_heads\.scratch: 'scratch' is not a defect type"):
        SeverityDetector(StubDetector(TYPES, dets), GRADES, severity_heads={"scratch": {"classifier": head}})


def test_result_json_tables_voc_and_drawing(tmp_path):
    dets = [DetectionResult(boxes=torch.tensor([[100.0, 20, 104, 180], [300, 50, 340, 90], [10, 10, 14, 14]]),
                            scores=torch.tensor([0.9, 0.8, 0.3]), labels=torch.tensor([0, 1, 2]))]
    model, _ = _stub_model(dets)
    batch = {"image": _column_image(100, 200), "image_sizes": [(100, 200)],
             "meta": [{"path": "/data/a/f.png", "orig_size": (200, 400), "scale_factor": (0.5, 0.5)}]}
    (r,) = model.predict(batch)
    js = r.to_json()
    assert js["verdict"] == "NG" and len(js["defects"]) == 2 and js["num_detections"] == 3
    assert js["defects"][0]["grade"] == "4" and js["defects"][0]["rule"] == "severe_dash"
    tables = r.table_rows("f.png", TYPES)
    row = tables["defects"][0]
    assert row["type"] == "dash_col" and row["grade_p_4"] == pytest.approx(0.85) and row["severity"] == pytest.approx(0.786)
    assert (row["xmin"], row["ymin"], row["xmax"], row["ymax"]) == (100.0, 20.0, 104.0, 180.0)
    assert tables["defects"][1]["grade_p_1"] is None
    assert tables["verdicts"] == [{"file": "f.png", "verdict": "NG", "rule": "severe_dash: dash_col severity 0.786 >= 0.6",
                                   "num_defects": 2, "max_severity": pytest.approx(0.8), "gt_verdict": None}]
    assert "log" not in tables
    r.wide_csv = True                       # model.wide_csv: the original's one-row-per-image log.csv
    assert r.table_rows("f.png", TYPES)["log"] == [{
        "FileName": "f.png", "BoxNum": 2,
        "Class_1": "dash_col", "Score_1": pytest.approx(0.786), "ymin_1": 20.0, "xmin_1": 100.0, "ymax_1": 180.0,
        "xmax_1": 104.0,
        "Class_2": "blemish", "Score_2": pytest.approx(0.8), "ymin_2": 50.0, "xmin_2": 300.0, "ymax_2": 90.0,
        "xmax_2": 340.0}]
    (xml,) = r.write_files(tmp_path, "00000_f")
    from defectkit.data.formats.voc import read_voc_file
    text = open(xml).read()
    assert "<filename>f.png</filename>" in text and "<severity>4</severity>" in text
    assert "<severity_score>0.786</severity_score>" in text
    assert text.index("<name>dash_col</name>") < text.index("<name>blemish</name>")
    assert "spot" not in text                                           # not reported
    back = read_voc_file(xml)
    assert back["filename"] == "f.png" and back["size"] == (200, 400, 3)
    assert [(o["name"], o["box"], o.get("severity")) for o in back["objects"]] == [
        ("dash_col", [100.0, 20.0, 104.0, 180.0], "4"), ("blemish", [300.0, 50.0, 340.0, 90.0], None)]
    assert back["objects"][0]["score"] == pytest.approx(0.9)
    img = draw_severity(torch.zeros(3, 200, 400), r, TYPES)
    assert img.size[0] == 400 and img.size[1] > 200                     # banner on top


def test_tiny_config_builds():
    from defectkit.config import load_config

    cfg = load_config("configs/severity/severity_shallownet_tiny_sensor.yaml")
    model = build_model(cfg["model"], ["blemish", "dash_col", "spot"])
    assert isinstance(model, SeverityDetector) and set(model.heads) == {"dash_col", "blemish"}
    assert model.detector.stride == 8 and model.classes == ["blemish", "dash_col", "spot"]


def test_r50_config_has_the_note_settings():
    from defectkit.config import load_config

    cfg = load_config("configs/severity/severity_r50_sensor.yaml")
    assert cfg["optimizer"] == {"type": "SGD", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0}
    assert cfg["lr_schedule"]["type"] == "CosineLR" and cfg["lr_schedule"]["warmup_iters"] == 5000
    assert cfg["train"]["grad_clip"] == 10
    model = build_model(cfg["model"], ["blemish", "dash_col", "spot"])
    det = model.detector
    assert det.stride == 16 and det.backbone.out_channels == [1024]
    gen = det.rpn.anchor_generator
    assert gen.sizes == ((64, 128, 256, 512),) and gen.aspect_ratios == ((0.5, 1.0, 2.0),)
    assert det.rpn.nms_thresh == 0.7 and det.rpn._post_nms_top_n == {"training": 300, "testing": 300}
    assert det.roi_head.sampler.batch_size_per_image == 64
    assert (det.nms_iou, det.score_thr, det.max_per_img) == (0.6, 0.0, 100)
    assert model.crops["dash_col"].out_size == (1080, 18) and model.crops["dash_col"].gray


def test_results_carry_the_models_weights_and_a_grade_range_error_names_the_keys():
    """predict() puts each head type's weights (here compat 0.2 k) into SeverityResult.score_weights
    (what SeverityEvaluator's severity_mae uses); a batch grade beyond model.grades names both keys."""
    torch.manual_seed(0)
    model = build_model(_tiny_cfg(compat_weights_0_2k=True))
    model.eval()
    batch = _synthetic_batch()
    rs = model.predict(batch)
    for r in rs:
        assert set(r.score_weights) == {"dash_col", "blemish"}
        for w in r.score_weights.values():
            assert w == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8])
        assert r.grade_names == GRADES
    batch["grades"][0] = torch.tensor([5, 0, -1])             # index 5 of 5 grades
    model.train()
    with pytest.raises(ValueError, match=r"grade index 5 .* model\.grades .* data\.<split>\.grades"):
        model(batch)


def test_merge_column_fragments_hand_values():
    """Fragments of one column line (centres within half the strip width) -> the top-scored
    box, extended over fragments scoring >= the report threshold; other columns/types kept."""
    from defectkit.models.severity.severity import merge_column_fragments
    b = torch.tensor([[10, 0, 18, 100], [11, 90, 19, 200], [12, 150, 20, 280], [60, 0, 68, 50], [13, 0, 20, 50.]])
    s = torch.tensor([0.9, 0.8, 0.3, 0.7, 0.6])
    lab = torch.tensor([0, 0, 0, 0, 1])
    ob, os_, ol = merge_column_fragments(b, s, lab, label=0, max_dx=9.0, extend_thr=0.5)
    # centres 14, 15, 16 -> one column: 0..200 (the 0.3 fragment is dropped, not merged); 64 stays
    assert ob.tolist() == [[10, 0, 18, 200], [60, 0, 68, 50], [13, 0, 20, 50]]
    assert os_.tolist() == pytest.approx([0.9, 0.7, 0.6]) and ol.tolist() == [0, 0, 1]
    one = merge_column_fragments(b[:1], s[:1], lab[:1], 0, 9.0, 0.5)
    assert one[0].tolist() == b[:1].tolist()


def test_voc_boxes_are_whole_pixels(tmp_path):
    """LabelImg (and the original's xml_to_csv) parse bndbox with int(): whole pixels."""
    from defectkit.data.formats.voc import read_voc_file
    r = SeverityResult(boxes=torch.tensor([[218.68, 66.98, 270.89, 124.66], [5.2, 5.1, 5.4, 9.0]]),
                       scores=torch.tensor([0.7, 0.9]), labels=torch.tensor([1, 2]),
                       severity=torch.tensor([0.5, 0.9]), grade_probs=[None, None],
                       crop_boxes=torch.zeros(2, 4), reported=torch.tensor([True, True]),
                       image_size=(288, 512), type_names=TYPES, grade_names=GRADES, image_path="/d/a.jpg")
    (xml,) = r.write_files(tmp_path, "a")
    text = open(xml).read()
    assert "<xmin>219</xmin>" in text and "<ymax>125</ymax>" in text and "." not in text.split("<bndbox>")[1].split("</bndbox>")[0]
    back = read_voc_file(xml)
    assert [o["box"] for o in back["objects"]] == [[219.0, 67.0, 271.0, 125.0]]   # the sub-pixel box is left out


def test_labels_of_neighbouring_columns_do_not_overlap():
    from defectkit.models.severity.result import _free_row
    placed = [(100.0, 10.0, 220.0, 26.0)]                       # a label 120 x 16 at y 10
    assert _free_row(placed, 140.0, 10.0, 120.0, 16.0, 288) == 27.0   # moved one row (h + 1) down
    assert _free_row(placed, 230.0, 10.0, 120.0, 16.0, 288) == 10.0   # no overlap: kept
    assert _free_row(placed, 140.0, 270.0, 120.0, 16.0, 288) == 270.0
