"""Argument helpers shared by the command-line tools (kept tiny on purpose)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# allow `python tools/x.py` from a source checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CFG_OPTIONS_HELP = (
    "override config keys, mmengine style: KEY=VALUE pairs such as train.epochs=24 "
    "model.gate.schedule=inverse 'data.train.pipeline.0.scale=[640,640]' x=None x=true. "
    "Lists: KEY=\"[a,b]\" or KEY=a,b; no spaces inside a value.")


def add_cfg_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                        help=CFG_OPTIONS_HELP)


def load(args) -> dict:
    """Load args.config with --cfg-options; exit with the config error message (no traceback)."""
    from defectkit.config import ConfigError, load_config

    try:
        return load_config(args.config, args.cfg_options)
    except ConfigError as e:
        sys.exit(f"config error: {e}")


def pipeline_norm(pipeline):
    """(mean, std) of the Normalize step of a built pipeline, to undo it when drawing."""
    for t in getattr(pipeline, "transforms", None) or []:
        inner = getattr(t, "t", t)
        if hasattr(inner, "mean") and hasattr(inner, "std"):
            return list(inner.mean), list(inner.std)
    return None, None


def result_names(cfg: dict, result, classes):
    """Display names for a result's class indices."""
    from defectkit.structures import class_names_for

    scores = getattr(result, "scores", None)
    if scores is None:
        return classes
    return class_names_for(cfg["model"].get("target", "is_defective"), len(scores), classes)
