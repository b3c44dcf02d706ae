"""ATT of trained detectors compared INTERLEAVED in one process (the demo's ATT columns).

    python benchmarks/detector_att_interleaved.py CONFIG_A CKPT_A CONFIG_B CKPT_B [...]
        [--repeats 2] [--warmup 3] [--threads N] [--out work_dirs/bench/detector_att.json]

Every (config, checkpoint) pair is loaded with ``init_model``; the test split of the FIRST
config is read once (batch 1, its test pipeline; the pairs must share it). For each image,
each model's ``predict`` is timed in turn, the order rotated from image to image, so a busy
CPU slows every model alike and the ratios survive a loaded machine (DESIGN.md §8): run
``tools/test.py`` one model after another on a shared CPU and the same model's ATT moves
by 2x, far more than the difference being measured. Data loading and the collate are
outside the timed call; the first ``--warmup`` calls of each model are discarded.

Reports per model (ms, mean over every timed call): ``att_ms`` over all test images,
``att_normal_ms`` over GT-normal ones, ``att_defective_ms`` over GT-defective ones, the
median, the share of images sent to the detection heads (``pass_rate``, from
``gate_stats``: 1.0 without a gate), and ``ratio`` = the
model's ATT / the first model's ATT (both from this run). Writes them as JSON to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pairs", nargs="+", metavar="CONFIG CHECKPOINT",
                   help="config and checkpoint of each compared model, in pairs")
    p.add_argument("--repeats", type=int, default=2, help="passes over the test split (default 2)")
    p.add_argument("--warmup", type=int, default=3, help="discarded calls per model (default 3)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="work_dirs/bench/detector_att.json")
    args = p.parse_args(argv)
    if len(args.pairs) % 2 or len(args.pairs) < 4:
        p.error("give CONFIG CHECKPOINT pairs, at least two of them")
    return args


def interleaved_att(models: dict, loader, device, repeats: int = 2, warmup: int = 3) -> dict:
    """Time ``predict`` of every model on every batch of ``loader`` (batch 1), rotating
    the call order per image. Returns ``{name: [(seconds, is_defective), ...]}``."""
    import torch

    from defectkit.data.collate import SKIPPED, is_empty_batch, to_device
    from defectkit.progress import track

    names = list(models)
    times = {n: [] for n in names}
    batches = []
    for batch in loader:
        if SKIPPED in batch:
            if is_empty_batch(batch):
                continue
            batch = {k: v for k, v in batch.items() if k != SKIPPED}
        batches.append(to_device(batch, device))
    if not batches:
        raise SystemExit("detector_att_interleaved: the test split has no readable image")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        for n in names:
            for _ in range(warmup):
                models[n].predict(batches[0])
            if hasattr(models[n], "reset_gate_stats"):
                models[n].reset_gate_stats()
        k = 0
        for _ in track(range(repeats * len(batches)), total=repeats * len(batches), desc="ATT", unit="img"):
            batch = batches[k % len(batches)]
            d = batch.get("is_defective")
            d = int(d[0]) if d is not None else None
            order = names[k % len(names):] + names[:k % len(names)]
            for n in order:
                sync()
                t0 = time.perf_counter()
                models[n].predict(batch)
                sync()
                times[n].append((time.perf_counter() - t0, d))
            k += 1
    return times


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from defectkit.config import load_config
    from defectkit.engine import build_dataset, build_eval_loader, summarize_times
    from defectkit.engine.builders import init_model

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    pairs = list(zip(args.pairs[0::2], args.pairs[1::2]))
    models, cfgs = {}, {}
    for cfg_path, ckpt in pairs:
        cfg = load_config(cfg_path)
        name = Path(cfg_path).stem
        models[name], _ = init_model(cfg, ckpt, device=device)
        cfgs[name] = (cfg_path, ckpt)
    first_cfg = load_config(pairs[0][0])
    loader = build_eval_loader(build_dataset(first_cfg["data"]["test"]), batch_size=1, distributed=False)
    times = interleaved_att(models, loader, device, args.repeats, args.warmup)

    base = None
    result = {"device": f"{device.type} ({platform.processor() or platform.machine()}, "
                        f"{torch.get_num_threads()} threads)",
              "torch": torch.__version__, "repeats": args.repeats, "warmup": args.warmup,
              "batch_size": 1, "models": {}}
    for name, ts in times.items():
        row = summarize_times(ts)
        row["median_ms"] = 1000 * statistics.median(t for t, _ in ts)
        stats = models[name].gate_stats() if hasattr(models[name], "gate_stats") else None
        row["pass_rate"] = stats["pass_rate"] if stats else None   # share sent to the detection heads
        base = row["att_ms"] if base is None else base
        row["ratio"] = row["att_ms"] / base
        row["config"], row["checkpoint"] = map(str, cfgs[name])
        result["models"][name] = row
    out = Path(args.out)
    out = out if out.is_absolute() else ROOT / out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"interleaved ATT, batch 1, {args.repeats} passes over {len(times[name]) // args.repeats} "
          f"test images, {result['device']}")
    print("| model | ATT ms | ATT_N | ATT_D | ratio |")
    print("|---|---|---|---|---|")
    for name, r in result["models"].items():
        print(f"| {name} | {r['att_ms']:.1f} | {r['att_normal_ms']:.1f} | {r['att_defective_ms']:.1f} "
              f"| {r['ratio']:.2f} |")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
