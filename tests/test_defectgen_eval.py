"""Defect-Gen evaluation: alignment IoU, MS-SSIM diversity, memorisation, FID/KID offline,
and GenerationEvaluator on hand-made GenerationResults (issue 12, "Measuring generated data")."""
from __future__ import annotations

import json
import math
import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import defectkit  # noqa: F401  (registers everything)
from defectkit.checkpoint_io import CheckpointError
from defectkit.evaluation import generation_metrics as GM
from defectkit.evaluation.generation import (GenerationEvaluator, alignment_scores, load_alignment_segmenter)
from defectkit.models.generation.result import GenerationResult
from defectkit.registry import EVALUATORS, MODELS

S = 48          # px: 3 MS-SSIM scales (48 // 4 = 12 >= the 11-px window)


def quantised(*shape, seed=0):
    """Random [0, 1] images on the uint8 grid (the evaluator stores uint8)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=g).float() / 255


def smooth(seed):
    """A smooth random picture (a blurred 6x6 noise), on the uint8 grid."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.rand(1, 3, 6, 6, generator=g), size=(S, S), mode="bilinear",
                                        align_corners=False)[0]
    return (x * 255).round() / 255


# ------------------------------------------------------------------ pure metric functions
GEN = torch.tensor([[0, 1, 1, 0],
                    [0, 1, 1, 0],
                    [0, 0, 2, 2],
                    [0, 0, 0, 0]])
PRED = torch.tensor([[0, 1, 0, 0],
                     [0, 1, 1, 1],
                     [0, 0, 2, 0],
                     [0, 0, 0, 0]])


def test_alignment_iou_by_hand():
    a = GM.alignment_iou(PRED, GEN, 3)
    # foreground: generated 6 px, predicted 5 px, 4 shared -> 4 / 7
    assert a["defect_iou"] == pytest.approx(4 / 7)
    # background 9 / 12, class 1: 3 shared of 5, class 2: 1 of 2
    assert a["iou"] == pytest.approx([0.75, 0.6, 0.5])
    assert a["cm"].sum() == 16 and a["cm"][1, 1] == 3 and a["cm"][2, 0] == 1   # rows = generated mask


def test_alignment_iou_empty_cases():
    z = torch.zeros(4, 4, dtype=torch.long)
    both_empty = GM.alignment_iou(z, z, 3)
    assert both_empty["defect_iou"] == 1.0                       # both say "no defect": aligned
    assert both_empty["iou"][0] == 1.0 and math.isnan(both_empty["iou"][1]) and math.isnan(both_empty["iou"][2])
    assert GM.alignment_iou(z, GEN, 3)["defect_iou"] == 0.0      # a defect the segmenter does not see
    assert GM.alignment_iou(GEN, z, 3)["defect_iou"] == 0.0
    with pytest.raises(ValueError, match="differ in size"):
        GM.alignment_iou(z, torch.zeros(3, 4, dtype=torch.long), 3)


def test_sample_class_is_the_largest_defect_class():
    assert GM.sample_class(GEN) == 1                  # 4 px of class 1, 2 of class 2
    assert GM.sample_class(torch.zeros(3, 3)) == 0    # normal
    assert GM.sample_class(np.array([[2, 2, 1, 1]])) == 1   # tie: lowest index


def test_msssim_scales_fit_the_image_size():
    assert GM.msssim_betas(256, 256) == pytest.approx(tuple(b / sum(GM.MSSSIM_BETAS) for b in GM.MSSSIM_BETAS))
    assert len(GM.msssim_betas(128, 128)) == 4
    b64 = GM.msssim_betas(64, 64)
    assert len(b64) == 3 and sum(b64) == pytest.approx(1.0)
    assert len(GM.msssim_betas(S, 100)) == 3          # the short side decides
    assert len(GM.msssim_betas(12, 12)) == 1          # one scale: plain SSIM
    with pytest.raises(ValueError, match="smaller than the 11-px SSIM window"):
        GM.msssim_betas(10, 64)


def test_sample_pairs():
    assert GM.sample_pairs(4, None).tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
    sub = GM.sample_pairs(30, 50, seed=1)
    assert len(sub) == 50 and len({tuple(p) for p in sub.tolist()}) == 50 and bool((sub[:, 0] < sub[:, 1]).all())
    assert torch.equal(sub, GM.sample_pairs(30, 50, seed=1))
    assert len(GM.sample_pairs(1, None)) == 0


