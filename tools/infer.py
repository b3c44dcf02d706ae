"""Run a trained model on new images: visualised outputs + one JSON file.

    python tools/infer.py CONFIG CHECKPOINT img1.png img2.jpg some_folder/ [--work-dir W | --out-dir out/]

Each image goes through the config's test pipeline (data.test), the model predicts, and
the result is drawn on the ORIGINAL image with class names and scores
(<out>/<index>_<name>.png; <out> = WORK_DIR/infer, or --out-dir itself); <out>/results.json
lists every input's result. Every input is isolated: one that fails (unreadable file, a
model or drawing error) is recorded in results.json with its "error" and the others
complete; the exit code is 1 only when every input failed. A result that declares summary
tables (``Result.table_rows``, e.g. one row per defect and one verdict per image for a
severity model) also gets one <out>/<table>.csv over all inputs.
"""
import argparse
import csv
import json
import sys
from pathlib import Path

from _common import add_cfg_options, add_no_ema, add_work_dir, load, result_names, work_dir

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("checkpoint")
    p.add_argument("inputs", nargs="+", help="image files and/or folders (searched recursively)")
    add_work_dir(p, "infer/")
    p.add_argument("--out-dir", help="the output folder itself (default: WORK_DIR/infer)")
    add_no_ema(p)
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--no-draw", action="store_true", help="only write results.json")
    add_cfg_options(p)
    return p.parse_args(argv)


def list_images(inputs):
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        else:            # a missing file is recorded with its error in results.json, like any failure
            files.append(item)
    if not files:
        sys.exit(f"error: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {' '.join(inputs)}")
    return files


def main(argv=None):
    args = parse_args(argv)
    cfg = load(args)
    from defectkit.engine import build_evaluator, init_model, resolve_device
    from defectkit.progress import track
    from defectkit.data.transforms import build_pipeline

    files = list_images(args.inputs)
    out_dir = Path(args.out_dir or work_dir(args, cfg) / "infer")
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device or cfg.get("device"))
    model, meta = init_model(cfg, args.checkpoint, device, use_ema=not args.no_ema)
    classes = meta.get("classes") or cfg.get("classes")
    pipeline = build_pipeline(((cfg.get("data") or {}).get("test") or {}).get("pipeline"))
    namer = build_evaluator(cfg["evaluation"], classes) if cfg.get("evaluation") else None   # names labels

    records, failed, tables = [], [], {}
    try:
        for i, path in enumerate(track(files, desc="infer", unit="img")):
            rec = {"path": str(path)}
            records.append(rec)
            try:           # every input is isolated: one failure never stops the others
                infer_one(model, pipeline, path, i, device, out_dir, rec, cfg, classes, draw=not args.no_draw,
                          namer=namer, tables=tables)
                print(f"{path}: {json.dumps({k: v for k, v in rec.items() if k != 'path'})}")
            except Exception as e:     # noqa: BLE001 (recorded with the input, reported below)
                rec["error"] = f"{type(e).__name__}: {e}"
                failed.append(rec)
                print(f"failed: {path}: {rec['error']}", file=sys.stderr)
    finally:           # even on Ctrl-C, what was done is kept
        (out_dir / "results.json").write_text(json.dumps(records, indent=1, ensure_ascii=False))
        written = [write_table(out_dir / f"{name}.csv", rows) for name, rows in tables.items()]
    drawn = sum("image" in r for r in records)
    print(f"wrote {out_dir / 'results.json'}" + "".join(f", {p}" for p in written)
          + ("" if args.no_draw else f" and {drawn} images"))
    if failed:
        print(f"{len(failed)} of {len(records)} inputs failed (their errors are in results.json): "
              + ", ".join(Path(r["path"]).name for r in failed[:10]) + (" ..." if len(failed) > 10 else ""),
              file=sys.stderr)
    return 1 if len(failed) == len(records) else 0


def write_table(path: Path, rows: list[dict]) -> Path:
    """One summary CSV; the columns are the union of the rows' keys in first-seen order."""
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return path


def infer_one(model, pipeline, path, index, device, out_dir, rec, cfg, classes, draw=True, namer=None,
              tables=None):
    """Predict one image file and fill ``rec`` (its results.json entry) in place: the
    result's JSON (with the class names ``namer``, the config's evaluator, adds), ``files``
    the result writes (e.g. masks) and ``image``, the drawing on
    the ORIGINAL picture; the result's summary-table rows are appended to ``tables``
    (``{table: [row, ...]}``). Raises whatever fails; what succeeded stays in ``rec``."""
    import torch
    from torchvision import tv_tensors

    from defectkit.data.collate import collate, to_device
    from defectkit.data.datasets import load_image
    from defectkit.visualization import draw_result

    img = load_image(path, ((cfg.get("data") or {}).get("test") or {}).get("exif_orientation", True))
    sample = {"image": tv_tensors.Image(img),
              "meta": {"path": str(path), "id": index, "orig_size": tuple(img.shape[-2:])}}
    if pipeline is not None:
        sample = pipeline(sample)
    with torch.no_grad():
        result = model.predict(to_device(collate([sample]), device))[0]
    rec.update(result.to_json())
    if namer is not None:
        rec.update(namer.export_fields(result))
    stem = f"{index:05d}_{path.stem}"
    files = result.write_files(out_dir, stem)            # e.g. segmentation masks as PNG
    if tables is not None:
        for name, rows in result.table_rows(str(path), result_names(cfg, result, classes)).items():
            tables.setdefault(name, []).extend(rows)
    if files:
        rec["files"] = files
    if draw:
        drawn = draw_result(img, result, result_names(cfg, result, classes), pipeline=pipeline)
        drawn.save(out_dir / f"{stem}.png")
        rec["image"] = str(out_dir / f"{stem}.png")


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
