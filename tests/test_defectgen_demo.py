"""Defect-Gen in `make demo` (tools/demo.py): the row's configs are consistent (the small
denoiser is trained on exactly the steps the sampler gives it, the EMA average of a short
run is not dominated by the random initial weights), and ``--only`` runs one family's rows
with the data they read."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from defectkit.config import load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo():
    import sys

    if str(ROOT / "tools") not in sys.path:       # demo.py imports its sibling tools (compare)
        sys.path.insert(0, str(ROOT / "tools"))
    spec = importlib.util.spec_from_file_location("demo_tool_defectgen", ROOT / "tools/demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _part(model_cfg: dict, key: str) -> dict:
    return load_config(ROOT / model_cfg[key])


@pytest.mark.parametrize("sampler", ["configs/defectgen/defectgen_two_stage_demo_synth.yaml",
                                     "configs/defectgen/defectgen_two_stage_t200_gen_synth.yaml"])
def test_small_denoiser_is_trained_on_the_steps_below_t_switch(sampler):
    model = load_config(ROOT / sampler)["model"]
    assert model["mode"] == "two_stage" and model["t_switch"] == 200
    small = _part(model, "small")["model"]
    assert small["train_t_range"] == [0, model["t_switch"] - 1]
    assert "train_t_range" not in _part(model, "large")["model"]        # the large one sees every step


def test_demo_parts_ema_forgets_the_initial_weights(demo):
    """The engine's EMA has no warm-up: after N steps it still holds decay**N of the initial
    (random) weights. The demo's short runs must sample an average that has forgotten them."""
    for config in demo.TRAIN_FIRST[demo.DEFECTGEN][:2]:
        train = load_config(ROOT / config)["train"]
        assert train["ema"]["decay"] ** train["max_iters"] < 0.01, config


def test_demo_row_is_small_and_judged_by_a_part_it_trains_first(demo):
    cfg = load_config(ROOT / demo.DEFECTGEN)
    assert cfg["data"]["test"]["max_images"] <= 8 and cfg["model"]["num_inference_steps"] <= 25
    assert cfg["benchmark"]["warmup"] + cfg["benchmark"]["iters"] <= 2
    judge = cfg["evaluation"]["alignment"]
    assert any(Path(c).stem == Path(judge["checkpoint"]).parent.name for c in demo.TRAIN_FIRST[demo.DEFECTGEN])
    for key in ("large", "small"):
        assert Path(cfg["model"][f"{key}_checkpoint"]).parent.name == Path(cfg["model"][key]).stem
    assert [family for family, *_ in demo.RUNS].count("Defect-Gen") == 1


def test_only_selects_a_familys_rows_and_their_data(demo):
    rows = demo.select_rows(demo.RUNS, ["defect-gen"])
    assert [config for _, config, _, _ in rows] == [demo.DEFECTGEN]
    assert demo.select_rows(demo.RUNS, None) == demo.RUNS
    assert [r[0] for r in demo.select_rows(demo.RUNS, ["PaDiM", "unet"])] == ["PaDiM", "UNet"]
    # a detector row starts from the classifier's checkpoint: selecting it selects the classifier
    assert [r[0] for r in demo.select_rows(demo.RUNS, ["DefectNet"])] == ["classifier", "DefectNet"]
    with pytest.raises(SystemExit, match=r"--only nope: no such family \(the rows are: classifier, .*Defect-Gen"):
        demo.select_rows(demo.RUNS, ["nope", "PaDiM"])
    assert demo.uses_data(rows, "data/gen_synth")                         # the row and its parts read it
    assert not demo.uses_data(rows, "data/synth_fabric")


def test_an_unfinished_run_of_other_settings_is_not_resumed(demo, tmp_path, monkeypatch):
    """A work dir whose checkpoint was trained with other settings and has no demo record
    (e.g. the 400-iteration demo denoisers of an earlier version, now 300) is moved to
    <stem>.stale and retrained: resuming it would skip training ('iteration 400 of 300
    already reached') and sample the old weights. One of the same settings is resumed."""
    import shutil

    import torch

    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.setattr(demo, "ROOT", tmp_path)
    config = demo.TRAIN_FIRST[demo.DEFECTGEN][0]
    work = tmp_path / "work_dirs" / Path(config).stem
    work.mkdir(parents=True)
    cfg = load_config(tmp_path / config)
    other = {**cfg, "train": {**cfg["train"], "max_iters": cfg["train"]["max_iters"] + 100}}
    torch.save({"state_dict": {}, "meta": {"config": other}}, work / "latest.pth")
    assert not demo.trained_with(work / "latest.pth", config)
    job = demo.plan(config, fresh=False, test=False)
    assert job is not None and not work.exists() and (work.with_name(work.name + ".stale") / "latest.pth").is_file()
    work.mkdir()
    torch.save({"state_dict": {}, "meta": {"config": cfg}}, work / "latest.pth")
    assert demo.trained_with(work / "latest.pth", config)
    _, work_dir, _, cmds = demo.plan(config, fresh=False, test=False)
    assert work_dir == work and (work / "latest.pth").is_file() and "--resume" in cmds[0]
    # ... and reused once the demo recorded it; a record over weights of other settings is not trusted
    demo.record_time(work, 1.0, demo.current_hash(config))
    assert demo.plan(config, fresh=False, test=False) is None
    torch.save({"state_dict": {}, "meta": {"config": other}}, work / "latest.pth")
    assert demo.plan(config, fresh=False, test=False) is not None and not work.exists()
