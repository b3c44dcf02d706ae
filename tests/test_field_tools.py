"""What a new user missed (issue 10, item 8): compare's --cfg-options and config hash,
PaDiM's few-image calibration warning, export --check's verdict, plot_logs' curves and
ticks, progress on the long loops of benchmark / browse_dataset / make_synth."""
import io
import json
import logging
from pathlib import Path

import pytest
import torch
import yaml
from helpers_toy import toy_config
from helpers_tools import tool

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- compare
def _fake_runner(calls, monkeypatch=None, cmp_tool=None):
    """compare's ``run`` with tools/test.py replaced by a metrics.json writer; with
    ``monkeypatch``/``cmp_tool``, compare's in-process training (a real one, so the
    checkpoint holds the trainer's resolved config) is recorded as a ``train.py`` call."""
    if monkeypatch is not None:
        real_train = cmp_tool.train_runs

        def train_runs(cfg, work_dir, device):
            calls.append(["<rounds>", "train.py", str(work_dir)])
            return real_train(cfg, work_dir, device)
        monkeypatch.setattr(cmp_tool, "train_runs", train_runs)

    def run(cmd):
        cmd = [str(c) for c in cmd]
        calls.append(cmd)
        out = Path(cmd[cmd.index("--out-dir") + 1])
        out.mkdir(parents=True, exist_ok=True)
        ckpt = torch.load(cmd[3], weights_only=True)
        epochs = ckpt["meta"]["config"]["train"]["epochs"]
        # the toy evaluator's main metric (compare's first column for it)
        (out / "metrics.json").write_text(json.dumps({"metrics": {"accuracy": epochs / 10}}))
    return run


def test_compare_cfg_options_and_config_hash(tmp_path, monkeypatch, capsys):
    cmp_tool = tool("compare")
    cfg = toy_config(train={"epochs": 1})
    cfg["data"]["test"] = cfg["data"]["val"]
    cfg_path = tmp_path / "toy.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    calls = []
    monkeypatch.setattr(cmp_tool, "run", _fake_runner(calls, monkeypatch, cmp_tool))
    work = tmp_path / "work"
    base = [str(cfg_path), "--work-root", str(work), "--out", str(tmp_path / "t.md")]
    metrics = work / "toy" / "test" / "metrics.json"
    ckpt = work / "toy" / "latest.pth"

    # 1. trains with the option (the trained config has it) and stamps the result with the hash
    cmp_tool.main(base + ["--cfg-options", "train.epochs=2"])
    assert [c[1].rsplit("/", 1)[-1] for c in calls] == ["train.py", "test.py"]
    assert calls[1][-2:] == ["--cfg-options", "train.epochs=2"]      # test.py gets it too
    rec = json.loads(metrics.read_text())
    stored = cmp_tool.checkpoint_config(ckpt)
    assert stored["train"]["epochs"] == 2
    # the trainer's stored config hashes to what compare computes from the YAML + options
    want = cmp_tool.config_hash(cmp_tool.resolved_config(str(cfg_path), ["train.epochs=2"]))
    assert rec["config_hash"] == cmp_tool.config_hash(stored) == want
    assert "work_dir" in rec["config_hash_excludes"]

    # 2. same settings (a log/worker option is not a setting): reused, nothing runs
    calls.clear()
    cmp_tool.main(base + ["--cfg-options", "train.epochs=2", "train.log_interval=7", "data.num_workers=0"])
    assert calls == []
    assert "| toy | 0.200 |" in (tmp_path / "t.md").read_text()

    # 3. other settings: the old metrics are not reused; the checkpoint is not overwritten
    #    by surprise: one line naming the key that differs and the way out
    mtime = ckpt.stat().st_mtime_ns
    with pytest.raises(SystemExit) as e:
        cmp_tool.main(base)                                  # the YAML says epochs: 1
    msg = str(e.value)
    assert "\n" not in msg and "train.epochs: 2 != 1" in msg and "--retrain" in msg and str(ckpt) in msg
    assert ckpt.stat().st_mtime_ns == mtime and calls == []

    # 4. --retrain retrains that config with the config's settings and re-stamps
    cmp_tool.main(base + ["--retrain"])
    assert [c[1].rsplit("/", 1)[-1] for c in calls] == ["train.py", "test.py"]
    assert cmp_tool.checkpoint_config(ckpt)["train"]["epochs"] == 1
    assert json.loads(metrics.read_text())["config_hash"] == cmp_tool.config_hash(
        cmp_tool.resolved_config(str(cfg_path)))
    assert "| toy | 0.100 |" in (tmp_path / "t.md").read_text()

    # 5. metrics written with other settings but a checkpoint made with these: re-tested only
    rec = json.loads(metrics.read_text())
    metrics.write_text(json.dumps(dict(rec, config_hash="0" * 16)))
    calls.clear()
    cmp_tool.main(base)
    assert [c[1].rsplit("/", 1)[-1] for c in calls] == ["test.py"]

    # 6. a bad option is a one-line config error
    with pytest.raises(SystemExit) as e:
        cmp_tool.main(base + ["--cfg-options", "train.epochs"])
    assert str(e.value).startswith("config error:")


