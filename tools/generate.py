"""Generate defective images with their masks from a Defect-Gen model and write them as a dataset.

    python tools/generate.py configs/defectgen/defectgen_two_stage_tiny_synth.yaml --num 64 --out work_dirs/gen
    python tools/generate.py configs/defectgen/adm_large_tiny_synth.yaml work_dirs/adm_large_tiny_synth/latest.pth \\
        --num 16 --out work_dirs/gen_large --steps 50 --eta 1.0

CONFIG is a generation config: a two-stage ``DefectGen`` config loads its parts' checkpoints
itself (``large_checkpoint`` / ``small_checkpoint``; CHECKPOINTs given here replace them, in
the order of the model's parts), a single ``DiffusionDenoiser`` config takes its CHECKPOINT.

Sampler flags are written into the model config before it is built, exactly as
``--cfg-options`` would (``--cfg-options`` is applied first, the flags win): each flag sets
the model's own key when its constructor has one, else the key of its ``sampling`` dict:
``--steps K`` -> ``model.num_inference_steps`` (or ``model.sampling.num_inference_steps``),
``--eta E`` -> ``model.eta``, ``--t-switch T`` -> ``model.t_switch``, ``--mode M`` ->
``model.mode``; a model with neither key refuses the flag in one line. ``--seed S``: sample
``i`` starts from seed ``S + i`` whatever ``--batch-size`` (default: the config's seed, else 0).

Writes under ``--out DIR`` (an empty/new folder, or an earlier output of this tool, which is
replaced; layout: ``defectkit/data/formats/generated.py``):

    images/NNNNN.png               RGB, as the original's output
    masks/NNNNN.png                colour mask (the original's 11-colour palette)
    masks_converted_dir/NNNNN.png  uint8 class index: the class-index mask folder
                                   (MaskFolderDataset img_dir=DIR/images mask_dir=DIR/masks_converted_dir)
    coco.json                      COCO: one annotation per connected component of each class
    labelme/NNNNN.json             LabelMe polygons (LabelMeDataset ann_dir=DIR/labelme)
    generation.json                resolved config, seeds, steps, eta, t_switch, mode, per-stage
                                   and total seconds, counts, versions

``--filter-alignment THR`` (with ``--seg-config C --seg-checkpoint P``): a segmenter trained on
the real data predicts every generated image; a pair whose mask-alignment IoU with the
generated mask is below THR is dropped (not written). The count is printed and stored in
generation.json (``filtered``, with each dropped sample's seed and score).
"""
import argparse
import copy
import inspect
import json
import platform
import sys
import time
from pathlib import Path

from _common import add_cfg_options, add_no_ema, load

# flag (argparse dest) -> the model config key it sets
FLAG_KEYS = {"steps": "num_inference_steps", "eta": "eta", "t_switch": "t_switch", "mode": "mode"}
# keys reported in generation.json's `sampler` (with the seed)
SAMPLER_KEYS = ("num_inference_steps", "eta", "t_switch", "mode", "compat_repo_sampling")
MODES = ("two_stage", "large_only", "small_only")


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("checkpoints", nargs="*", metavar="CHECKPOINT",
                   help="the denoiser's checkpoint; for a model that loads its parts' weights "
                        "(DefectGen) optional: one per part, in order (large, small), replacing the config's")
    p.add_argument("--num", type=_positive_int, required=True, help="number of samples to generate")
    p.add_argument("--out", required=True, help="output folder (new, empty, or an earlier output of this tool)")
    p.add_argument("--seed", type=int, help="seed of sample 0; sample i uses seed+i (default: the config's, else 0)")
    p.add_argument("--eta", type=float, help="DDIM eta (0 = deterministic DDIM, the original's sampler)")
    p.add_argument("--steps", type=_positive_int, help="sampling steps (num_inference_steps; 1000 = faithful)")
    p.add_argument("--t-switch", type=int, help="two-stage switch: the large model for t >= T, the small below")
    p.add_argument("--mode", choices=MODES, help="two-stage sampling mode")
    p.add_argument("--batch-size", type=_positive_int,
                   help="samples per model call (default: the config's model.batch_size or "
                        "model.sampling.batch_size, else 8); the output does not depend on it")
    p.add_argument("--device", help="cpu, cuda, ... (default: the config's, else cuda when available)")
    add_no_ema(p)
    p.add_argument("--filter-alignment", type=float, metavar="THR",
                   help="drop pairs whose mask-alignment IoU (segmenter prediction vs generated mask) is < THR")
    p.add_argument("--seg-config", help="config of the segmenter used by --filter-alignment")
    p.add_argument("--seg-checkpoint", help="checkpoint of the segmenter used by --filter-alignment")
    add_cfg_options(p)
    return p.parse_args(argv)


