"""End-to-end: the command-line tools on a tiny synthetic set, as a user runs them."""
import json
import subprocess
import sys

import pytest

from helpers_tools import ROOT, TOOLS, tool


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A synthetic fabric set, a tiny config over it, and one finished 2-epoch training run."""
    from defectkit.data.synth import generate

    tmp = tmp_path_factory.mktemp("tools")
    data = tmp / "synth"
    generate("fabric", data, num_images=24, size=(64, 64), seed=3, workers=1)
    cfg = tmp / "tiny.yaml"
    cfg.write_text(f"""
_base_: {ROOT / 'configs/classifier/smallcnn_tiny_synth.yaml'}
data:
  train: {{ann_file: {data}/coco/annotations/instances_train.json, img_dir: {data}/images}}
  val: {{ann_file: {data}/coco/annotations/instances_test.json, img_dir: {data}/images}}
  test: {{ann_file: {data}/coco/annotations/instances_test.json, img_dir: {data}/images}}
  batch_size: 4
  num_workers: 0
train: {{epochs: 2, val_interval: 1, checkpoint_interval: 1, log_interval: 2, progress: false}}
benchmark: {{warmup: 2, iters: 5}}
""")
    size = ["data.train.pipeline.0.scale=[64,64]", "data.val.pipeline.0.scale=[64,64]",
            "data.test.pipeline.0.scale=[64,64]"]
    work = tmp / "work"
    tool("train").main([str(cfg), "--work-dir", str(work), "--cfg-options", *size])
    return {"cfg": cfg, "work": work, "data": data, "size": size, "tmp": tmp}


def test_train_writes_work_dir(run):
    work = run["work"]
    for name in ("config.yaml", "train.log", "scalars.jsonl", "latest.pth", "last_checkpoint",
                 "epoch_1.pth", "epoch_2.pth", "best_f1_macro.pth"):
        assert (work / name).is_file(), name
    lines = [json.loads(l) for l in (work / "scalars.jsonl").read_text().splitlines()]
    assert {"train", "val"} <= {l["mode"] for l in lines}
    assert "data.train.pipeline.0.scale" not in (work / "config.yaml").read_text()  # resolved, not raw
    assert "- 64" in (work / "config.yaml").read_text()


def test_test_tool_metrics_match_predictions(run, capsys):
    out = run["tmp"] / "test_out"
    tool("test").main([str(run["cfg"]), str(run["work"] / "latest.pth"), "--out-dir", str(out),
                       "--show", "2", "--cfg-options", *run["size"]])
    printed = capsys.readouterr().out
    assert "macro avg" in printed and "ATT" in printed
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    preds = json.loads((out / "predictions.json").read_text())
    gt = {i["id"]: 0 for i in json.loads((run["data"] / "coco/annotations/instances_test.json")
                                         .read_text())["images"]}
    for a in json.loads((run["data"] / "coco/annotations/instances_test.json").read_text())["annotations"]:
        gt[a["image_id"]] = 1
    assert len(preds) == len(gt) == metrics["num_images"]
    acc = sum(p["label"] == gt[p["id"]] for p in preds) / len(preds)
    assert metrics["accuracy"] == pytest.approx(acc)
    assert metrics["att_ms"] > 0
    assert (out / "confusion_matrix.png").stat().st_size > 0
    assert len(list((out / "show").glob("*.png"))) == 2


def test_benchmark_tool(run):
    out = run["tmp"] / "bench.json"
    tool("benchmark").main([str(run["cfg"]), str(run["work"] / "latest.pth"), "--out", str(out),
                            "--cfg-options", *run["size"]])
    r = json.loads(out.read_text())
    assert r["iters"] == 5 and r["warmup"] == 2 and r["batch_size"] == 1
    m = r["ms_per_image"]
    assert 0 < m["min"] <= m["p50"] <= m["p90"] <= m["max"]
    from defectkit.config import load_config
    from defectkit.engine import init_model

    model, _ = init_model(load_config(run["cfg"]), run["work"] / "latest.pth", "cpu")
    assert r["params"] == sum(p.numel() for p in model.parameters())
    assert r["peak_memory_mb"] > 0


def test_infer_browse_plot_print(run, capsys):
    imgs = sorted((run["data"] / "images").glob("*.jpg"))[:3]
    out = run["tmp"] / "infer"
    tool("infer").main([str(run["cfg"]), str(run["work"] / "latest.pth"), *map(str, imgs),
                        "--out-dir", str(out), "--cfg-options", *run["size"]])
    results = json.loads((out / "results.json").read_text())
    assert [r["path"] for r in results] == list(map(str, imgs))
    assert all(abs(sum(r["scores"]) - 1) < 1e-4 for r in results)
    assert len(list(out.glob("*.png"))) == 3

    vis = run["tmp"] / "browse"
    tool("browse_dataset").main([str(run["cfg"]), "--out-dir", str(vis), "--num", "3",
                                 "--cfg-options", *run["size"]])
    assert (vis / "grid.png").is_file() and len(list(vis.glob("0*.png"))) == 3

    tool("plot_logs").main([str(run["work"]), "--out", str(run["tmp"] / "curves.png")])
    assert (run["tmp"] / "curves.png").stat().st_size > 0

    capsys.readouterr()
    tool("print_config").main([str(run["cfg"]), "--cfg-options", "train.epochs=7"])
    assert "epochs: 7" in capsys.readouterr().out


def test_resume_continues_to_more_epochs(run):
    import torch

    tool("train").main([str(run["cfg"]), "--work-dir", str(run["work"]), "--resume",
                        "--cfg-options", *run["size"], "train.epochs=3"])
    ckpt = torch.load(run["work"] / "latest.pth", weights_only=True)
    assert ckpt["meta"]["epoch"] == 3
    assert (run["work"] / "epoch_3.pth").is_file()


def test_config_error_exits_with_message(run):
    proc = subprocess.run([sys.executable, str(TOOLS / "train.py"), str(run["cfg"]),
                           "--cfg-options", "train.epoch=3"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0
    assert "train.epoch: unknown key; did you mean 'epochs'?" in proc.stderr
    assert "Traceback" not in proc.stderr
