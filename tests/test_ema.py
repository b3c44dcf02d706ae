"""EMA of the weights (``train.ema``): closed form, resume, evaluation, ``init_model(use_ema=)``."""
from __future__ import annotations

import torch

from defectkit.engine import init_model, save_checkpoint
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