# ------------------------------------------------------------------------ config handling
def constructor_params(model_type: str) -> dict:
    """The registered model's constructor parameters (name -> inspect.Parameter)."""
    import defectkit  # noqa: F401  (registers the models)
    from defectkit.config import ConfigError
    from defectkit.registry import MODELS

    if model_type not in MODELS:
        raise ConfigError(f"model.type: unknown model {model_type!r}")
    return dict(inspect.signature(MODELS.get(model_type).__init__).parameters)


def option_keys(model_type: str, name: str) -> set[str] | None:
    """The field names of the option dataclass the model's constructor parameter ``name`` is
    annotated with (``sampling: SamplingConfig | dict | None``); None when it names none."""
    import dataclasses
    import typing

    from defectkit.registry import MODELS

    try:
        hint = typing.get_type_hints(MODELS.get(model_type).__init__).get(name)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve: no key list
        return None
    for t in (typing.get_args(hint) or (hint,)):
        if dataclasses.is_dataclass(t):
            return {f.name for f in dataclasses.fields(t)}
    return None


def flag_options(model_cfg: dict, flags: dict) -> dict:
    """Dotted ``--cfg-options`` keys for the sampler flags that were given: ``model.<key>``
    when the constructor takes ``key``, else ``model.sampling.<key>`` when it takes a
    ``sampling`` dict that has the key (its dataclass's fields); ``ConfigError`` naming the
    flag otherwise (e.g. ``--t-switch`` for a denoiser that samples alone)."""
    from defectkit.config import ConfigError

    params = constructor_params(model_cfg.get("type"))
    sampling = option_keys(model_cfg.get("type"), "sampling") if "sampling" in params else None
    out = {}
    for dest, value in flags.items():
        if value is None:
            continue
        key = FLAG_KEYS[dest]
        if key in params:
            out[f"model.{key}"] = value
        elif "sampling" in params and (sampling is None or key in sampling):
            out[f"model.sampling.{key}"] = value
        else:
            raise ConfigError(f"--{dest.replace('_', '-')}: model {model_cfg.get('type')} has no `{key}` "
                              f"option (a two-stage DefectGen config has)")
    return out


def sampled_parts(model_cfg: dict) -> tuple[list[str], list[str]]:
    """``(parts, needed)`` of a model that loads its parts' weights: all its parts
    (``model_parts``, in order) and those its ``mode`` samples with (the class's
    ``parts_for_mode(mode)``; every part for a model without one)."""
    from defectkit.registry import MODELS

    cls = MODELS.get(model_cfg.get("type"))
    parts = list(getattr(cls, "model_parts", {}))
    if not callable(getattr(cls, "parts_for_mode", None)):
        return parts, parts
    mode = model_cfg.get("mode")
    if mode is None:
        default = constructor_params(model_cfg.get("type")).get("mode")
        mode = default.default if default is not None else None
    return parts, list(cls.parts_for_mode(mode))


