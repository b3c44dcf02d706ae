"""EMA of the weights (``train.ema``): closed form, resume, evaluation, ``init_model(use_ema=)``."""
from __future__ import annotations

import pytest
import torch

from defectkit.engine import init_model, load_checkpoint, save_checkpoint
from defectkit.engine.hooks import HookBase
from defectkit.registry import HOOKS
from defectkit.engine.checkpoint import make_checkpoint, make_meta

from helpers_toy import toy_config


def _toy_ckpt_with_ema(tmp_path):
    cfg = toy_config()
    from defectkit.engine import build_model

    model = build_model(cfg["model"], ["ok", "defect"])
    ckpt = make_checkpoint(model, make_meta(cfg, 1, 4, 0, ["ok", "defect"]))
    ema = {k: v + 1.0 if v.is_floating_point() else v.clone() for k, v in ckpt["state_dict"].items()}
    ckpt["ema"] = {"state_dict": ema, "num_updates": 4, "decay": 0.9}
    path = save_checkpoint(ckpt, tmp_path / "ema.pth")
    return cfg, path, ckpt["state_dict"], ema


def test_init_model_uses_ema_unless_asked_not_to(tmp_path):
    cfg, path, raw, ema = _toy_ckpt_with_ema(tmp_path)
    m, meta = init_model(cfg, path, "cpu")
    assert meta["weights"] == "ema"
    assert torch.equal(m.state_dict()["fc.weight"], ema["fc.weight"])
    m, meta = init_model(cfg, path, "cpu", use_ema=False)
    assert meta["weights"] == "raw"
    assert torch.equal(m.state_dict()["fc.weight"], raw["fc.weight"])


def test_model_ema_closed_form():
    """ema_N = d^N w_0 + sum_k (1-d) d^(N-k) w_k over the weights after steps k = 1..N,
    with update_after_step steps copied first and updates every `update_every` steps; the
    buffer is copied, not averaged."""
    from defectkit.engine.ema import ModelEMA

    m = torch.nn.BatchNorm1d(1)
    d = 0.8
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema = ModelEMA(m, decay=d, update_after_step=2, update_every=2)
    values = [float(k + 2) for k in range(1, 9)]        # w after steps 1..8
    for k, v in enumerate(values, start=1):
        with torch.no_grad():
            m.weight.fill_(v)
            m.running_mean.fill_(-v)
        ema.update(m)
    # steps 1, 2 copy (w_2 = 4); then updates at steps 4, 6, 8 (s - 2 = 2, 4, 6)
    expected = values[1]
    for k in (4, 6, 8):
        expected = d * expected + (1 - d) * values[k - 1]
    assert ema.state["weight"].item() == pytest.approx(expected, rel=1e-6)
    assert ema.state["running_mean"].item() == -values[-1]
    assert ema.state["num_batches_tracked"].item() == m.num_batches_tracked.item()


@pytest.mark.parametrize("warmup, decays", [
    (None, [0.99, 0.99, 0.99]),
    ("linear", [2 / 11, 3 / 12, 4 / 13]),                        # (1 + s) / (10 + s)
    ("power", [1 - 2 ** (-2 / 3), 1 - 3 ** (-2 / 3), 1 - 4 ** (-2 / 3)]),
])
def test_model_ema_warmup_decays(warmup, decays):
    """diffusers EMAModel.get_decay: the decay of the s-th update is min(decay, d_s); a
    warm-up keeps a short run's average off the random initial weights."""
    from defectkit.engine.ema import ModelEMA

    m = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(0.0)
    ema = ModelEMA(m, decay=0.99, warmup=warmup)
    expected = 0.0
    for s, d in enumerate(decays, start=1):
        with torch.no_grad():
            m.weight.fill_(float(s))
        ema.update(m)
        expected = d * expected + (1 - d) * s
        assert ema.decay_at(s) == pytest.approx(d)
    assert ema.state["weight"].item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="warmup"):
        ModelEMA(m, warmup="cosine")


def _ema_run(cfg, work_dir, **kw):
    from test_trainer import _run

    return _run(cfg, work_dir, **kw)


def test_trainer_ema_matches_weights_history_and_checkpoint(tmp_path):
    """Through the trainer: the checkpoint's EMA equals the closed form over the weights
    after every optimizer step (recorded by a custom hook listed in train.hooks)."""
    d = 0.7
    cfg = toy_config(train={"epochs": 1, "ema": {"decay": d}, "hooks": [{"type": "_RecordWeights"}]},
                     evaluation=None)
    t, _ = _ema_run(cfg, tmp_path)
    weights = _RecordWeights.seen
    assert len(weights) == 4
    expected = _RecordWeights.initial
    for w in weights:
        expected = d * expected + (1 - d) * w
    ck = load_checkpoint(tmp_path / "latest.pth")
    assert torch.allclose(ck["ema"]["state_dict"]["fc.weight"], expected, atol=1e-6)
    assert ck["ema"]["num_updates"] == 4
    assert torch.equal(ck["state_dict"]["fc.weight"], weights[-1])     # raw weights stay raw


