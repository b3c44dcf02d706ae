"""Per-image inference latency of a model, measured apart from data loading.

    python tools/benchmark.py configs/classifier/resnet18_tiny_synth.yaml work_dirs/resnet18_tiny_synth/latest.pth

Protocol: batches of the test split (batch 1 by default) are decoded and pre-processed
first and kept in memory; --warmup model calls are discarded, then --iters calls are timed
(CUDA-synchronised, time.perf_counter). Reports mean / p50 / p90 ms per image, images/s,
the time split by GT-normal / GT-defective images, peak memory (CUDA max allocated, or the
process's peak RSS on CPU), parameter count, device and versions; writes JSON
(default work_dirs/<config-stem>/benchmark.json). On a shared CPU compare variants as
ratios measured in the same run, not as absolute times.
"""
import argparse
import json
import platform
import sys
import time
from pathlib import Path

from _common import add_cfg_options, load


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("checkpoint", nargs="?", help="weights (default: the config's initial weights)")
    p.add_argument("--task", default="inference", choices=["inference"], help="what to time")
    p.add_argument("--warmup", type=int, help="discarded calls (default: benchmark.warmup)")
    p.add_argument("--iters", type=int, help="timed calls (default: benchmark.iters)")
    p.add_argument("--batch-size", type=int, help="images per call (default: benchmark.batch_size)")
    p.add_argument("--split", default="test", choices=["test", "val", "train"])
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", help="JSON file (default: work_dirs/<config-stem>/benchmark.json)")
    add_cfg_options(p)
    return p.parse_args(argv)


def percentile(values, q):
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else float("nan")


def peak_memory_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def detection_stats(preds, result) -> dict:
    """For detectors: the gate pass rate (timed images with ``gated == False``, when the
    results carry ``gate_score``) and DefectNet's beta / ideal time at the timed images'
    normal proportion alpha."""
    from defectkit.evaluation.detection import att_model
    from defectkit.structures import DetectionResult

    if not preds or not isinstance(preds[0], DetectionResult):
        return {}
    gated = [bool(p.gated) for p in preds if p.gate_score is not None]
    n_n, n_d = result.get("num_normal", 0), result.get("num_defective", 0)
    alpha = n_n / (n_n + n_d) if n_n + n_d else None
    m = att_model(result, alpha)
    return {"gate_pass_rate": sum(not g for g in gated) / len(gated) if gated else None,
            "alpha": m["alpha"], "beta": m["beta"], "ideal_time": m["ideal_time"],
            "att_ideal_ms": m["att_ideal_ms"]}


def main(argv=None):
    args = parse_args(argv)
    cfg = load(args)
    import torch

    from defectkit.data.collate import to_device
    from defectkit.engine import (build_dataset, build_eval_loader, default_work_dir, init_model,
                                  resolve_device)

    if args.threads:
        torch.set_num_threads(args.threads)
    bcfg = cfg.get("benchmark") or {}
    warmup = args.warmup if args.warmup is not None else bcfg.get("warmup", 10)
    iters = args.iters if args.iters is not None else bcfg.get("iters", 50)
    bs = args.batch_size or bcfg.get("batch_size", 1)
    data_cfg = (cfg.get("data") or {}).get(args.split)
    if not data_cfg:
        sys.exit(f"config error: data.{args.split} is not set in {args.config}")

    device = resolve_device(args.device or cfg.get("device"))
    dataset = build_dataset(data_cfg)
    model, _ = init_model(cfg, args.checkpoint, device)
    params = sum(p.numel() for p in model.parameters())

    # 1. data, timed on its own and kept in memory
    loader = build_eval_loader(dataset, batch_size=bs, num_workers=0, distributed=False)
    batches, data_times, it = [], [], iter(loader)
    while len(batches) < warmup + iters:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        data_times.append(time.perf_counter() - t0)
        batches.append(to_device(batch, device))

    # 2. model calls
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    per_image, normal, defective, preds = [], [], [], []
    with torch.no_grad():
        for i, batch in enumerate(batches):
            sync()
            t0 = time.perf_counter()
            results = model.predict(batch)
            sync()
            if i < warmup:
                continue
            n = int(batch["image"].shape[0])
            preds.extend(results)
            dt = (time.perf_counter() - t0) / n
            per_image.append(dt)
            for d in batch.get("is_defective", torch.full((n,), -1)).tolist():
                (defective if d == 1 else normal if d == 0 else []).append(dt)

    ms = [t * 1000 for t in per_image]
    mean_ms = sum(ms) / len(ms)
    result = {
        "config": str(args.config), "checkpoint": args.checkpoint, "task": args.task,
        "model": cfg["model"].get("type"), "batch_size": bs, "warmup": warmup, "iters": iters,
        "ms_per_image": {"mean": mean_ms, "p50": percentile(ms, 50), "p90": percentile(ms, 90),
                         "min": min(ms), "max": max(ms)},
        "images_per_s": 1000.0 / mean_ms,
        "att_normal_ms": 1000 * sum(normal) / len(normal) if normal else None,
        "att_defective_ms": 1000 * sum(defective) / len(defective) if defective else None,
        "num_normal": len(normal), "num_defective": len(defective),
        "data_ms_per_batch": 1000 * sum(data_times) / len(data_times),
        "peak_memory_mb": peak_memory_mb(device),
        "peak_memory_kind": "cuda_max_allocated" if device.type == "cuda" else "process_peak_rss",
        "params": params,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
        f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__, "python": platform.python_version(),
    }
    result.update(detection_stats(preds, result))
    out = Path(args.out or Path(cfg.get("work_dir") or default_work_dir(args.config)) / "benchmark.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    m = result["ms_per_image"]
    print(f"{result['model']} on {result['device']}, batch {bs}, {iters} timed calls after {warmup} warm-up")
    print(f"  ms/image  mean {m['mean']:.2f}  p50 {m['p50']:.2f}  p90 {m['p90']:.2f}   "
          f"({result['images_per_s']:.1f} images/s)")
    if normal and defective:
        print(f"  GT-normal {result['att_normal_ms']:.2f} ms   GT-defective {result['att_defective_ms']:.2f} ms")
    if "beta" in result:
        gate = ("" if result["gate_pass_rate"] is None
                else f"gate pass rate {result['gate_pass_rate']:.3f}   ")
        print(f"  {gate}alpha {result['alpha']:.3f}   beta = ATT_N / ATT_D {result['beta']:.3f}   "
              f"ideal t = 1 - (1 - beta) * alpha {result['ideal_time']:.3f}")
    print(f"  data {result['data_ms_per_batch']:.2f} ms/batch (not included)   params {params / 1e6:.2f} M   "
          f"peak memory {result['peak_memory_mb']:.0f} MB ({result['peak_memory_kind']})")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