def checkpoint_options(model_cfg: dict, checkpoints: list[str]) -> tuple[dict, str | None]:
    """``(options, checkpoint for init_model)``: a model that loads its own weights gets
    each given CHECKPOINT as ``model.<part>_checkpoint``, in the order of all its parts
    (large, small) or, when fewer are given, of the parts its mode samples with (one
    CHECKPOINT with ``--mode large_only`` is the large denoiser's, with ``small_only`` the
    small one's); any other model takes exactly one CHECKPOINT. ``ConfigError`` for a wrong
    count, and for a part the mode samples with whose checkpoint is then still unset
    (naming ``model.<part>_checkpoint``)."""
    from defectkit.config import ConfigError
    from defectkit.engine.builders import loads_own_weights

    mtype = model_cfg.get("type")
    if loads_own_weights(model_cfg):
        parts, needed = sampled_parts(model_cfg)
        mode = f" (mode {model_cfg['mode']})" if model_cfg.get("mode") is not None else ""
        if checkpoints and len(checkpoints) not in (len(parts), len(needed)):
            named = ", ".join(p + "_checkpoint" for p in needed)
            raise ConfigError(f"{mtype}{mode} samples with {len(needed)} part(s) ({named}); give "
                              f"{len(needed)} CHECKPOINT(s) in that order"
                              + (f" or all {len(parts)} ({', '.join(parts)})" if len(parts) != len(needed) else "")
                              + f", or none to use the config's; got {len(checkpoints)}")
        order = parts if len(checkpoints) == len(parts) else needed
        options = {f"model.{p}_checkpoint": c for p, c in zip(order, checkpoints)}
        unset = [p for p in needed if not (options.get(f"model.{p}_checkpoint") or model_cfg.get(f"{p}_checkpoint"))]
        if unset and parts:
            raise ConfigError(f"{mtype}{mode} samples with the {' and '.join(unset)} denoiser(s), but "
                              + ", ".join(f"model.{p}_checkpoint" for p in unset)
                              + " is not set: give the trained checkpoint as CHECKPOINT or set it in the config")
        return options, None
    if len(checkpoints) != 1:
        raise ConfigError(f"{mtype} needs exactly one CHECKPOINT after the config (its trained weights), "
                          f"got {len(checkpoints)}")
    return {}, checkpoints[0]


def sampler_settings(model) -> dict:
    """The sampler settings (SAMPLER_KEYS) the model runs with, from its public
    ``sampler_options()`` (``DefectGen`` and a ``DiffusionDenoiser`` alone); None for a
    key it does not use (``t_switch`` of a denoiser alone)."""
    from defectkit.config import ConfigError

    if not callable(getattr(type(model), "sampler_options", None)):
        raise ConfigError(f"model.type: {type(model).__name__} is not a Defect-Gen sampler (no sampler_options(); "
                          f"use a DefectGen or DiffusionDenoiser config)")
    opts = model.sampler_options()
    return {key: opts.get(key) for key in SAMPLER_KEYS}


def steps_per_batch(settings: dict) -> int | None:
    """Denoiser calls per ``sample`` call (the progress bar's unit), from the sampler
    settings (``count_steps``); None when unknown."""
    from defectkit.models.generation.diffusion import count_steps

    if not settings.get("num_inference_steps"):
        return None
    try:
        return sum(count_steps(int(settings["num_inference_steps"]), mode=settings.get("mode") or "large_only",
                               t_switch=int(settings.get("t_switch") or 400),
                               compat_repo_sampling=bool(settings.get("compat_repo_sampling"))).values())
    except (TypeError, ValueError):
        return None


class StepProgress:
    """``progress(n)`` callback of ``model.sample``: the denoiser steps of the whole run on
    ``defectkit.progress.track`` (tqdm with rate and ETA on a terminal, a plain line every
    10 s otherwise; without a known total: steps and elapsed time)."""

    def __init__(self, total: int | None, desc: str):
        import itertools

        from defectkit.progress import track

        self.total = total
        self._it = iter(track(range(total) if total else itertools.count(), total=total, desc=desc, unit="step"))

    def __call__(self, n: int = 1) -> None:
        for _ in range(int(n)):
            next(self._it, None)

    def close(self) -> None:
        if self.total:
            for _ in self._it:      # ends the bar (and prints the closing line)
                pass
        self._it = iter(())


def default_batch_size(model) -> int:
    """The model's own sampling batch size (its public ``sample_batch_size``), else 8."""
    v = getattr(type(model), "sample_batch_size", None)
    v = model.sample_batch_size if v is not None else None
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 1 else 8


def default_seed(model_cfg: dict) -> int:
    """The config's sampling seed (``model.seed`` or ``model.sampling.seed``), else 0."""
    for v in (model_cfg.get("seed"), (model_cfg.get("sampling") or {}).get("seed")):
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return 0


