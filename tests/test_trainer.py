"""Trainer behaviour on the toy model: learning, exact resume, load_from, non-finite loss,
best/latest checkpoints, logs, the fit path, config errors."""
import json
import math
from pathlib import Path

import pytest
import torch
from helpers_toy import toy_config

from defectkit.config import ConfigError
from defectkit.engine import (NonFiniteLossError, Trainer, init_model, load_checkpoint, run_inference,
                              train)
from defectkit.engine.builders import build_eval_loader
from defectkit.engine.checkpoint import find_latest_checkpoint

LOSS_KEYS = ("loss", "loss_cls", "loss_reg")


def _losses(history):
    return [tuple(h[k] for k in LOSS_KEYS) for h in history]


def _run(cfg, work_dir, **kw):
    t = Trainer(cfg, work_dir=work_dir, **kw)
    try:
        r = t.train()
    finally:
        t.close()
    return t, r


def _assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_loss_decreases(tmp_path):
    cfg = toy_config(train={"epochs": 8}, lr_schedule={"type": "ConstantLR"}, evaluation=None)
    cfg["optimizer"] = {"type": "Adam", "lr": 0.05}
    r = train(cfg, work_dir=tmp_path)
    per_epoch = [sum(h["loss"] for h in r.history[i:i + 4]) / 4 for i in range(0, 32, 4)]
    assert per_epoch[-1] < 0.5 * per_epoch[0], per_epoch


