"""DefectNet family: gate schedules, gated inference, Cascade/Faster R-CNN, two-model, configs."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import defectkit  # noqa: F401  (registers everything)
from defectkit.config import load_config
from defectkit.engine.builders import build_model
from defectkit.models.detection import CascadeRCNN, FasterRCNN, GateConfig, TwoModelDetector, gate_weight
from defectkit.models.base import Progress
from defectkit.structures import DetectionResult

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(backbone="small_cnn", num_classes=2, frozen_stages=-1, norm_eval=False, fpn_channels=32,
            fc_dim=64, rois_per_img=64, anchor_sizes=(8, 16, 32, 64, 128), rpn_train_topn=200,
            rpn_test_topn=100)


def make_batch(n=4, normal=(), size=64, scale=(1.0, 1.0)):
    g = torch.Generator().manual_seed(0)
    imgs = torch.randn(n, 3, size, size, generator=g) * 0.1
    boxes, labels = [], []
    for i in range(n):
        if i in normal:
            boxes.append(torch.zeros(0, 4))
            labels.append(torch.zeros(0, dtype=torch.long))
            continue
        x = 6 + 5 * i
        imgs[i, :, x:x + 24, x:x + 24] += 2.0
        boxes.append(torch.tensor([[x, x, x + 24, x + 24]], dtype=torch.float32))
        labels.append(torch.tensor([i % 2]))
    return {"image": imgs, "image_sizes": [(size, size)] * n, "boxes": boxes, "labels": labels,
            "is_defective": torch.tensor([0 if i in normal else 1 for i in range(n)]),
            "meta": [{"scale_factor": scale} for _ in range(n)]}


def total(losses):
    return sum(v for k, v in losses.items() if k.startswith("loss"))


def count_calls(model):
    counts = {"fpn": 0, "rpn": 0, "roi": 0, "fpn_images": 0}

    def hook(name):
        def f(mod, args, out):
            counts[name] += 1
            if name == "fpn":
                counts["fpn_images"] += next(iter(args[0].values())).shape[0]
        return f
    model.fpn.register_forward_hook(hook("fpn"))
    model.rpn.register_forward_hook(hook("rpn"))
    heads = model.stages if isinstance(model, CascadeRCNN) else [model.roi_head]
    for h in heads:
        h.register_forward_hook(hook("roi"))
    return counts


def force_gate(model, p_defective):
    """Make the gate output fixed probabilities per image (through a forward hook)."""
    p = torch.tensor(p_defective)

    def f(mod, args, out):
        return torch.stack([torch.log1p(-p), torch.log(p)], 1)
    model.gate.register_forward_hook(f)


# ------------------------------------------------------------------------- schedules
def test_schedules_match_note_per_epoch():
    lin, inv, exp = GateConfig(schedule="linear"), GateConfig(schedule="inverse"), GateConfig(schedule="exponential")
    for n in range(12):
        assert gate_weight(lin, n) == pytest.approx(1 - n / 12)
        assert gate_weight(inv, n) == pytest.approx(1 / (n + 1))
        assert gate_weight(exp, n) == pytest.approx(2.0 ** -n)
        assert gate_weight(GateConfig(schedule="constant", w0=0.15), n) == pytest.approx(0.15)
    assert gate_weight(lin, 11) == pytest.approx(0.0833, abs=1e-4)
    assert gate_weight(GateConfig(schedule="exponential", a=0.01), 10) == pytest.approx(1e6)   # max(a^t, 1e-6)
    assert gate_weight(GateConfig(schedule="inverse", w0=2.0, k=0.5, period=2), 2) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        GateConfig(schedule="cosine")
    with pytest.raises(ValueError):
        GateConfig.parse({"schedul": "linear"})


def test_schedule_iteration_mode_and_train_step_begin():
    m = CascadeRCNN(**TINY, gate={"schedule": "inverse", "by": "iter", "period": 100})
    m.train_step_begin(Progress(epoch=3, iter=300, max_epochs=12, max_iters=1200))
    assert m.gate_loss_weight() == pytest.approx(1 / (300 / 100 + 1))
    m2 = CascadeRCNN(**TINY, gate={"schedule": "exponential"})
    m2.train_step_begin(Progress(epoch=3, iter=300, max_epochs=12, max_iters=1200))
    assert m2.gate_loss_weight() == pytest.approx(2.0 ** -3)


def test_gate_loss_is_scaled_by_schedule():
    torch.manual_seed(0)
    m = FasterRCNN(**TINY, gate={"schedule": "exponential"}).train()
    b = make_batch(normal=(3,))
    torch.manual_seed(1)
    l0 = m(b)["loss_gate"].item()
    m.train_step_begin(Progress(epoch=2, iter=10, max_epochs=12, max_iters=120))
    torch.manual_seed(1)
    l2 = m(b)["loss_gate"].item()
    assert l2 == pytest.approx(l0 / 4, rel=1e-4)


# -------------------------------------------------------------------------- gating
@pytest.mark.parametrize("cls", [CascadeRCNN, FasterRCNN])
def test_gate_skips_heads_and_batched_gating(cls):
    torch.manual_seed(0)
    m = cls(**TINY, gate={"schedule": "constant"}).eval()
    counts = count_calls(m)
    force_gate(m, [0.9, 0.1, 0.7, 0.3])
    res = m.predict(make_batch())
    assert [r.gated for r in res] == [False, True, False, True]
    for r, p in zip(res, [0.9, 0.1, 0.7, 0.3]):
        assert isinstance(r, DetectionResult) and r.gate_score == pytest.approx(p, abs=1e-5)
    assert len(res[1]) == 0 and len(res[3]) == 0
    assert counts["fpn"] == 1 and counts["fpn_images"] == 2      # only the passed images
    assert m.gate_stats() == {"images": 4, "passed": 2, "pass_rate": 0.5}


def test_all_gated_batch_skips_everything():
    m = CascadeRCNN(**TINY, gate={}).eval()
    counts = count_calls(m)
    force_gate(m, [0.2, 0.4])
    res = m.predict(make_batch(n=2))
    assert all(r.gated and len(r) == 0 for r in res)
    assert counts["fpn"] == counts["rpn"] == counts["roi"] == 0


def test_disabled_gate_never_gates_but_trains():
    m = CascadeRCNN(**TINY, gate={"enabled": False}).eval()
    counts = count_calls(m)
    force_gate(m, [0.01, 0.02, 0.03, 0.04])
    res = m.predict(make_batch())
    assert not any(r.gated for r in res)
    assert [r.gate_score for r in res] == pytest.approx([0.01, 0.02, 0.03, 0.04], abs=1e-5)
    assert counts["fpn_images"] == 4 and counts["roi"] == 3
    m2 = CascadeRCNN(**TINY, gate={"enabled": False}).train()
    assert "loss_gate" in m2(make_batch(normal=(0,)))


# ------------------------------------------------------------------------ training
@pytest.mark.parametrize("cls", [CascadeRCNN, FasterRCNN])
def test_losses_finite_and_fall(cls):
    torch.manual_seed(0)
    m = cls(**TINY).train()
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], 1e-3)
    b = make_batch()
    first = last = None
    for it in range(20):
        losses = m(b)
        loss = total(losses)
        assert all(math.isfinite(float(v.detach())) for v in losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
        last = loss.item()
    assert last < 0.5 * first
    keys = set(losses)
    if cls is CascadeRCNN:
        assert {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls_s0", "loss_bbox_s2", "acc_s1"} <= keys
    else:
        assert {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"} <= keys


def test_normal_images_skip_detection_branch_in_training():
    m = CascadeRCNN(**TINY, gate={"schedule": "linear"}).train()
    counts = count_calls(m)
    losses = m(make_batch(normal=(1, 3)))
    assert counts["fpn_images"] == 2 and "loss_gate" in losses
    m2 = CascadeRCNN(**TINY, gate={"normal_negatives": True}).train()
    counts2 = count_calls(m2)
    assert math.isfinite(total(m2(make_batch(normal=(1, 3)))).item())
    assert counts2["fpn_images"] == 4


@pytest.mark.parametrize("gate", [None, {"schedule": "constant"}])
def test_all_normal_batch_backward(gate):
    m = CascadeRCNN(**TINY, gate=gate).train()
    counts = count_calls(m)
    losses = m(make_batch(normal=(0, 1, 2, 3)))
    assert counts["fpn"] == 0
    ref = CascadeRCNN(**TINY).train()(make_batch())
    assert set(k for k in ref if k.startswith(("loss", "acc"))) <= set(losses)
    loss = total(losses)
    loss.backward()
    g = m.stages[0].cls_score.weight.grad
    assert g is not None and torch.all(g == 0)
    if gate is not None:
        assert m.gate.fc.weight.grad.abs().sum() > 0


def test_predict_rescales_boxes_to_original_size():
    torch.manual_seed(0)
    m = FasterRCNN(**TINY, score_thr=0.0).eval()
    res1 = m.predict(make_batch(n=1, scale=(1.0, 1.0)))
    res2 = m.predict(make_batch(n=1, scale=(0.5, 0.25)))
    assert len(res1[0]) > 0
    torch.testing.assert_close(res2[0].boxes, res1[0].boxes * torch.tensor([2.0, 4.0, 2.0, 4.0]))
    assert res1[0].boxes.dtype == torch.float32 and res1[0].labels.dtype == torch.long
    assert res1[0].labels.max() < 2 and res1[0].gate_score is None and not res1[0].gated


# ------------------------------------------------------------------------ two-model
def test_two_model_gates_with_classifier():
    torch.manual_seed(0)
    det = dict(type="FasterRCNN", **TINY)
    m = build_model(dict(type="TwoModelDetector",    # the builder builds the parts
                         classifier=dict(type="ImageClassifier", backbone="small_cnn", num_classes=2),
                         detector=det, classifier_size=(32, 32))).eval()
    p = torch.tensor([0.8, 0.2, 0.6])
    m.classifier.logits = lambda x: torch.stack([torch.log1p(-p[:x.shape[0]]), torch.log(p[:x.shape[0]])], 1)
    counts = count_calls(m.detector)
    res = m.predict(make_batch(n=3))
    assert [r.gated for r in res] == [False, True, False]
    assert [r.gate_score for r in res] == pytest.approx([0.8, 0.2, 0.6], abs=1e-5)
    assert counts["fpn_images"] == 2 and m.gate_stats()["passed"] == 2
    with pytest.raises(RuntimeError, match="two trained models"):
        m(make_batch(n=1))


def test_two_model_loads_checkpoints(tmp_path):
    torch.manual_seed(0)
    cls_cfg = dict(type="ImageClassifier", backbone="small_cnn", num_classes=2)
    det_cfg = dict(type="CascadeRCNN", **TINY)
    c, d = build_model(cls_cfg), build_model(det_cfg)
    torch.save({"state_dict": c.state_dict()}, tmp_path / "c.pth")
    torch.save({"state_dict": d.state_dict()}, tmp_path / "d.pth")
    two = dict(type="TwoModelDetector", classifier_checkpoint=str(tmp_path / "c.pth"),
               detector_checkpoint=str(tmp_path / "d.pth"))
    m = build_model(dict(two, classifier=cls_cfg, detector=det_cfg))
    torch.testing.assert_close(m.detector.stages[2].cls_score.weight, d.stages[2].cls_score.weight)
    torch.testing.assert_close(m.classifier.fc.weight, c.fc.weight)
    # the parts may also be given as the paths of their own config files
    import yaml

    for name, part in (("cls", cls_cfg), ("det", det_cfg)):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({"model": part}))
    m2 = build_model(dict(two, classifier=str(tmp_path / "cls.yaml"), detector=str(tmp_path / "det.yaml")))
    torch.testing.assert_close(m2.detector.stages[2].cls_score.weight, d.stages[2].cls_score.weight)
    (tmp_path / "empty.yaml").write_text("seed: 1\n")
    with pytest.raises(ValueError, match="model.detector: config file .*empty.yaml has no `model`"):
        build_model(dict(type="TwoModelDetector", classifier=cls_cfg, detector=str(tmp_path / "empty.yaml")))


def test_missing_pretrained_file_names_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model.pretrained: weights file .*nope.pth.* train that config"):
        build_model(dict(type="CascadeRCNN", **{**TINY, "pretrained": str(tmp_path / "nope.pth")}))


# -------------------------------------------------------------------------- configs
CONFIGS = sorted((ROOT / "configs" / "defectnet").glob("*.yaml"))


def _force_null(model_cfg):
    model_cfg = dict(model_cfg)
    if model_cfg["type"] == "TwoModelDetector":
        model_cfg["classifier_checkpoint"] = model_cfg["detector_checkpoint"] = None
        for key in ("classifier", "detector"):   # a model dict or a config file's path
            part = model_cfg[key]
            part = load_config(ROOT / part)["model"] if isinstance(part, str) else part
            model_cfg[key] = {**part, "pretrained": None}
    elif "pretrained" in model_cfg:
        model_cfg["pretrained"] = None
    return model_cfg


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_defectnet_config_builds(path):
    cfg = load_config(path)
    model = build_model(_force_null(cfg["model"]), ["a", "b", "c"])
    assert callable(model.predict)
    inner = model.detector if isinstance(model, TwoModelDetector) else model
    assert inner.num_classes == 3
    if "defectnet_" in path.name:
        assert inner.gate_cfg is not None
        if "_const_" in path.name and "_r50_" in path.name:   # the paper's constant weight
            assert inner.gate_cfg.w0 == pytest.approx(0.15)
    else:
        assert inner.gate_cfg is None
    assert cfg["evaluation"]["type"] == "DetectionEvaluator"


def test_config_count():
    names = {p.name for p in CONFIGS}
    for ds in ("fabric", "bottle"):
        for g in ("const", "linear", "inverse", "exponential"):
            assert f"defectnet_{g}_cascade_r50_fpn_1x_{ds}.yaml" in names
        assert f"two_model_small_cascade_r50_fpn_1x_{ds}.yaml" in names
        assert f"defectnet_const_faster_r50_fpn_1x_{ds}.yaml" in names
    for ds in ("synth_fabric", "synth_bottle"):          # the synthetic presets
        for g in ("one_model", "defectnet_const", "defectnet_linear", "defectnet_inverse", "defectnet_exponential"):
            assert f"{g}_cascade_r50_fpn_1x_{ds}.yaml" in names
    assert "one_model_cascade_tiny_synth.yaml" in names and "two_model_cascade_tiny_synth.yaml" in names


def test_draw_detection_result():
    from defectkit.visualization.draw import draw_result

    img = torch.rand(3, 40, 60)
    r = DetectionResult(boxes=torch.tensor([[5.0, 5.0, 20.0, 30.0]]), scores=torch.tensor([0.9]),
                        labels=torch.tensor([1]), gate_score=0.93)
    out = draw_result(img, r, ["hole", "stain"])
    assert out.width >= 60 and out.height > 40
    gated = DetectionResult(boxes=torch.zeros(0, 4), scores=torch.zeros(0),
                            labels=torch.zeros(0, dtype=torch.long), gate_score=0.1, gated=True)
    assert draw_result(img, gated).height > 40


def test_gate_pool_option():
    import torch

    from defectkit.models.detection.defectnet import GateConfig, GateHead

    with pytest.raises(ValueError, match="gate.pool"):
        GateConfig(pool="mean")
    head = GateHead(3, pool="max")
    x = torch.zeros(1, 3, 4, 4)
    x[0, :, 1, 2] = 5.0                      # one bright spot
    expected = head.fc(torch.full((1, 3), 5.0))
    assert torch.allclose(head(x), expected)
    avg = GateHead(3)
    assert torch.allclose(avg(x), avg.fc(torch.full((1, 3), 5.0 / 16)))


@pytest.mark.parametrize("detach", [False, True])
def test_gate_detach_keeps_gate_loss_out_of_backbone(detach):
    torch.manual_seed(0)
    m = FasterRCNN(**TINY, gate={"detach": detach}).train()
    m(make_batch(normal=(0, 1, 2, 3)))["loss_gate"].backward()   # all normal: only the gate loss
    backbone_grad = sum(float(p.grad.abs().sum()) for p in m.backbone.parameters() if p.grad is not None)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.gate.parameters())
    assert (backbone_grad == 0.0) == detach