def test_identical_images_diversity_one_and_copy_share_one():
    img = smooth(0)
    images = img.expand(4, 3, S, S).clone()
    div = GM.msssim_diversity(images, [1, 1, 2, 2])
    assert div["overall"] == pytest.approx(1.0, abs=1e-5) and div["pairs"] == 2 and div["scales"] == 3
    assert div["per_class"][1][0] == pytest.approx(1.0, abs=1e-5) and div["per_class"][1][1] == 1
    mem = GM.memorisation(images, img[None], threshold=0.95)
    assert mem["copy_share"] == 1.0 and mem["nn_ssim_mean"] == pytest.approx(1.0, abs=1e-5)


def test_noise_images_are_diverse_and_no_copies():
    images = quantised(5, 3, S, S, seed=1)
    div = GM.msssim_diversity(images, [1] * 5)
    assert div["pairs"] == 10 and 0.0 <= div["overall"] < 0.2
    mem = GM.memorisation(images, quantised(6, 3, S, S, seed=2))
    assert mem["copy_share"] == 0.0 and mem["nn_ssim_mean"] < 0.2


def test_nearest_ssim_candidates_find_the_copy():
    ref = torch.stack([smooth(s) for s in range(8)])
    gen = torch.stack([ref[5], smooth(100)])
    exact, idx = GM.nearest_ssim(gen, ref)
    fast, fidx = GM.nearest_ssim(gen, ref, candidates=2)
    assert idx[0] == 5 and fidx[0] == 5 and fast[0] == pytest.approx(1.0, abs=1e-5)
    assert exact[0] == pytest.approx(1.0, abs=1e-5) and bool((fast <= exact + 1e-9).all())


