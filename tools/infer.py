"""Run a trained model on new images: visualised outputs + one JSON file.

    python tools/infer.py CONFIG CHECKPOINT img1.png img2.jpg some_folder/ --out-dir out/

Each image goes through the config's test pipeline (data.test), the model predicts, and
the result is drawn on the image (out-dir/<name>.png); out-dir/results.json lists every
image's result.
"""
import argparse
import json
import sys
from pathlib import Path

from _common import add_cfg_options, load, pipeline_norm, result_names

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("checkpoint")
    p.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("--out-dir", help="default: work_dirs/<config-stem>/infer")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--no-draw", action="store_true", help="only write results.json")
    add_cfg_options(p)
    return p.parse_args(argv)


def list_images(inputs):
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            files.append(item)
        else:
            sys.exit(f"error: {item}: no such file or folder")
    if not files:
        sys.exit(f"error: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {' '.join(inputs)}")
    return files


def main(argv=None):
    args = parse_args(argv)
    cfg = load(args)
    import torch
    from torchvision import tv_tensors

    from defectkit.data.collate import collate, to_device
    from defectkit.data.datasets import load_image
    from defectkit.data.formats.common import DataFormatError
    from defectkit.data.transforms import build_pipeline
    from defectkit.engine import default_work_dir, init_model, resolve_device
    from defectkit.visualization import draw_result, to_pil

    files = list_images(args.inputs)
    out_dir = Path(args.out_dir or Path(cfg.get("work_dir") or default_work_dir(args.config)) / "infer")
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device or cfg.get("device"))
    model, meta = init_model(cfg, args.checkpoint, device)
    classes = meta.get("classes") or cfg.get("classes")
    pipeline = build_pipeline(((cfg.get("data") or {}).get("test") or {}).get("pipeline"))
    mean, std = pipeline_norm(pipeline)

    records = []
    for i, path in enumerate(files):
        try:
            img = load_image(path)
        except DataFormatError as e:
            print(f"skipped: {e}")
            continue
        sample = {"image": tv_tensors.Image(img),
                  "meta": {"path": str(path), "id": i, "orig_size": tuple(img.shape[-2:])}}
        if pipeline is not None:
            sample = pipeline(sample)
        batch = collate([sample])
        with torch.no_grad():
            result = model.predict(to_device(batch, device))[0]
        records.append({"path": str(path), **result.to_json()})
        if callable(getattr(result, "write_files", None)):   # e.g. segmentation masks as PNG
            records[-1]["files"] = result.write_files(out_dir, f"{i:05d}_{path.stem}")
        if not args.no_draw:
            drawn = draw_result(to_pil(sample["image"], mean, std), result, result_names(cfg, result, classes))
            drawn.save(out_dir / f"{i:05d}_{path.stem}.png")
        print(f"{path}: {json.dumps(result.to_json())}")
    (out_dir / "results.json").write_text(json.dumps(records, indent=1, ensure_ascii=False))
    print(f"wrote {out_dir / 'results.json'}" + ("" if args.no_draw else f" and {len(records)} images"))
    return 0


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