def test_config_hash_ignores_runtime_keys_only(tmp_path):
    cmp_tool = tool("compare")
    cfg = toy_config()
    h = cmp_tool.config_hash(cfg)
    same = toy_config(work_dir="elsewhere", device="cuda", train={"log_interval": 50, "progress": True},
                      data={"num_workers": 4}, benchmark={"iters": 3})
    assert cmp_tool.config_hash(same) == h
    for other in (toy_config(seed=1), toy_config(optimizer={"lr": 0.1}), toy_config(data={"batch_size": 4})):
        assert cmp_tool.config_hash(other) != h


# ----------------------------------------------------------------------------- PaDiM
def _padim_fit(n_images, val_ratio):
    from defectkit.models.anomaly.padim import PaDiM

    torch.manual_seed(0)
    model = PaDiM(backbone="small_cnn", pretrained=None, num_features=24, image_size=32, crop_size=None,
                  layers=["layer1", "layer2", "layer3"], calibration={"val_ratio": val_ratio}).eval()
    images = torch.rand(n_images, 3, 32, 32)
    model.fit([{"image": images[i:i + 8]} for i in range(0, n_images, 8)])
    return model


def test_padim_warns_when_calibration_rests_on_few_images(caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("defectkit"), "propagate", True)   # the trainer's logger may not
    with caplog.at_level(logging.INFO, logger="defectkit"):
        model = _padim_fit(8, 0.25)                                         # every 4th image: 2 held out
    assert model.record["num_val"] == 2
    # one warning (pytest may see a record twice when the trainer's logger has its own handler)
    warned = {r.getMessage() for r in caplog.records if r.levelno == logging.WARNING}
    assert len(warned) == 1
    msg = warned.pop()
    assert "only 2 validation images" in msg and "2 held out" in msg and "0 from data.val" in msg
    assert "data.val" in msg and "val_ratio" in msg and "fewer than 20" in msg

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="defectkit"):
        model = _padim_fit(40, 0.5)                                         # 20 held out: enough
    assert model.record["num_val"] == 20
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


# ----------------------------------------------------------------------------- export --check
def test_export_check_prints_verdict_and_fails_below_tolerance(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    import numpy as np
    from PIL import Image

    model = _padim_fit(24, 0.25)
    ckpt = tmp_path / "padim.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {"classes": ["good", "defect"]}}, ckpt)
    good = tmp_path / "val_good"
    good.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(good / f"{i}.png")
    cfg = {"model": {"type": "PaDiM", "backbone": "small_cnn", "pretrained": None, "num_features": 24,
                     "image_size": 32, "crop_size": None, "layers": ["layer1", "layer2", "layer3"],
                     "calibration": {"val_ratio": 0.25}},
           "data": {"test": {"type": "FolderAnomalyDataset", "normal_dir": str(good)}}}
    cfg_path = tmp_path / "padim.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    export = tool("export")
    args = [str(cfg_path), str(ckpt), "--out", str(tmp_path / "m.onnx"), "--check"]
    assert export.main(args) == 0
    out = capsys.readouterr().out
    assert "check PASSED on 3 images of data.test" in out and "tolerance 0.0001" in out
    assert export.main(args + ["--atol", "0"]) == 1                       # float error > 0: FAIL
    out = capsys.readouterr().out
    assert "check FAILED on 3 images of data.test" in out and "raw_map" in out and "tolerance 0 x" in out
    # the verdict itself: NaN fails, the scale makes raw scores relative
    assert export.verdict({"a": (float("nan"), 1.0)}, 1e-4)[0] is False
    assert export.verdict({"raw": (5e-3, 100.0), "norm": (5e-5, 1.0)}, 1e-4) == (True, [])


# ----------------------------------------------------------------------------- plot_logs
def test_plot_logs_integer_ticks_and_no_memory_curve(tmp_path, capsys):
    from defectkit.visualization.plots import scalars_figure

    log = tmp_path / "scalars.jsonl"
    recs = [{"mode": "train", "step": s, "epoch": 1, "iter": s, "lr": 0.01, "loss": 1.0 / s, "loss_cls": 0.5 / s,
             "memory_mb": 700.0 + s} for s in (1, 2, 3)]
    recs.append({"mode": "val", "step": 3, "epoch": 1, "iter": 3, "accuracy": 0.5, "num_images": 13, "att_ms": 2.0})
    log.write_text("".join(json.dumps(r) + "\n" for r in recs))

    fig = scalars_figure(log)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["loss", "loss_cls", "accuracy (val)", "lr"]
    assert all("memory" not in line.get_label() for ax in fig.axes for line in ax.lines)
    for ax in fig.axes:
        fig.canvas.draw()
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), (ax.get_title(), ticks)
    assert [ax.get_title() for ax in scalars_figure(log, keys=["memory_mb"]).axes] == ["memory_mb"]

    assert tool("plot_logs").main([str(tmp_path)]) == 0
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------- progress
def _record_progress(monkeypatch, module):
    """Make ``module.track`` write its plain lines at every item into a buffer."""
    from defectkit import progress

    buf = io.StringIO()
    monkeypatch.setenv("DEFECTKIT_PROGRESS", "1")

    def track(iterable, total=None, desc="", unit="it", **_):
        return progress.track(iterable, total=total, desc=desc, unit=unit, every_s=0.0, stream=buf)

    monkeypatch.setattr(module, "track", track)
    return buf


