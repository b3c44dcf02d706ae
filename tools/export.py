"""Export a fitted model to ONNX: pre-processing + model + score normalisation in one graph.

    python tools/export.py configs/padim/padim_r18_rd100_mvtec.yaml work_dirs/padim_r18_rd100_mvtec/latest.pth \
        --format onnx [--input-size 256 256] [--out model.onnx] [--check]

Input ``image``: float32 (B, 3, H, W) RGB in [0, 1] (B is dynamic, H x W fixed at export;
default: the model's final input size, i.e. what the config's data pipeline produces).
When H x W differs from the model's input size the graph resizes (bilinear, without
antialias: ONNX has no antialiased resize) and centre-crops as the model's pre-processing.
Outputs (PaDiM): ``anomaly_map`` (B, 1, S, S) and ``pred_score`` (B,) normalised to [0, 1]
(0.5 = fitted threshold), ``raw_map`` and ``raw_score`` (unnormalised).
``--check`` runs onnxruntime on the first data.test images (random ones when those are not
H x W), prints the max abs difference to PyTorch per output and a verdict: PASS when every
output is within ``--atol`` (default 1e-4) times max(1, the largest |PyTorch value| of that
output) -- absolute for the normalised outputs in [0, 1], relative for the raw scores --
with the number of images checked; FAIL exits with status 1.
"""
import argparse
import sys
from pathlib import Path

from _common import add_cfg_options, add_no_ema, add_work_dir, load, work_dir

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("checkpoint")
    p.add_argument("--format", default="onnx", choices=["onnx"])
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                   help="input height and width (default: the model's input size)")
    p.add_argument("--opset", type=int, default=17)
    add_work_dir(p, "<checkpoint-stem>.onnx")
    p.add_argument("--out", help="default: WORK_DIR/<checkpoint-stem>.onnx")
    add_no_ema(p)
    p.add_argument("--check", action="store_true", help="compare onnxruntime with PyTorch; exit 1 on FAIL")
    p.add_argument("--atol", type=float, default=1e-4,
                   help="--check tolerance per output: max abs diff <= ATOL * max(1, max |PyTorch output|) "
                        "(default 1e-4)")
    p.add_argument("--num-images", type=int, default=4, metavar="N", help="--check: how many images (default 4)")
    add_cfg_options(p)
    return p.parse_args(argv)


def export_spec(model):
    """The model's declared export graph (``BaseModel.export_spec``); exits naming the model
    when it declares none or cannot export in its state."""
    from defectkit.models.base import BaseModel

    try:
        spec = model.export_spec() if isinstance(model, BaseModel) else None
    except ValueError as e:
        sys.exit(f"export: {e}")
    if spec is None:
        sys.exit(f"export: {type(model).__name__} declares no export graph (BaseModel.export_spec); "
                 "see docs/adding_a_model.md")
    return spec


def export_wrapper(model):
    """An ``nn.Module`` mapping an image tensor to the tuple of the model's outputs."""
    return export_spec(model).module


def export_onnx(model, out_path, height: int, width: int, opset: int = 17) -> Path:
    import torch

    spec = export_spec(model)
    names = list(spec.output_names)
    example = torch.rand(2, 3, height, width)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    import warnings

    with warnings.catch_warnings():   # tracer notes on shape checks that are constant for a fixed input size
        warnings.simplefilter("ignore")
        torch.onnx.export(spec.module, (example,), str(out_path), input_names=["image"], output_names=names,
                          dynamic_axes={"image": {0: "batch"}, **{k: {0: "batch"} for k in names}},
                          opset_version=opset, dynamo=False)
    return out_path


def check_onnx(model, path, height: int, width: int, batch: int = 2, seed: int = 0, images=None,
               with_scale: bool = False) -> dict:
    """Max abs difference per output between onnxruntime and PyTorch on ``images``
    (B, 3, H, W) or random images (which saturate the normalised outputs).
    ``with_scale``: values are ``(max abs diff, max |PyTorch value|)``."""
    import numpy as np
    import onnxruntime as ort
    import torch

    g = torch.Generator().manual_seed(seed)
    x = images if images is not None else torch.rand(batch, 3, height, width, generator=g)
    spec = export_spec(model)
    names = list(spec.output_names)
    with torch.no_grad():
        ref = [t.numpy() for t in spec.module(x)]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(names, {"image": x.numpy()})
    diffs = {k: float(np.abs(a - b).max()) for k, a, b in zip(names, ref, got)}
    if not with_scale:
        return diffs
    return {k: (diffs[k], float(np.abs(a).max())) for k, a in zip(names, ref)}


def verdict(diffs: dict, atol: float) -> tuple[bool, list[str]]:
    """``diffs``: output -> (max abs diff, max |reference|). Passes when every diff is
    <= ``atol * max(1, scale)``; returns (passed, the outputs over their tolerance)."""
    over = [f"{k} {d:.2e} > {atol * max(1.0, s):.2e}" for k, (d, s) in diffs.items()
            if not d <= atol * max(1.0, s)]          # `not <=`: a NaN difference fails
    return not over, over


def test_images(cfg, h: int, w: int, n: int = 4):
    """The first ``n`` images of data.test after its pipeline, when they are H x W (else None)."""
    import torch

    from defectkit.engine import build_dataset

    try:
        ds = build_dataset(cfg["data"]["test"])
        imgs = torch.stack([ds[i]["image"].as_subclass(torch.Tensor) for i in range(min(n, len(ds)))])
    except Exception:      # no test data here: fall back to random images
        return None
    return imgs if tuple(imgs.shape[-2:]) == (h, w) else None


def main(argv=None):
    args = parse_args(argv)
    cfg = load(args)
    from defectkit.engine import init_model

    model, _ = init_model(cfg, args.checkpoint, "cpu", use_ema=not args.no_ema)
    spec = export_spec(model)
    h, w = args.input_size or spec.input_size
    out = Path(args.out or work_dir(args, cfg) / f"{Path(args.checkpoint).stem}.onnx")
    export_onnx(model, out, h, w, args.opset)
    print(f"wrote {out} (input image: B x 3 x {h} x {w} float32 in [0, 1]; outputs {', '.join(spec.output_names)})")
    if args.check:
        images = test_images(cfg, h, w, args.num_images)
        n = len(images) if images is not None else args.num_images
        diffs = check_onnx(model, out, h, w, batch=n, images=images, with_scale=True)
        what = "of data.test" if images is not None else "random (data.test is missing or not H x W)"
        print("onnxruntime vs PyTorch, max abs diff: " + "  ".join(f"{k} {d:.2e}" for k, (d, _) in diffs.items()))
        passed, over = verdict(diffs, args.atol)
        tol = f"tolerance {args.atol:g} x max(1, max |PyTorch output|) per output"
        if not passed:
            print(f"check FAILED on {n} images {what}: {'; '.join(over)} ({tol})")
            return 1
        print(f"check PASSED on {n} images {what}: every output within {tol}")
    return 0


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