class ToyFeatures(torch.nn.Module):
    """uint8 (N, 3, H, W) -> (N, 8) features: a fixed random projection of 4x4 pooled pixels."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(48, 8)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        return self.proj(torch.nn.functional.adaptive_avg_pool2d(x.float() / 255, 4).flatten(1))


def test_fid_kid_with_a_given_feature_extractor():
    a = GM.to_uint8(quantised(40, 3, 16, 16, seed=3))
    b = GM.to_uint8((quantised(40, 3, 16, 16, seed=4) * 0.5 + 0.5))
    same = GM.fid_kid(a, a, ToyFeatures(), kid_subsets=5, kid_subset_size=100)
    other = GM.fid_kid(a, b, ToyFeatures(), kid_subsets=5, kid_subset_size=100)
    assert abs(same["fid"]) < 1e-3 and same["kid_subset_size"] == 40
    assert other["fid"] > 100 * max(abs(same["fid"]), 1e-6) and other["kid_mean"] > same["kid_mean"]
    with pytest.raises(ValueError, match=">= 2 real"):
        GM.fid_kid(a[:1], a, ToyFeatures())


@pytest.fixture
def no_network(monkeypatch):
    """Any download attempt fails the test."""
    def refuse(*a, **k):
        raise AssertionError(f"network access attempted: {a[:1]}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_inception_missing_file_or_library_is_a_clear_message(no_network, tmp_path):
    with pytest.raises(GM.InceptionUnavailable, match=r"not found at .*missing\.pth: download .*"
                                                       r"weights-inception-2015-12-05-6726825d\.pth"):
        GM.inception_extractor(tmp_path / "missing.pth")
    from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

    if not _TORCH_FIDELITY_AVAILABLE:
        f = tmp_path / GM.INCEPTION_FILE
        f.write_bytes(b"x")
        with pytest.raises(GM.InceptionUnavailable, match="pip install torch-fidelity"):
            GM.inception_extractor(f)


# ------------------------------------------------------------------------ the evaluator
def results_and_batch():
    """4 generated samples: 0 and 1 the same picture with hole masks (class 1), 2 and 3
    noise with stain masks (class 2); the batch's real images: 0 and 1 are the generated
    picture itself (copies), 2 and 3 other noise."""
    pic = smooth(0)
    n2, n3 = quantised(3, S, S, seed=5), quantised(3, S, S, seed=6)
    m_hole = torch.zeros(S, S, dtype=torch.long)
    m_hole[:8, :6] = 1                                          # 48 px
    m_stain = torch.zeros(S, S, dtype=torch.long)
    m_stain[10:14, 10:14] = 2                                   # 16 px of stain
    m_stain[0:2, 0:2] = 1                                       # 4 px of hole: still a stain sample
    res = [GenerationResult(image=pic.clone(), mask=m_hole, seed=0, stage_seconds={"large": 0.3, "small": 0.1}),
           GenerationResult(image=pic.clone(), mask=m_hole, seed=1, stage_seconds={"large": 0.5, "small": 0.1}),
           GenerationResult(image=n2, mask=m_stain, seed=2, stage_seconds={"large": 0.3, "small": 0.3}),
           GenerationResult(image=n3, mask=m_stain, seed=3, stage_seconds={"large": 0.3, "small": 0.3})]
    real = torch.stack([pic, pic, quantised(3, S, S, seed=7), quantised(3, S, S, seed=8)])
    batch = {"image": real, "meta": [{"id": f"r{i}", "index": i} for i in range(4)]}
    return res, batch, (pic, n2, n3)


def test_evaluator_numbers_by_hand(no_network, tmp_path):
    ev = EVALUATORS.build({"type": "GenerationEvaluator"}, classes=["hole", "stain"])
    assert ev.main_metric == "msssim_diversity" and ev.greater_is_better is False
    res, batch, (pic, n2, n3) = results_and_batch()
    ev.reset()
    ev.process({**batch, "image": batch["image"][:2], "meta": batch["meta"][:2]}, res[:2])
    ev.process({**batch, "image": batch["image"][2:], "meta": batch["meta"][2:]}, res[2:])
    m = ev.compute()
    assert m["num_samples"] == 4
    assert (m["samples.normal"], m["samples.hole"], m["samples.stain"]) == (0, 2, 2)
    assert m["defect_pixel_share"] == pytest.approx((2 * 48 + 2 * 20) / (4 * S * S))
    assert m["pixel_share.stain"] == pytest.approx(2 * 16 / (4 * S * S))
    stain = GM.pairwise_msssim(torch.stack([n2, n3]), torch.tensor([[0, 1]]), GM.msssim_betas(S, S))[0].item()
    assert m["msssim_diversity.hole"] == pytest.approx(1.0, abs=1e-5)
    assert m["msssim_diversity.stain"] == pytest.approx(stain, abs=1e-6) and stain < 0.2
    assert m["msssim_diversity"] == pytest.approx((1.0 + stain) / 2, abs=1e-5)   # one pair per class
    assert "msssim_diversity.normal" not in m and m["msssim_pairs"] == 2 and m["msssim_scales"] == 3
    assert m["copy_share"] == 0.5                          # samples 0 and 1 copy a real image
    assert m["memorisation_reference"] == "the evaluated batches' real images"
    assert math.isnan(m["fid"]) and GM.INCEPTION_FILE in m["fid_note"] and "inception_weights" in m["fid_note"]
    assert "alignment_defect_iou" not in m

    line = ev.add_timing(m, [(1.0, None)] * 4)
    assert m["sec_per_sample"] == pytest.approx(0.55) and m["sec_per_sample_large"] == pytest.approx(0.35)
    assert m["sec_per_sample_small"] == pytest.approx(0.2) and "0.550 s/sample" in line
    text = ev.summary(m)
    assert "stain" in text and "fid is nan: skipped" in text
    paths = ev.save_artifacts(m, str(tmp_path))
    assert [Path(p).name for p in paths] == ["generated_grid.png", "diversity_per_class.png"]
    assert Image.open(paths[0]).width > 2 * S
    json.dumps({k: v for k, v in m.items()})                 # metrics.json-safe


def test_evaluator_fid_configured_but_unavailable_is_a_note(no_network, tmp_path):
    ev = GenerationEvaluator(classes=["hole", "stain"], fid={"inception_weights": str(tmp_path / "w.pth")})
    res, batch, _ = results_and_batch()
    ev.process(batch, res)
    m = ev.compute()
    assert math.isnan(m["fid"]) and "not found at" in m["fid_note"] and math.isnan(m["kid_mean"])


def test_evaluator_reference_dataset_is_the_memorisation_set(tmp_path):
    """``reference``: real images from a DATASETS config, resized to the generated size,
    the first ``max_reference`` of them; the batches' real images are then not used."""
    res, batch, (pic, n2, n3) = results_and_batch()
    root = tmp_path / "ref" / "good"
    root.mkdir(parents=True)
    big = torch.nn.functional.interpolate(pic[None], size=(2 * S, 2 * S), mode="bilinear", align_corners=False)[0]
    for name, im in (("a", big), ("b", quantised(3, 2 * S, 2 * S, seed=9)), ("c", n2)):
        Image.fromarray((im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(root / f"{name}.png")
    cfg = {"type": "ImageFolderDataset", "root": str(tmp_path / "ref")}
    ev = EVALUATORS.build({"type": "GenerationEvaluator", "reference": cfg, "max_reference": 2},
                          classes=["hole", "stain"])
    ev.process(batch, res)
    assert all("real" not in r for r in ev.records)
    m = ev.compute()
    assert m["num_reference"] == 2 and m["memorisation_reference"].startswith("evaluation.reference")
    assert m["copy_share"] == 0.5             # the picture, seen through a 2x resize; n2 is past max_reference
    ev3 = GenerationEvaluator(classes=["hole", "stain"], reference=cfg, max_reference=3)
    ev3.process(batch, res)
    assert ev3.compute()["copy_share"] == 0.75


def test_evaluator_options_are_checked():
    from defectkit.config import ConfigError

    with pytest.raises(ConfigError, match="evaluation.fid.featur"):
        GenerationEvaluator(fid={"featur": 64})
    with pytest.raises(ConfigError, match=r"evaluation.alignment.checkpoint: required"):
        GenerationEvaluator(alignment={"config": "x.yaml"})
    with pytest.raises(FileNotFoundError, match="evaluation.alignment.checkpoint: file not found"):
        GenerationEvaluator(alignment={"config": "x.yaml", "checkpoint": "nope.pth"})
    with pytest.raises(TypeError, match="GenerationResult"):
        GenerationEvaluator().process({}, [object()])


# --------------------------------------------------------------- alignment segmenter
@pytest.fixture
def tiny_segmenter(tmp_path):
    """A tiny UNet config (input resized to 32x32) and a checkpoint whose raw weights
    predict background everywhere and whose EMA weights predict class 1 everywhere."""
    cfg = {"model": {"type": "UNet", "base_channels": 4, "depth": 2},
           "data": {"test": {"type": "MaskFolderDataset", "img_dir": "none", "mask_dir": "none",
                             "classes": ["hole", "stain"],
                             "pipeline": [{"type": "Resize", "scale": [32, 32], "keep_ratio": False}]}}}
    path = tmp_path / "unet_tiny.yaml"
    path.write_text(json.dumps(cfg))                 # JSON is YAML
    model = MODELS.build(cfg["model"], classes=["hole", "stain"])

    def constant(cls):
        torch.nn.init.zeros_(model.head.weight)
        with torch.no_grad():
            model.head.bias.copy_(torch.tensor([-5.0, -5.0, -5.0]))
            model.head.bias[cls] = 5.0
        return {k: v.clone() for k, v in model.state_dict().items()}

    ckpt = tmp_path / "seg.pth"
    torch.save({"state_dict": constant(0), "ema": {"state_dict": constant(1)},
                "meta": {"classes": ["hole", "stain"]}}, ckpt)
    return path, ckpt


def test_alignment_scores_with_a_checkpoint(tiny_segmenter):
    cfg, ckpt = tiny_segmenter
    res, _, _ = results_and_batch()
    images = torch.stack([r.image for r in res])
    masks = torch.stack([r.mask for r in res])
    masks[1] = 0                                             # a normal sample
    raw = load_alignment_segmenter(str(cfg), str(ckpt), "cpu", use_ema=False)
    assert raw.classes == ["hole", "stain"]
    pred = raw.predict_masks(images)
    assert pred.shape == (4, S, S) and int(pred.max()) == 0  # back at the generated size
    assert alignment_scores(raw, images, masks) == [0.0, 1.0, 0.0, 0.0]
    ema = load_alignment_segmenter(str(cfg), str(ckpt), "cpu")   # EMA weights: all class 1
    hole, stain = 48 / (S * S), 20 / (S * S)
    assert alignment_scores(ema, images, masks) == pytest.approx([hole, 0.0, stain, stain])


def test_alignment_checkpoint_errors_name_the_file(tiny_segmenter, tmp_path):
    cfg, _ = tiny_segmenter
    other = MODELS.build({"type": "UNet", "base_channels": 8, "depth": 2}, classes=["hole", "stain"])
    wide = tmp_path / "wide.pth"
    torch.save({"state_dict": other.state_dict(), "meta": {"classes": ["hole", "stain"]}}, wide)
    # checkpoint_io's strict loader and type check (the engine's init_model uses the same): CheckpointErrors
    with pytest.raises(CheckpointError, match=r"wide\.pth \(the UNet of .*unet_tiny\.yaml\): weights do not match "
                                              r"the model: .*shape mismatches"):
        load_alignment_segmenter(str(cfg), str(wide), "cpu")
    znet = tmp_path / "znet.pth"
    torch.save({"state_dict": {}, "meta": {"config": {"model": {"type": "ZNet"}}}}, znet)
    with pytest.raises(CheckpointError, match=r"znet\.pth: a checkpoint of model type 'ZNet', but the config's "
                                              r"model.type is 'UNet': the alignment segmenter \(.*unet_tiny\.yaml\)"):
        load_alignment_segmenter(str(cfg), str(znet), "cpu")
    text = tmp_path / "text.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"text\.pth: corrupt, truncated or not a PyTorch checkpoint"):
        load_alignment_segmenter(str(cfg), str(text), "cpu")
    with pytest.raises(CheckpointError, match=r"checkpoint file not found: .*nope\.pth"):
        load_alignment_segmenter(str(cfg), str(tmp_path / "nope.pth"), "cpu")


def test_alignment_segmenter_loads_like_init_model(tiny_segmenter, tmp_path):
    """The loader shares checkpoint_io with the engine's init_model: a DDP checkpoint
    (``module.`` keys) loads, and both load the same weights from the same file."""
    from defectkit.engine.builders import init_model

    cfg, ckpt = tiny_segmenter
    saved = torch.load(ckpt, weights_only=True)
    ddp = tmp_path / "ddp.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in saved["ema"]["state_dict"].items()},
                "meta": saved["meta"]}, ddp)
    seg = load_alignment_segmenter(str(cfg), str(ddp), "cpu")
    engine, _ = init_model(json.loads(Path(cfg).read_text()), str(ckpt), "cpu", use_ema=True)
    for k, v in engine.state_dict().items():
        assert torch.equal(seg.model.state_dict()[k], v), k


