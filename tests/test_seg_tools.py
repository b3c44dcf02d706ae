"""tools/test.py, tools/infer.py and tools/compare.py on a segmenter (random ZNet weights on a
tiny synthetic ball-screw set), and the configs of the family loading cleanly."""
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from defectkit.config import load_config
from defectkit.data.synth import generate
from defectkit.engine import build_model
from helpers_tools import tool

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def seg_setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seg")
    generate("ballscrew", tmp / "bs", num_images=6, size="64x32", seed=0, workers=1)
    ds = {"type": "MaskFolderDataset", "img_dir": str(tmp / "bs/images"), "mask_dir": str(tmp / "bs/masks"),
          "classes": ["pitting"], "split_file": str(tmp / "bs/voc/ImageSets/Main/test.txt"),
          "pipeline": [{"type": "Resize", "scale": [32, 16], "keep_ratio": False}]}
    cfg = {"model": {"type": "ZNet", "widths": [8, 16, 32, 64]}, "data": {"train": ds, "test": ds, "num_workers": 0},
           "evaluation": {"type": "SegmentationEvaluator"}}
    cfg_path = tmp / "znet_seg.yaml"
    cfg_path.write_text(json.dumps(cfg))                     # JSON is YAML
    torch.manual_seed(0)
    model = build_model(cfg["model"], ["pitting"])
    ckpt = tmp / "w.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {"classes": ["pitting"]}}, ckpt)
    return tmp, cfg_path, ckpt


def test_test_tool_writes_metrics_and_overlays(seg_setup, capsys):
    tmp, cfg, ckpt = seg_setup
    out = tmp / "test"
    assert tool("test").main([str(cfg), str(ckpt), "--out-dir", str(out), "--show", "1", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "pitting" in text and "mIoU" in text and "znet_repo protocol" in text
    rec = json.loads((out / "metrics.json").read_text())
    m = rec["metrics"]
    assert 0.0 <= m["mIoU"] <= 1.0 and "defect_IoU" in m and "znet_defect_IoU" in m
    assert rec["params"] == sum(p.numel() for p in build_model({"type": "ZNet", "widths": [8, 16, 32, 64]}).parameters())
    shown = sorted((out / "show").glob("*.png"))
    assert len(shown) == 1
    assert Image.open(shown[0]).width >= 3 * 32                  # image | ground truth | prediction

    # compare reads it back into the segmentation table
    work = tmp / "work" / cfg.stem / "test"
    work.mkdir(parents=True)
    (work / "metrics.json").write_text(json.dumps(rec))
    md = tmp / "table.md"
    tool("compare").main([str(cfg), "--work-root", str(tmp / "work"), "--out", str(md)])
    lines = md.read_text().splitlines()
    assert lines[0] == "| Model | mIoU | defect IoU | ms/img | params |"
    assert lines[2] == (f"| znet_seg | {m['mIoU']:.3f} | {m['defect_IoU']:.3f} | {m['att_ms']:.2f} | "
                        f"{rec['params'] / 1e6:.2f}M |")


def test_infer_tool_writes_masks(seg_setup):
    tmp, cfg, ckpt = seg_setup
    img = sorted((tmp / "bs/images").glob("*.jpg"))[0]
    out = tmp / "infer"
    assert tool("infer").main([str(cfg), str(ckpt), str(img), "--out-dir", str(out), "--device", "cpu"]) == 0
    mask = Image.open(out / f"00000_{img.stem}_mask.png")
    assert mask.size == (64, 32)                                 # original pixels
    res = json.loads((out / "results.json").read_text())[0]
    assert res["shape"] == [32, 64] and res["files"]


@pytest.mark.parametrize("name", ["znet_bsdata", "znet_original_bsdata", "unet_bsdata", "znet_bsdata_repro",
                                  "znet_ballscrew", "unet_ballscrew", "znet_tiny_ballscrew",
                                  "znet_original_tiny_ballscrew", "unet_tiny_ballscrew",
                                  "unet_demo_ballscrew"])
def test_configs_load(name):
    cfg = load_config(ROOT / "configs/znet" / f"{name}.yaml")
    assert cfg["model"]["type"] in ("ZNet", "UNet")
    assert cfg["evaluation"]["type"] == "SegmentationEvaluator"
    if "bsdata" in name:
        assert cfg["optimizer"] == {"type": "Adam", "lr": 0.001, "weight_decay": 0.0}
        assert cfg["train"]["epochs"] == 50 and cfg["data"]["batch_size"] == 2
        assert cfg["data"]["train"]["pipeline"][0]["scale"] == [512, 256]