def test_resume_with_ema_equals_uninterrupted(tmp_path):
    ema = {"decay": 0.9, "update_after_step": 3, "update_every": 2}
    cfg = toy_config(model={"dropout": 0.3}, train={"epochs": 4, "ema": ema})
    ref, ref_r = _ema_run(cfg, tmp_path / "ref")
    crash = toy_config(model={"dropout": 0.3, "crash_at_call": 9}, train={"epochs": 4, "ema": ema})
    from defectkit.engine import Trainer

    first = Trainer(crash, work_dir=tmp_path / "cut")
    with pytest.raises(RuntimeError, match="simulated crash"):
        first.train()
    first.close()
    second, second_r = _ema_run(cfg, tmp_path / "cut", resume="auto")
    a = load_checkpoint(tmp_path / "ref" / "latest.pth")
    b = load_checkpoint(tmp_path / "cut" / "latest.pth")
    for k in a["ema"]["state_dict"]:
        assert torch.equal(a["ema"]["state_dict"][k], b["ema"]["state_dict"][k]), k
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert a["ema"]["num_updates"] == b["ema"]["num_updates"] == 16
    assert second_r.best_metric == ref_r.best_metric


def test_evaluation_uses_ema_weights_when_asked(tmp_path, monkeypatch):
    import defectkit.engine.trainer as trainer_mod

    seen = []
    real = trainer_mod.run_inference

    def spy(model, *a, **kw):
        seen.append(model.fc.weight.detach().clone())
        return real(model, *a, **kw)

    monkeypatch.setattr(trainer_mod, "run_inference", spy)
    for use in (True, False):
        seen.clear()
        cfg = toy_config(train={"epochs": 2, "ema": {"decay": 0.5, "use_for_eval": use}})
        t, _ = _ema_run(cfg, tmp_path / str(use))
        ck = load_checkpoint(tmp_path / str(use) / "latest.pth")
        assert len(seen) == 2
        want = ck["ema"]["state_dict"]["fc.weight"] if use else ck["state_dict"]["fc.weight"]
        assert torch.equal(seen[-1], want)
        assert not torch.equal(ck["ema"]["state_dict"]["fc.weight"], ck["state_dict"]["fc.weight"])
        # the raw weights are back in the model after evaluation
        assert torch.equal(t.model.fc.weight.detach(), ck["state_dict"]["fc.weight"])


def test_ema_config_errors(tmp_path):
    from defectkit.config import ConfigError
    from defectkit.engine import Trainer

    with pytest.raises(ConfigError, match=r"train.ema: decay: must be in \[0, 1\]"):
        Trainer(toy_config(train={"ema": {"decay": 1.5}}), work_dir=tmp_path / "a")
    with pytest.raises(ConfigError, match="train.ema.decy: unknown key; did you mean 'decay'"):
        Trainer(toy_config(train={"ema": {"decy": 0.9}}), work_dir=tmp_path / "b")
    with pytest.raises(ConfigError, match="train.ema: warmup: must be null, 'linear' or 'power'"):
        Trainer(toy_config(train={"ema": {"warmup": "cos"}}), work_dir=tmp_path / "c")


class _RecordWeights(HookBase):
    """Records fc.weight before training and after every optimizer step."""

    seen: list = []
    initial = None

    def before_train(self):
        _RecordWeights.seen = []
        _RecordWeights.initial = self.trainer.model.fc.weight.detach().clone()

    def after_step(self):
        _RecordWeights.seen.append(self.trainer.model.fc.weight.detach().clone())


if "_RecordWeights" not in HOOKS:
    HOOKS.register(obj=_RecordWeights)


_DDP_WORKER = '''
import os, sys
import torch
torch.set_num_threads(1)
import helpers_toy as H
from defectkit.engine import Trainer, distributed as D

out = sys.argv[1]
cfg = H.toy_config(data={"train": {"type": "_ToyDataset", "num_samples": 16}, "batch_size": 4},
                   train={"epochs": 1, "ema": {"decay": 0.6}}, evaluation=None)
t = Trainer(cfg, work_dir=os.path.join(out, "work"))
t.train()
ema = [h for h in t.hooks if type(h).__name__ == "EMAHook"][0].ema
torch.save({"ema": ema.state_dict()["state_dict"], "model": t.model.state_dict()},
           os.path.join(out, f"rank{D.get_rank()}.pt"))
t.close()
'''


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
def test_ema_under_ddp_averages_the_unwrapped_model(tmp_path):
    from test_distributed import run_two_processes

    run_two_processes(_DDP_WORKER, tmp_path)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert set(r0["ema"]) == set(r0["model"])                      # model keys, no "module." prefix
    assert all(torch.equal(r0["ema"][k], r1["ema"][k]) for k in r0["ema"])   # same EMA on every rank
    ck = load_checkpoint(tmp_path / "work" / "latest.pth")
    assert all(torch.equal(ck["ema"]["state_dict"][k], r0["ema"][k]) for k in r0["ema"])
    assert not torch.equal(ck["ema"]["state_dict"]["fc.weight"], ck["state_dict"]["fc.weight"])
