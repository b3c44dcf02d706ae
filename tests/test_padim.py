"""PaDiM: streaming statistics vs numpy/scipy, scoring, calibration split, tools, export."""
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from defectkit.models.anomaly.padim import PaDiM, StreamingGaussian, read_channel_indices
from helpers_tools import tool

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(backbone="small_cnn", pretrained=None, num_features=24, image_size=32, crop_size=None,
            layers=["layer1", "layer2", "layer3"])


def _texture(rng, size):
    base = rng.normal(0.5, 0.04, (size // 4, size // 4, 3))
    img = np.kron(base, np.ones((4, 4, 1))) + rng.normal(0, 0.02, (size, size, 3))
    return np.clip(img, 0, 1)


def make_obvious_mvtec(root: Path, n_train=24, n_good=6, n_bad=6, size=64, seed=0) -> Path:
    """An MVTec-layout folder: smooth grey textures; the defect is a black 14x14 square."""
    rng = np.random.default_rng(seed)
    for d in ("train/good", "test/good", "test/blob", "ground_truth/blob"):
        (root / d).mkdir(parents=True, exist_ok=True)

    def save(arr, path):
        Image.fromarray((arr * 255).round().astype(np.uint8)).save(path)

    for i in range(n_train):
        save(_texture(rng, size), root / "train/good" / f"{i:03d}.png")
    for i in range(n_good):
        save(_texture(rng, size), root / "test/good" / f"{i:03d}.png")
    for i in range(n_bad):
        img, mask = _texture(rng, size), np.zeros((size, size), np.uint8)
        y, x = rng.integers(4, size - 18, 2)
        img[y:y + 14, x:x + 14] = 0.0
        mask[y:y + 14, x:x + 14] = 255
        save(img, root / "test/blob" / f"{i:03d}.png")
        Image.fromarray(mask).save(root / "ground_truth/blob" / f"{i:03d}_mask.png")
    return root


def loader_of(tensors, batch_size):
    return [{"image": tensors[i:i + batch_size],
             "meta": [{"path": f"img{j}"} for j in range(i, min(i + batch_size, len(tensors)))]}
            for i in range(0, len(tensors), batch_size)]


# ----------------------------------------------------------------- statistics
def test_streaming_gaussian_equals_numpy_float64():
    rng = np.random.default_rng(0)
    P, N, d = 7, 53, 5
    x = rng.normal(3.0, 2.0, (P, N, d)) * rng.uniform(0.5, 4, d) + 100.0   # offset: cancellation-prone
    acc = StreamingGaussian(P, d, chunk=3)
    for a in range(0, N, 8):                                               # uneven batches
        acc.update(torch.from_numpy(x[:, a:a + 8]).float())
    np.testing.assert_allclose(acc.mean().numpy(), x.mean(1), rtol=1e-6)
    for a, b, cov in acc.covariances(0.01):
        for p in range(a, b):
            ref = np.cov(x[p].astype(np.float32).astype(np.float64), rowvar=False) + 0.01 * np.eye(d)
            np.testing.assert_allclose(cov[p - a].numpy(), ref, rtol=2e-5, atol=2e-5)


def test_fitted_model_matches_numpy_and_scipy_mahalanobis():
    from scipy.spatial.distance import mahalanobis

    torch.manual_seed(0)
    model = PaDiM(**TINY, calibration={"val_ratio": 0.0})
    images = torch.rand(20, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(loader_of(images, 6))
    with torch.no_grad():
        emb = model.embed(model.preprocess(images)).double()             # (N, d, h, w)
    e = emb.flatten(2).permute(2, 0, 1).numpy()                           # (HW, N, d)
    np.testing.assert_allclose(model.mean.numpy(), e.mean(1), rtol=1e-5, atol=1e-5)
    test = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        t_emb = model.embed(model.preprocess(test))
        dist = model.mahalanobis(t_emb).flatten(1).numpy()                # (B, HW)
    t = t_emb.double().flatten(2).numpy()                                 # (B, d, HW)
    for p in (0, 5, e.shape[0] - 1):
        cov = np.cov(e[p], rowvar=False) + 0.01 * np.eye(e.shape[2])
        vi = np.linalg.inv(cov)
        np.testing.assert_allclose(model.precision()[p].double().numpy(), vi, rtol=1e-3, atol=1e-3)
        for b in range(3):
            ref = mahalanobis(t[b, :, p], e[p].mean(0), vi)
            assert dist[b, p] == pytest.approx(ref, rel=1e-4, abs=1e-4)


def test_single_image_fit_is_finite_with_warning():
    model = PaDiM(**TINY, calibration={"val_ratio": 0.0})
    with pytest.warns(RuntimeWarning, match="N - 1 = 0"):
        model.fit(loader_of(torch.rand(1, 3, 32, 32), 1))
    assert torch.isfinite(model.precision_factor).all() and torch.isfinite(model.mean).all()
    # Σ = ε·I -> precision = I / ε
    torch.testing.assert_close(model.precision()[0], torch.eye(24) / 0.01)
    with pytest.warns(RuntimeWarning, match="no validation image"):
        model._fit_thresholds()
    res = model.predict({"image": torch.rand(2, 3, 32, 32)})
    assert all(np.isfinite(r.score) for r in res) and res[0].pred_label is None


def test_fit_skips_defective_training_images():
    torch.manual_seed(0)
    model = PaDiM(**TINY, calibration={"val_ratio": 0.0})
    batches = loader_of(torch.rand(6, 3, 32, 32), 3)
    for b in batches:
        b["is_defective"] = torch.tensor([0, 1, 0])
    with pytest.warns(RuntimeWarning, match="skipped 2 training images labelled defective"):
        model.fit(batches)
    assert model.record["num_train"] == 4 and model.record["skipped_defective"] == 2


def test_channel_selection_seeded_and_explicit(tmp_path):
    a, b = PaDiM(**TINY, seed=3), PaDiM(**TINY, seed=3)
    assert torch.equal(a.channel_idx, b.channel_idx) and len(a.channel_idx) == 24
    assert not torch.equal(a.channel_idx, PaDiM(**TINY, seed=4).channel_idx)
    (tmp_path / "idx.json").write_text(json.dumps([5, 1, 100, 7]))
    assert read_channel_indices(str(tmp_path / "idx.json")) == [5, 1, 100, 7]
    m = PaDiM(**{**TINY, "num_features": None}, channel_indices=str(tmp_path / "idx.json"))
    assert m.channel_idx.tolist() == [1, 5, 7, 100] and m.num_features == 4
    # the embedding is exactly the full concatenation's selected channels
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        feats = m.backbone(m.preprocess(x))
        full = torch.cat([torch.nn.functional.interpolate(f, size=feats["layer1"].shape[-2:], mode="nearest")
                          for f in feats.values()], 1)
        torch.testing.assert_close(m.embed(m.preprocess(x)), full[:, [1, 5, 7, 100]])
    with pytest.raises(ValueError, match="channel_indices"):
        PaDiM(**{**TINY, "num_features": None}, channel_indices=[0, 10_000])


def test_semi_orthogonal_and_float16_precision():
    torch.manual_seed(0)
    so = PaDiM(**TINY, selection="semi_orthogonal")
    w = so.projection
    torch.testing.assert_close(w.t() @ w, torch.eye(24), atol=1e-5, rtol=0)
    imgs = torch.rand(16, 3, 32, 32)
    torch.manual_seed(1)
    m32 = PaDiM(**TINY, calibration={"val_ratio": 0.0})
    torch.manual_seed(1)                                   # same random backbone
    m16 = PaDiM(**TINY, precision_dtype="float16", calibration={"val_ratio": 0.0})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for m in (m32, m16, so):
            m.fit(loader_of(imgs, 8))
    assert m16.precision_factor.element_size() * 2 == m32.precision_factor.element_size()
    test = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        d32, d16 = m32.raw_maps(test), m16.raw_maps(test)
        assert torch.isfinite(so.raw_maps(test)).all()
    torch.testing.assert_close(d16, d32, rtol=5e-3, atol=1e-3)


# ----------------------------------------------------------------- end to end
def _cfg(root, extra_val=None):
    cfg = {
        "model": {"type": "PaDiM", "backbone": "resnet18", "pretrained": None, "num_features": 48,
                  "image_size": 64, "crop_size": None, "calibration": {"val_ratio": 0.25}},
        "data": {"train": {"type": "MVTecDataset", "root": str(root), "split": "train"},
                 "test": {"type": "MVTecDataset", "root": str(root), "split": "test"},
                 "batch_size": 8, "num_workers": 0, "shuffle": False},
        "evaluation": {"type": "AnomalyEvaluator", "num_overlays": 2},
        "train": {"epochs": 1}, "seed": 0,
    }
    if extra_val:
        cfg["data"]["val"] = extra_val
    return cfg


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    from defectkit.engine import train

    tmp = tmp_path_factory.mktemp("padim")
    root = make_obvious_mvtec(tmp / "mvtec")
    cfg = _cfg(root)
    work = tmp / "work"
    train(cfg, work_dir=work)
    return cfg, work, root


def test_end_to_end_fit_test_obvious_defect(fitted, tmp_path):
    import yaml

    cfg, work, root = fitted
    cfg_path = tmp_path / "padim.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "test"
    tool("test").main([str(cfg_path), str(work / "latest.pth"), "--out-dir", str(out), "--batch-size", "4"])
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics["image_auroc"] > 0.9, metrics
    assert metrics["pixel_auroc"] > 0.9 and metrics["aupro"] > 0.5
    assert (out / "roc.png").is_file() and (out / "pro.png").is_file()
    assert len(list((out / "overlays").glob("*.png"))) == 2
    # infer on a new image from the checkpoint alone
    tool("infer").main([str(cfg_path), str(work / "latest.pth"), str(root / "test/blob/000.png"),
                        "--out-dir", str(tmp_path / "infer")])
    res = json.loads((tmp_path / "infer/results.json").read_text())
    assert res[0]["pred_label"] == 1


def test_thresholds_never_touch_test_data(fitted):
    from defectkit.engine import build_dataset, init_model

    cfg, work, root = fitted
    model, _ = init_model(cfg, str(work / "latest.pth"), "cpu")
    rec = model.record
    train_paths = {r.img_path for r in build_dataset(cfg["data"]["train"]).records}
    test_paths = {r.img_path for r in build_dataset(cfg["data"]["test"]).records}
    assert rec["sources"] and set(rec["sources"]) <= train_paths
    assert not set(rec["sources"]) & test_paths
    assert set(rec["sources"]) == set(rec["train_held_out"])
    assert rec["num_train"] + len(rec["train_held_out"]) == len(train_paths)
    assert rec["image_threshold_method"].startswith("quantile")   # no abnormal validation image
    assert model.calibrated


def test_labelled_validation_images_use_f1_thresholds(tmp_path):
    from defectkit.engine import Trainer

    root = make_obvious_mvtec(tmp_path / "mvtec", n_train=12)
    val = make_obvious_mvtec(tmp_path / "val", n_train=1, seed=5)
    cfg = _cfg(root, extra_val={"type": "FolderAnomalyDataset", "normal_dir": str(val / "test/good"),
                                "abnormal_dir": str(val / "test/blob"),
                                "mask_dir": str(val / "ground_truth/blob")})
    t = Trainer(cfg, work_dir=tmp_path / "work")
    try:
        t.train()
    finally:
        t.close()
    rec = t.model.record
    assert rec["image_threshold_method"] == "f1_adaptive" and rec["pixel_threshold_method"] == "f1_adaptive"
    assert rec["num_val_abnormal"] == 6
    assert not any(str(root / "test") in s for s in rec["sources"])


def test_checkpoint_holds_everything(fitted):
    from defectkit.engine import init_model
    from defectkit.engine.checkpoint import load_checkpoint

    cfg, work, root = fitted
    sd = load_checkpoint(work / "latest.pth")["state_dict"]
    for k in ("channel_idx", "mean", "precision_factor", "pixel_mean", "image_threshold", "pixel_max", "_extra_state"):
        assert k in sd
    assert sd["_extra_state"]["image_size"] == 64
    other = dict(cfg, model={**cfg["model"], "image_size": 96})
    with pytest.raises(Exception):
        init_model(other, str(work / "latest.pth"), "cpu")


def test_onnx_export_parity(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    torch.manual_seed(0)
    model = PaDiM(**TINY, calibration={"val_ratio": 0.25}).eval()
    images = torch.rand(24, 3, 32, 32)
    model.fit(loader_of(images, 8))
    path = tool("export").export_onnx(model, tmp_path / "padim.onnx", 48, 40)   # resize inside the graph
    test = torch.rand(3, 3, 48, 40)
    test[0, :, 10:30, 10:30] = 0.0                                                  # an anomalous one
    ref = tool("export").export_wrapper(model)(test)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": test.numpy()})
    assert np.abs(got[0] - ref[0].detach().numpy()).max() < 1e-4                    # normalised score map
    assert np.abs(got[2] - ref[2].detach().numpy()).max() < 1e-4 * max(1.0, float(ref[2].abs().max()))
    norm = ref[0].detach()
    assert float(((norm > 0) & (norm < 1)).float().mean()) > 0.1    # not saturated: the comparison means something


def test_configs_build():
    from defectkit.config import load_config

    for name in ("padim_r18_rd100_mvtec", "padim_r18_rd100_256_mvtec", "padim_wr50_rd550_mvtec",
                 "padim_r18_rd100_synth_texture", "padim_r18_rd100_synth_bottle", "padim_r18_rd100_folder",
                 "padim_tiny_synth"):
        cfg = load_config(ROOT / "configs/padim" / f"{name}.yaml")
        assert cfg["model"]["type"] == "PaDiM"
    cfg = load_config(ROOT / "configs/padim/padim_r18_rd100_mvtec.yaml", ["data.category=cable"])
    assert cfg["data"]["train"]["category"] == cfg["data"]["test"]["category"] == "cable"
    assert cfg["evaluation"]["category"] == "cable"