def model_classes(model, meta: dict, cfg: dict) -> list[str]:
    """The defect class names the samples' mask values 1..K stand for: the model's
    ``classes``, the checkpoint's, the config's (``model.classes``, ``classes``,
    ``data.train.classes``), else ``class_1..class_K`` from ``num_defect``."""
    train = (cfg.get("data") or {}).get("train") or {}
    for src in (getattr(model, "classes", None), meta.get("classes"), cfg["model"].get("classes"),
                cfg.get("classes"), train.get("classes") if isinstance(train, dict) else None):
        if src:
            return [str(c) for c in src]
    k = getattr(model, "num_defect", None) or cfg["model"].get("num_defect")
    if not k:
        from defectkit.config import ConfigError
        raise ConfigError("model.classes: the model names no defect classes and has no num_defect")
    return [f"class_{i}" for i in range(1, int(k) + 1)]


def versions() -> dict:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("diffusers", "numpy"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = None
    return out


# ------------------------------------------------------------------------ main
def main(argv=None):
    args = parse_args(argv)
    if args.filter_alignment is not None:
        if not 0.0 <= args.filter_alignment <= 1.0:
            sys.exit(f"generate: --filter-alignment {args.filter_alignment}: must be an IoU in [0, 1]")
        if not (args.seg_config and args.seg_checkpoint):
            sys.exit("generate: --filter-alignment needs --seg-config and --seg-checkpoint "
                     "(the segmenter trained on the real data that judges each pair)")
    elif args.seg_config or args.seg_checkpoint:
        sys.exit("generate: --seg-config / --seg-checkpoint are used only with --filter-alignment THR")
    cfg = load(args)
    import numpy as np
    import torch

    from defectkit.config import apply_options, validate_config
    from defectkit.data.formats.generated import GeneratedDatasetWriter, GeneratedOutputError
    from defectkit.engine import init_model, resolve_device
    from defectkit.models.generation import PALETTE, colour_mask

    if not isinstance(cfg.get("model"), dict) or "type" not in cfg["model"]:
        sys.exit(f"config error: {args.config}: no `model` section with a `type`")
    options = flag_options(cfg["model"], {d: getattr(args, d) for d in FLAG_KEYS})
    if args.no_ema and "use_ema" in constructor_params(cfg["model"]["type"]):
        options["model.use_ema"] = False
    if options:
        apply_options(cfg, options)
    # after the flags: --mode decides which parts' checkpoints are needed
    ckpt_opts, checkpoint = checkpoint_options(cfg["model"], list(args.checkpoints))
    if ckpt_opts:
        apply_options(cfg, ckpt_opts)
    if options or ckpt_opts:
        validate_config(cfg)
    seed = args.seed if args.seed is not None else default_seed(cfg["model"])
    device = resolve_device(args.device or cfg.get("device"))

    t_load = time.perf_counter()
    model, meta = init_model(cfg, checkpoint, device, use_ema=not args.no_ema)
    load_s = time.perf_counter() - t_load
    classes = model_classes(model, meta, cfg)
    segmenter = None
    if args.filter_alignment is not None:
        from defectkit.checkpoint_io import CheckpointError
        from defectkit.evaluation.generation import load_alignment_segmenter

        try:
            segmenter = load_alignment_segmenter(args.seg_config, args.seg_checkpoint, device)
        except (ValueError, FileNotFoundError, CheckpointError) as e:   # they name the file, not this tool's flag
            sys.exit(f"generate: --seg-config/--seg-checkpoint: {e}")
        seg_classes = getattr(segmenter, "classes", None)
        if seg_classes and list(seg_classes) != classes:
            sys.exit(f"generate: the segmenter's classes {list(seg_classes)} differ from the generated "
                     f"classes {classes} (mask values are compared by index)")
    try:
        writer = GeneratedDatasetWriter(args.out, classes, colour_mask, args.num)
    except GeneratedOutputError as e:
        sys.exit(f"generate: {e}")
    sampler = sampler_settings(model)
    if args.batch_size is None:
        args.batch_size = default_batch_size(model)
    shown = ", ".join(f"{k} {v}" for k, v in sampler.items() if v is not None)
    print(f"generating {args.num} samples with {cfg['model']['type']} ({shown}; seeds {seed}..{seed + args.num - 1}, "
          f"batch {args.batch_size}, device {device}) into {args.out}", flush=True)

    stage_seconds: dict[str, float] = {}
    dropped = []
    starts = list(range(0, args.num, args.batch_size))
    per_batch = steps_per_batch(sampler)
    progress = StepProgress(per_batch * len(starts) if per_batch else None, "generate")
    t0 = time.perf_counter()
    sample_s = align_s = 0.0
    for start in starts:
        n = min(args.batch_size, args.num - start)
        ts = time.perf_counter()
        with torch.inference_mode():
            results = model.sample(n, seed=seed + start, batch_size=n, progress=progress)
        sample_s += time.perf_counter() - ts
        scores = [None] * len(results)
        if segmenter is not None:
            ta = time.perf_counter()
            from defectkit.evaluation.generation import alignment_scores

            images = torch.stack([r.image for r in results])
            masks = torch.stack([r.mask for r in results])
            scores = [float(s) for s in alignment_scores(segmenter, images, masks)]
            align_s += time.perf_counter() - ta
        for r, score in zip(results, scores):
            for k, v in (r.stage_seconds or {}).items():
                stage_seconds[k] = stage_seconds.get(k, 0.0) + float(v)
            if score is not None and score < args.filter_alignment:
                dropped.append({"seed": int(r.seed), "alignment_iou": score})
                continue
            info = {"seed": int(r.seed)}
            if score is not None:
                info["alignment_iou"] = score
            writer.add(np.asarray(r.image_pil()), r.mask.cpu().numpy(), info)
    progress.close()
    total_s = time.perf_counter() - t0

    resolved = copy.deepcopy(cfg)
    record = writer.finish({
        "tool": "tools/generate.py",
        "command": " ".join(["tools/generate.py"] + list(sys.argv[1:] if argv is None else argv)),
        "config_file": str(args.config),
        "checkpoints": list(args.checkpoints),
        "weights": getattr(model, "weights_source", None) or meta.get("weights"),
        "model": cfg["model"]["type"],
        "config": resolved,
        "seed": seed,
        "seeds": [seed + i for i in range(args.num)],
        "sampler": sampler,
        "steps": sampler["num_inference_steps"],
        "eta": sampler["eta"],
        "t_switch": sampler["t_switch"],
        "mode": sampler["mode"],
        "batch_size": args.batch_size,
        "device": str(device),
        "num_requested": args.num,
        "filter": None if segmenter is None else {
            "threshold": args.filter_alignment, "seg_config": args.seg_config,
            "seg_checkpoint": args.seg_checkpoint, "dropped": dropped, "seconds": round(align_s, 3)},
        "filtered": len(dropped),
        "stage_seconds": {k: round(v, 4) for k, v in stage_seconds.items()},
        "seconds_per_sample": round(sample_s / args.num, 4),
        "stage_seconds_per_sample": {k: round(v / args.num, 4) for k, v in stage_seconds.items()},
        "sampling_seconds": round(sample_s, 3),
        "model_load_seconds": round(load_s, 3),
        "total_seconds": round(total_s, 3),
        "versions": versions(),
        "palette": [list(c) for c in PALETTE],
    })
    per_stage = ", ".join(f"{k} {v / args.num:.3f}" for k, v in stage_seconds.items())
    print(f"wrote {record['count']} of {args.num} samples to {args.out} in {total_s:.1f} s "
          f"({sample_s / args.num:.3f} s/sample{'; per stage: ' + per_stage if per_stage else ''})")
    if segmenter is not None:
        print(f"--filter-alignment {args.filter_alignment}: dropped {len(dropped)} of {args.num} pairs "
              f"(mask-alignment IoU below the threshold)")
    print(f"use it as data: MaskFolderDataset img_dir={Path(args.out) / 'images'} "
          f"mask_dir={Path(args.out) / 'masks_converted_dir'} classes={json.dumps(classes)}")
    return 0


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