def test_progress_in_make_synth_browse_and_benchmark(tmp_path, monkeypatch):
    from defectkit.data.synth import generate, generator

    buf = _record_progress(monkeypatch, generator)
    generate("fabric", tmp_path / "synth", num_images=6, size="64x64", seed=0, workers=1)
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("make_synth fabric: 1/6 img (17%)") and "ETA" in lines[0]
    assert lines[-1].startswith("make_synth fabric: 6/6 img (100%)") and lines[-1].endswith("done")

    cfg = toy_config()
    cfg["data"]["test"] = cfg["data"]["val"]
    cfg_path = tmp_path / "toy.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    coco = {"type": "CocoDataset", "ann_file": str(tmp_path / "synth/coco/annotations/instances_train.json"),
            "img_dir": str(tmp_path / "synth/images")}
    coco_cfg = tmp_path / "coco.yaml"
    coco_cfg.write_text(yaml.safe_dump({"data": {"train": coco}}))
    browse = tool("browse_dataset")
    buf = _record_progress(monkeypatch, browse)
    assert browse.main([str(coco_cfg), "--out-dir", str(tmp_path / "vis"), "--num", "3"]) == 0
    assert buf.getvalue().splitlines()[-1].startswith("browse train: 3/3 img (100%)")
    assert len(list((tmp_path / "vis").glob("0*.png"))) == 3

    bench = tool("benchmark")
    buf = _record_progress(monkeypatch, bench)
    assert bench.main([str(cfg_path), "--warmup", "1", "--iters", "4", "--device", "cpu",
                       "--out", str(tmp_path / "b.json")]) == 0
    text = buf.getvalue()
    assert "benchmark: loading data: 5/5 batch (100%)" in text and "benchmark: model calls: 5/5 call (100%)" in text
    assert json.loads((tmp_path / "b.json").read_text())["iters"] == 4


def test_compare_judges_unstamped_metrics_by_their_checkpoint(tmp_path, monkeypatch):
    cmp_tool = tool("compare")
    cfg = toy_config(train={"epochs": 1})
    cfg["data"]["test"] = cfg["data"]["val"]
    cfg_path = tmp_path / "toy.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    calls = []
    monkeypatch.setattr(cmp_tool, "run", _fake_runner(calls, monkeypatch, cmp_tool))
    base = [str(cfg_path), "--work-root", str(tmp_path / "work")]
    cmp_tool.main(base)
    metrics = tmp_path / "work" / "toy" / "test" / "metrics.json"
    rec = json.loads(metrics.read_text())
    del rec["config_hash"]                                   # as written before hashes existed
    metrics.write_text(json.dumps(rec))
    calls.clear()
    cmp_tool.main(base)                                      # its checkpoint has these settings: reused
    assert calls == []
    with pytest.raises(SystemExit) as e:                     # and not with other ones
        cmp_tool.main(base + ["--cfg-options", "optimizer.lr=0.05"])
    assert "optimizer.lr: 0.2 != 0.05" in str(e.value) and calls == []