def test_alignment_errors_are_user_errors_under_the_tools(tiny_segmenter, tmp_path):
    """tools/test.py builds the evaluator and meets the segmenter's errors while testing:
    they must be user errors (ConfigError / CheckpointError: one ``<kind> error:`` line under
    run_main, no traceback) naming the key and the file, and torch's advice to set
    weights_only=False is not shown."""
    from defectkit.config import ConfigError

    cfg, _ = tiny_segmenter
    text = tmp_path / "text.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError) as e:
        load_alignment_segmenter(str(cfg), str(text), "cpu")
    assert "weights_only` set to `False`" not in str(e.value)
    ev = GenerationEvaluator(classes=["hole", "stain"], alignment={"config": str(cfg), "checkpoint": str(text)})
    res, batch, _ = results_and_batch()
    with pytest.raises(CheckpointError, match=r"evaluation.alignment: .*text\.pth: corrupt"):
        ev.process(batch, res)
    ev = GenerationEvaluator(classes=["hole", "stain"], alignment={"config": str(tmp_path / "none.yaml"),
                                                                   "checkpoint": str(text)})
    with pytest.raises(ConfigError, match=r"evaluation.alignment: .*none\.yaml"):
        ev.process(batch, res)
    with pytest.raises(ConfigError, match="evaluation.copy_ssim_threshold"):
        GenerationEvaluator(copy_ssim_threshold=2)


