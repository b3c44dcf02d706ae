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


def test_named_rounds_repeat_an_experiment_per_seed(tmp_path):
    """Repeated experiments (tools/compare.py --seeds): independent rounds with a seed each,
    in sub-dirs named by the caller; equal seeds give equal weights, other seeds others."""
    cfg = toy_config(train={"epochs": 1}, evaluation=None)
    names = ["toy_seed0", "toy_seed1", "toy_seed0_again"]
    results = run_rounds(cfg, rounds=[{"seed": 0}, {"seed": 1}, {"seed": 0}], work_dir=tmp_path,
                         init_from_previous=False, names=names)
    assert [r.work_dir for r in results] == [tmp_path / n for n in names]
    w = [load_checkpoint(tmp_path / n / "latest.pth")["state_dict"]["fc.weight"] for n in names]
    assert torch.equal(w[0], w[2]) and not torch.equal(w[0], w[1])
    assert [load_checkpoint(tmp_path / n / "latest.pth")["meta"]["seed"] for n in names] == [0, 1, 0]


@pytest.mark.parametrize("names", [["a"], ["a", "a"], ["a", "x/b"], ["a", ""]])
def test_bad_round_names_are_one_clear_error(tmp_path, names):
    with pytest.raises(ValueError, match="`names` must be 2 distinct folder names"):
        run_rounds(toy_config(evaluation=None), rounds=[{}, {}], work_dir=tmp_path, names=names)
    assert not any(tmp_path.iterdir())
