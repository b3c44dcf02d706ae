"""ZNet vs the UNet baseline: parameters and per-image CPU latency at 256x512, in ONE run.

    python benchmarks/znet_latency.py [--iters 10] [--warmup 2] [--threads 2] [--out work_dirs/bench/znet_latency.json]

Both models (and ZNet compat: original) are built from their BSData configs' model
sections with random weights (latency does not depend on the weights), put in eval mode,
and called with ``model.predict`` on the same (1, 3, 256, 512) batch. The calls are
INTERLEAVED (A, B, C, A, B, C, ...) after the warm-up, so a shared CPU's load hits every
model alike; the report gives median ms per model and the ratios to UNet, which is what to
compare on a shared machine (DESIGN.md §8), not the absolute times.
"""
import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = {"ZNet (fixed)": "configs/znet/znet_bsdata.yaml",
           "ZNet (original)": "configs/znet/znet_original_bsdata.yaml",
           "UNet": "configs/znet/unet_bsdata.yaml"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--out", default="work_dirs/bench/znet_latency.json")
    args = p.parse_args(argv)

    import torch

    from defectkit.config import load_config
    from defectkit.engine import build_model

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {name: build_model(load_config(ROOT / cfg)["model"], ["Pitting"]).eval()
              for name, cfg in CONFIGS.items()}
    h, w = args.height, args.width
    batch = {"image": torch.rand(1, 3, h, w), "image_sizes": [(h, w)], "meta": [{"orig_size": (h, w)}]}
    times = {name: [] for name in models}
    with torch.no_grad():
        for i in range(args.warmup + args.iters):
            for name, m in models.items():
                t0 = time.perf_counter()
                m.predict(batch)
                if i >= args.warmup:
                    times[name].append(1000 * (time.perf_counter() - t0))
    med = {name: statistics.median(v) for name, v in times.items()}
    base = med["UNet"]
    result = {"input": [h, w], "batch_size": 1, "warmup": args.warmup, "iters": args.iters,
              "device": f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
              "torch": torch.__version__,
              "models": {name: {"config": CONFIGS[name], "params": sum(p.numel() for p in models[name].parameters()),
                                "ms_median": med[name], "ms_all": times[name],
                                "ratio_to_unet": med[name] / base} for name in models}}
    out = ROOT / args.out if not Path(args.out).is_absolute() else Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"{h}x{w}, batch 1, {args.iters} interleaved calls per model after {args.warmup} warm-up, {result['device']}")
    print("| Model | params | ms/img (median) | ratio to UNet |")
    print("|---|---|---|---|")
    for name, r in result["models"].items():
        print(f"| {name} | {r['params'] / 1e6:.2f}M | {r['ms_median']:.0f} | {r['ratio_to_unet']:.3f} |")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
