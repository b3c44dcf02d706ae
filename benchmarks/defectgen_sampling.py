"""Defect-Gen sampling targets (issue 12, "Targets"), measured in ONE process so that a busy
CPU slows every variant alike (ratios, not absolute times, are what to compare).

    python benchmarks/defectgen_sampling.py                                  # random weights
    python benchmarks/defectgen_sampling.py --large-ckpt work_dirs/adm_large_tiny_synth/latest.pth \
        --small-ckpt work_dirs/sindiffusion_small_tiny_synth/latest.pth \
        [--seg-config configs/znet/unet_demo_gen.yaml --seg-ckpt work_dirs/.../latest.pth] \
        --out work_dirs/defectgen_sampling.json

1. Parameter counts of the full configs (targets 125 M and 98 M, +-5 %); no forward pass.
2. Two-stage sampling at the tiny configs: seconds per sample and per stage, DDIM at
   ``--steps`` (50) and at 1000 steps (time ratio).
3. Our sampling loop (``models/generation/diffusion.sample_loop``) vs diffusers'
   ``DDIMPipeline`` driving the SAME ``UNet2DModel`` (the tiny ADM) with the same scheduler,
   steps and batch: median time ratio over ``--repeats`` interleaved runs (target <= 1.05).
4. With trained checkpoints: the diversity measure (mean pairwise MS-SSIM among generated
   images, lower = more diverse) for eta 0 vs 1, two-stage vs large-only, 50 vs 1000 steps;
   with a segmenter (``--seg-config/--seg-ckpt``) also the mask-image alignment (defect IoU).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import defectkit  # noqa: E402,F401  (registers everything)
from defectkit.config import load_config  # noqa: E402
from defectkit.engine.builders import build_model  # noqa: E402
from defectkit.models.generation.diffusion import make_sample_scheduler, sample_loop  # noqa: E402

FULL = {"large": ("configs/defectgen/adm_large_256_ds_mvtec.yaml", 125e6),
        "small": ("configs/defectgen/sindiffusion_small_256_ds_mvtec.yaml", 98e6)}
TINY = {"large": "configs/defectgen/adm_large_tiny_synth.yaml",
        "small": "configs/defectgen/sindiffusion_small_tiny_synth.yaml"}


def param_counts() -> dict:
    """Parameters of each full denoiser, built from its config (no forward pass)."""
    out = {}
    for stage, (config, target) in FULL.items():
        model = build_model(load_config(ROOT / config)["model"])
        n = sum(p.numel() for p in model.parameters())
        out[stage] = {"config": config, "params": n, "target": target, "within_5pct": abs(n / target - 1) <= 0.05}
        print(f"{stage:5s} {config}: {n / 1e6:.2f} M parameters (target {target / 1e6:.0f} M +-5%: "
              f"{'ok' if out[stage]['within_5pct'] else 'MISSED'})", flush=True)
        del model
    return out


def tiny_sampler(args, **options):
    """DefectGen over the tiny configs' denoisers (checkpoints when given, EMA weights)."""
    cfg = {"type": "DefectGen", "large": str(ROOT / TINY["large"]), "small": str(ROOT / TINY["small"]),
           "large_checkpoint": args.large_ckpt, "small_checkpoint": args.small_ckpt,
           "num_inference_steps": args.steps, "batch_size": args.batch_size, **options}
    return build_model(cfg).eval()


def timed_sample(model, num: int, seed: int = 0):
    t0 = time.perf_counter()
    results = model.sample(num, seed=seed)
    total = time.perf_counter() - t0
    stages: dict[str, float] = {}
    for r in results:
        for k, v in r.stage_seconds.items():
            stages[k] = stages.get(k, 0.0) + v
    return results, total, stages


def stage_timing(args) -> dict:
    out = {}
    for steps in (args.steps, 1000):
        model = tiny_sampler(args, num_inference_steps=steps)
        timed_sample(model, args.batch_size)                      # warm-up
        _, total, stages = timed_sample(model, args.num)
        row = {"steps": steps, "sec_per_sample": total / args.num,
               **{f"sec_per_sample_{k}": v / args.num for k, v in stages.items()}}
        out[str(steps)] = row
        print(f"two-stage, {steps:4d} DDIM steps: {row['sec_per_sample']:.3f} s/sample ("
              + ", ".join(f"{k} {v / args.num:.3f} s" for k, v in stages.items()) + ")", flush=True)
    out["time_ratio_1000_vs_steps"] = out["1000"]["sec_per_sample"] / out[str(args.steps)]["sec_per_sample"]
    print(f"1000 steps take {out['time_ratio_1000_vs_steps']:.1f}x the time of {args.steps}", flush=True)
    return out