def test_evaluator_alignment_metrics(tiny_segmenter):
    cfg, ckpt = tiny_segmenter
    ev = EVALUATORS.build({"type": "GenerationEvaluator", "max_pairs": 1,
                           "alignment": {"config": str(cfg), "checkpoint": str(ckpt), "use_ema": False}},
                          classes=["hole", "stain"])
    assert ev.main_metric == "alignment_defect_iou" and ev.greater_is_better
    assert ev.metric_directions["msssim_diversity"] is False and ev.metric_directions["copy_share"] is False
    res, batch, _ = results_and_batch()
    ev.process(batch, res)
    m = ev.compute()
    assert m["alignment_defect_iou"] == 0.0 and m["alignment_defect_iou_pooled"] == 0.0
    bg = 1 - (2 * 48 + 2 * 20) / (4 * S * S)                   # background IoU = its share of the pixels
    assert m["alignment_iou.background"] == pytest.approx(bg)
    assert m["alignment_iou.hole"] == 0.0 and m["alignment_miou"] == pytest.approx(bg / 3)
    assert "align IoU" in ev.summary(m)
    wrong = GenerationEvaluator(classes=["scratch"], alignment={"config": str(cfg), "checkpoint": str(ckpt)})
    with pytest.raises(ValueError, match=r"segmenter .* has classes \['hole', 'stain'\] but the generated "
                                         r"masks use \['scratch'\]"):
        wrong.process(batch, res)


def test_evaluation_imports_neither_models_nor_engine():
    from test_layers import PKG, imported_modules

    for name in ("generation.py", "generation_metrics.py"):
        bad = [m for _, m in imported_modules(PKG / "evaluation" / name)
               if m.startswith(("defectkit.models", "defectkit.engine", "defectkit.data"))]
        assert bad == [], name
