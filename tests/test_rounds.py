"""engine.rounds.run_rounds: rounds in sub-work-dirs, round k starts from round k-1's weights."""
import pytest
import torch

from defectkit.engine import load_checkpoint
from defectkit.engine.hooks import HookBase
from defectkit.engine.rounds import run_rounds
from defectkit.registry import HOOKS
from helpers_toy import toy_config


class _StartWeights(HookBase):
    """Records the model's weights when each round's training starts."""

    seen: list = []

    def before_train(self):
        _StartWeights.seen.append({k: v.detach().clone() for k, v in self.trainer.model.state_dict().items()})


if "_StartWeights" not in HOOKS:
    HOOKS.register(obj=_StartWeights)


def _cfg():
    return toy_config(train={"epochs": 1, "hooks": [{"type": "_StartWeights"}]}, evaluation=None)


def test_two_rounds_second_starts_from_first(tmp_path):
    _StartWeights.seen = []
    results = run_rounds(_cfg(), rounds=[{}, {"data.train.seed": 3, "train.epochs": 2}], work_dir=tmp_path)
    assert [r.work_dir for r in results] == [tmp_path / "round_0", tmp_path / "round_1"]
    assert [r.iter for r in results] == [4, 8]
    first_final = load_checkpoint(tmp_path / "round_0" / "latest.pth")["state_dict"]
    assert len(_StartWeights.seen) == 2
    for k, v in first_final.items():
        assert torch.equal(_StartWeights.seen[1][k], v), k                   # loaded before training
    assert not torch.equal(_StartWeights.seen[0]["fc.weight"], first_final["fc.weight"])
    for d in ("round_0", "round_1"):
        assert (tmp_path / d / "latest.pth").is_file() and (tmp_path / d / "train.log").is_file()
    assert "seed: 3" in (tmp_path / "round_1" / "config.yaml").read_text()
    assert str(tmp_path / "round_0") in (tmp_path / "round_1" / "config.yaml").read_text()   # load_from recorded
    meta1 = load_checkpoint(tmp_path / "round_1" / "latest.pth")["meta"]
    assert meta1["iter"] == 8 and meta1["config"]["data"]["train"]["seed"] == 3


def test_rounds_without_init_from_previous_and_errors(tmp_path):
    _StartWeights.seen = []
    run_rounds(_cfg(), rounds=[{}, {}], work_dir=tmp_path, init_from_previous=False)
    assert torch.equal(_StartWeights.seen[0]["fc.weight"], _StartWeights.seen[1]["fc.weight"])  # same seed, fresh init
    with pytest.raises(ValueError, match="rounds` is empty"):
        run_rounds(_cfg(), rounds=[], work_dir=tmp_path / "x")
    from defectkit.config import ConfigError

    with pytest.raises(ConfigError, match="train.epocs: unknown key"):
        run_rounds(_cfg(), rounds=[{"train.epocs": 2}], work_dir=tmp_path / "y")