def loop_vs_pipeline(args) -> dict:
    """Median wall time of our loop / diffusers' DDIMPipeline, same UNet2DModel and steps."""
    from diffusers import DDIMPipeline

    denoiser = build_model(load_config(ROOT / TINY["large"])["model"]).eval()
    unet = denoiser.denoiser.unet                                 # the diffusers UNet2DModel
    size = int(unet.config.sample_size)
    shape = (args.batch_size, int(unet.config.in_channels), size, size)
    pipe = DDIMPipeline(unet=unet, scheduler=make_sample_scheduler())
    pipe.set_progress_bar_config(disable=True)

    def ours():
        sample_loop({"large": lambda x, t: unet(x, t).sample}, shape, num_inference_steps=args.steps,
                    eta=0.0, mode="large_only", generator=torch.Generator().manual_seed(0))

    def theirs():
        pipe(batch_size=args.batch_size, generator=torch.Generator().manual_seed(0), eta=0.0,
             num_inference_steps=args.steps, output_type="np")

    times = {"ours": [], "diffusers": []}
    with torch.no_grad():
        ours(), theirs()                                          # warm-up
        for _ in range(args.repeats):                              # interleaved
            for name, fn in (("ours", ours), ("diffusers", theirs)):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["ours"] / med["diffusers"]
    print(f"our loop vs DDIMPipeline ({args.steps} steps, batch {args.batch_size}, {args.repeats} interleaved "
          f"runs): median {med['ours']:.3f} s vs {med['diffusers']:.3f} s, ratio {ratio:.3f} (target <= 1.05)",
          flush=True)
    return {"median_s": med, "runs_s": times, "ratio": ratio, "target": 1.05, "met": ratio <= 1.05}


def quality(args) -> dict:
    """Diversity (and alignment) of generated sets under sampler variants (trained weights)."""
    from defectkit.evaluation.generation import alignment_scores, load_alignment_segmenter
    from defectkit.evaluation.generation_metrics import msssim_diversity, sample_class

    seg = (load_alignment_segmenter(str(ROOT / args.seg_config), args.seg_ckpt, "cpu")
           if args.seg_config and args.seg_ckpt else None)
    variants = {"two_stage eta0": {}, "two_stage eta1": {"eta": 1.0}, "large_only eta0": {"mode": "large_only"},
                "large_only eta1": {"mode": "large_only", "eta": 1.0},
                "two_stage eta0 1000 steps": {"num_inference_steps": 1000}}
    out = {}
    for name, opts in variants.items():
        results, total, _ = timed_sample(tiny_sampler(args, **opts), args.num_quality)
        images = torch.stack([r.image for r in results])
        masks = torch.stack([r.mask for r in results])
        div = msssim_diversity(images, [sample_class(m) for m in masks])
        row = {"msssim_diversity": div["overall"], "pairs": div["pairs"], "scales": div["scales"],
               "defect_pixel_share": float((masks > 0).double().mean()), "sec_per_sample": total / len(results)}
        if seg is not None:
            scores = alignment_scores(seg, images, masks)
            row["alignment_defect_iou"] = sum(scores) / len(scores)
        out[name] = row
        print(f"{name:26s} MS-SSIM {row['msssim_diversity']:.3f} ({div['pairs']} pairs)"
              + (f"  alignment {row['alignment_defect_iou']:.3f}" if seg is not None else "")
              + f"  defect pixels {row['defect_pixel_share']:.3f}  {row['sec_per_sample']:.2f} s/sample", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--large-ckpt", help="tiny ADM checkpoint (default: random weights; timing only)")
    p.add_argument("--small-ckpt", help="tiny SinDiffusion checkpoint")
    p.add_argument("--seg-config", help="segmenter config for the alignment score (with --seg-ckpt)")
    p.add_argument("--seg-ckpt")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps of the fast setting (default 50)")
    p.add_argument("--num", type=int, default=8, help="samples per timing (default 8)")
    p.add_argument("--num-quality", type=int, default=32, help="samples per quality variant (default 32)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--repeats", type=int, default=7, help="interleaved runs of the loop comparison")
    p.add_argument("--skip", nargs="*", default=[], choices=["params", "stages", "pipeline", "quality"])
    p.add_argument("--out", default="work_dirs/defectgen_sampling.json")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    report = {"torch": torch.__version__, "threads": torch.get_num_threads(), "args": vars(args)}
    if "params" not in args.skip:
        report["params"] = param_counts()
    if "stages" not in args.skip:
        report["stages"] = stage_timing(args)
    if "pipeline" not in args.skip:
        report["loop_vs_pipeline"] = loop_vs_pipeline(args)
    if "quality" not in args.skip and args.large_ckpt and args.small_ckpt:
        report["quality"] = quality(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