def test_resume_epoch_based_equals_uninterrupted(tmp_path):
    # dropout draws from the global RNG and the data are augmented: both must line up
    cfg = toy_config(model={"dropout": 0.3}, train={"epochs": 4})
    ref, ref_r = _run(cfg, tmp_path / "ref")

    crash = toy_config(model={"dropout": 0.3, "crash_at_call": 9}, train={"epochs": 4})   # dies in epoch 3
    first = Trainer(crash, work_dir=tmp_path / "cut")
    with pytest.raises(RuntimeError, match="simulated crash"):
        first.train()
    first.close()
    assert first.iter == 8 and find_latest_checkpoint(tmp_path / "cut").name == "epoch_2.pth"

    second, second_r = _run(cfg, tmp_path / "cut", resume="auto")
    assert second_r.history[0]["iter"] == 9
    assert _losses(first.history) + _losses(second_r.history) == _losses(ref_r.history)
    _assert_same_weights(ref.model.state_dict(), second.model.state_dict())
    _assert_same_weights(load_checkpoint(tmp_path / "ref" / "latest.pth")["state_dict"],
                         load_checkpoint(tmp_path / "cut" / "latest.pth")["state_dict"])
    assert second_r.best_metric == ref_r.best_metric
    # scalars.jsonl of the resumed run reads like the uninterrupted one (iterations 1..16 once)
    rows = [json.loads(l) for l in (tmp_path / "cut" / "scalars.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows if r["mode"] == "train"] == list(range(1, 17))
    assert [r["iter"] for r in rows if r["mode"] == "val"] == [4, 8, 12, 16]


def test_resume_iteration_based_mid_epoch(tmp_path):
    base = {"max_iters": 14, "checkpoint_interval": 3, "val_interval": 5}
    lr = {"type": "StepLR", "milestones": [6], "by_epoch": False, "warmup_iters": 2}
    cfg = toy_config(model={"dropout": 0.3}, train=base, lr_schedule=lr)
    ref, ref_r = _run(cfg, tmp_path / "ref")
    assert ref_r.iter == 14

    crash = toy_config(model={"dropout": 0.3, "crash_at_call": 9}, train=base, lr_schedule=lr)
    first = Trainer(crash, work_dir=tmp_path / "cut")
    with pytest.raises(RuntimeError):
        first.train()
    first.close()
    # iter_6.pth: 4 iterations per epoch, so the resumed run starts 2 batches into epoch 2
    last = find_latest_checkpoint(tmp_path / "cut")
    assert last.name == "iter_6.pth"
    second, second_r = _run(cfg, tmp_path / "cut", resume=last)
    assert second_r.history[0]["iter"] == 7
    assert _losses(first.history[:6]) + _losses(second_r.history) == _losses(ref_r.history)
    _assert_same_weights(ref.model.state_dict(), second.model.state_dict())


def test_load_from_is_weights_only(tmp_path):
    _, r = _run(toy_config(train={"epochs": 2}, evaluation=None), tmp_path / "a")
    src = load_checkpoint(r.last_checkpoint)
    t = Trainer(toy_config(train={"epochs": 1}, evaluation=None), work_dir=tmp_path / "b",
                load_from=r.last_checkpoint)
    try:
        assert t.epoch == 0 and t.iter == 0 and t.best is None
        assert t.optimizer.state_dict()["state"] == {}            # fresh optimizer
        _assert_same_weights(src["state_dict"], t.model.state_dict())
        assert t.load_report.clean
        res = t.train()
        assert res.history[0]["iter"] == 1
    finally:
        t.close()
    # a checkpoint of a differently-shaped model loads non-strictly with a report
    t = Trainer(toy_config(model={"hidden": 4}, train={"epochs": 1}, evaluation=None),
                work_dir=tmp_path / "c", load_from=r.last_checkpoint)
    t.close()
    assert "conv.weight: (8, 3, 3, 3) vs (4, 3, 3, 3)" in t.load_report.mismatched
    assert "train.log" in {p.name for p in (tmp_path / "c").iterdir()}
    assert "shape mismatches" in (tmp_path / "c" / "train.log").read_text()


def test_non_finite_loss_stops_with_details(tmp_path):
    cfg = toy_config(model={"nan_at_call": 6}, train={"epochs": 3}, evaluation=None)
    t = Trainer(cfg, work_dir=tmp_path)
    with pytest.raises(NonFiniteLossError) as info:
        t.train()
    t.close()
    msg = str(info.value)
    assert "iteration 6 (epoch 2)" in msg
    assert "loss_cls=nan" in msg and "loss_reg=0.000" in msg and "loss=nan" in msg
    assert str(tmp_path / "epoch_1.pth") in msg
    assert info.value.iteration == 6 and math.isnan(info.value.terms["loss_cls"])
    assert "non-finite loss at iteration 6" in (tmp_path / "train.log").read_text()
    # no step was taken with the NaN: the weights are still finite
    assert all(torch.isfinite(p).all() for p in t.model.parameters())


def test_best_checkpoint_and_max_keep(tmp_path):
    cfg = toy_config(train={"epochs": 5, "max_keep_ckpts": 2},
                     evaluation={"type": "_ToyEvaluator", "scripted": [0.1, 0.7, 0.3, 0.5, 0.2]})
    _, r = _run(cfg, tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".pth")
    assert names == ["best_accuracy.pth", "epoch_4.pth", "epoch_5.pth", "latest.pth"]
    best = load_checkpoint(tmp_path / "best_accuracy.pth")
    assert best["meta"]["epoch"] == 2 and best["meta"]["best_metric"]["value"] == 0.7
    assert r.best_metric["epoch"] == 2 and r.best_checkpoint == tmp_path / "best_accuracy.pth"
    assert load_checkpoint(tmp_path / "latest.pth")["meta"]["epoch"] == 5
    assert (tmp_path / "last_checkpoint").read_text().strip() == "epoch_5.pth"


def test_save_best_lower_is_better_by_name(tmp_path):
    cfg = toy_config(train={"epochs": 3, "save_best": "count"},
                     evaluation={"type": "_ToyEvaluator"})
    _, r = _run(cfg, tmp_path)
    assert r.best_metric["name"] == "count" and r.best_metric["epoch"] == 1   # equal later values: no change


def test_work_dir_contents_and_logs(tmp_path):
    cfg = toy_config(train={"epochs": 2, "log_interval": 2})
    _run(cfg, tmp_path)
    saved = (tmp_path / "config.yaml").read_text()
    assert "seed: 0" in saved and "_ToyClassifier" in saved and "device: cpu" in saved
    log = (tmp_path / "train.log").read_text()
    assert "torch" in log and "world_size" in log and "device" in log
    assert "Epoch [1/2][2/4]  lr:" in log and "eta:" in log and "data_time:" in log and "memory:" in log
    rows = [json.loads(l) for l in (tmp_path / "scalars.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["mode"] == "train"]
    val_rows = [r for r in rows if r["mode"] == "val"]
    assert [r["iter"] for r in train_rows] == [2, 4, 6, 8]
    assert {"step", "epoch", "iter", "lr", "loss", "loss_cls", "time", "data_time"} <= set(train_rows[0])
    assert [(r["epoch"], r["iter"]) for r in val_rows] == [(1, 4), (2, 8)]
    assert "accuracy" in val_rows[0] and "ids" not in val_rows[0]


def test_config_typo_raises_before_any_work(tmp_path):
    cfg = toy_config(train={"epocs": 3})
    with pytest.raises(ConfigError, match="train.epocs: unknown key; did you mean 'epochs'"):
        Trainer(cfg, work_dir=tmp_path / "w")
    assert not (tmp_path / "w").exists()
    with pytest.raises(ConfigError, match="train.max_iters: must be a positive integer"):
        Trainer(toy_config(train={"max_iters": 0}), work_dir=tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_fit_path_for_statistical_models(tmp_path):
    cfg = toy_config(optimizer=None, lr_schedule=None)
    cfg["model"] = {"type": "_ToyFitModel"}
    t, r = _run(cfg, tmp_path)
    assert t.fit_mode and t.model.fit_calls == 1
    assert r.metrics["count"] == 13 and r.metrics["accuracy"] > 0.5
    ck = load_checkpoint(tmp_path / "latest.pth")
    assert torch.equal(ck["state_dict"]["means"], t.model.means) and ck["optimizer"] is None
    model, meta = init_model(cfg, tmp_path / "latest.pth", device="cpu")
    assert torch.equal(model.means, t.model.means) and meta["classes"] == ["ok", "defect"]
    # resuming a fitted run does not fit again
    t2, _ = _run(cfg, tmp_path, resume="auto")
    assert t2.model.fit_calls == 0


def test_amp_on_cpu_warns_and_trains_fp32(tmp_path):
    with pytest.warns(RuntimeWarning, match="AMP needs CUDA"):
        t = Trainer(toy_config(train={"epochs": 1, "amp": True, "grad_clip": 0.5}, evaluation=None),
                    work_dir=tmp_path)
    try:
        assert not t.amp
        r = t.train()
    finally:
        t.close()
    assert all("grad_norm" in h for h in r.history)


def test_run_inference_att_split(tmp_path):
    import helpers_toy as H

    model = H._ToyClassifier()
    ds = H._ToyDataset(num_samples=7, augment=False)
    ev = H._ToyEvaluator()
    out = run_inference(model, build_eval_loader(ds, batch_size=3), ev, device="cpu")
    assert out.metrics["count"] == 7 and out.metrics["ids"] == list(range(7))
    assert len(out.results) == 7 and [m["id"] for m in out.metas] == list(range(7))
    assert [d for _, d in out.times] == [i % 2 for i in range(7)]
    t = out.timing
    assert t["num_images"] == 7 and t["att_ms"] > 0
    normal = [s for s, d in out.times if d == 0]
    assert t["att_normal_ms"] == pytest.approx(1000 * sum(normal) / len(normal))
    assert model.training       # mode restored


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_amp_training(tmp_path):
    cfg = toy_config(train={"epochs": 2, "amp": True, "grad_clip": 1.0}, device="cuda")
    t, r = _run(cfg, tmp_path)
    assert t.amp and t.scaler.is_enabled() and t.device.type == "cuda"
    ck = load_checkpoint(tmp_path / "latest.pth")
    assert ck["scaler"] is not None and ck["state_dict"]["fc.weight"].device.type == "cpu"
    assert all(math.isfinite(h["loss"]) for h in r.history)
    t2, r2 = _run(toy_config(train={"epochs": 3, "amp": True, "grad_clip": 1.0}, device="cuda"),
                  tmp_path, resume="auto")
    assert r2.history[0]["iter"] == 9


def test_tensorboard_and_config_path_entry(tmp_path, monkeypatch):
    import yaml

    cfg = toy_config(train={"epochs": 1, "tensorboard": True})
    path = tmp_path / "toy_e1.yaml"
    path.write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)
    r = train(path)                                   # a file path: work_dirs/<stem>
    assert r.work_dir == Path("work_dirs/toy_e1")
    assert list((tmp_path / "work_dirs/toy_e1/tb").glob("events.out.tfevents.*"))


def test_seed_and_determinism_settings(tmp_path):
    t = Trainer(toy_config(seed=None, train={"epochs": 1}, evaluation=None), work_dir=tmp_path,
                deterministic=True)
    try:
        assert isinstance(t.seed, int) and torch.are_deterministic_algorithms_enabled()
        t.train()
        assert f"seed: {t.seed}" in (tmp_path / "config.yaml").read_text()
    finally:
        t.close()
        torch.use_deterministic_algorithms(False)
    assert load_checkpoint(tmp_path / "latest.pth")["meta"]["seed"] == t.seed
    # resuming reuses the checkpoint's seed (the data order depends on it)
    t2 = Trainer(toy_config(seed=None, train={"epochs": 2}, evaluation=None), work_dir=tmp_path, resume="auto")
    t2.close()
    assert t2.seed == t.seed and t2.epoch == 1
    # resume="auto" in an empty work dir starts from scratch; a missing path is an error
    t3 = Trainer(toy_config(), work_dir=tmp_path / "empty", resume="auto")
    t3.close()
    assert t3.iter == 0 and t3.resume_path is None
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        Trainer(toy_config(), work_dir=tmp_path / "x", resume=tmp_path / "nope.pth")
