"""Argument helpers shared by the command-line tools (kept tiny on purpose)."""
from __future__ import annotations

import argparse
import os
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
    add_debug(parser)


def add_debug(parser: argparse.ArgumentParser) -> None:
    """Document ``--debug`` (run_main acts on it before the parser runs)."""
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also: DEFECTKIT_DEBUG=1)")


def add_work_dir(parser: argparse.ArgumentParser, outputs: str) -> None:
    """``--work-dir``: the run's work dir, with the meaning it has in tools/train.py
    (default: the config's ``work_dir``, else ``work_dirs/<config-stem>``); this tool
    writes ``outputs`` (e.g. ``test/``) inside it. See :func:`work_dir`."""
    parser.add_argument("--work-dir", help="the run's work dir, as in tools/train.py (default: the config's "
                        f"work_dir, else work_dirs/<config-stem>); this tool writes {outputs} in it")


def add_no_ema(parser: argparse.ArgumentParser) -> None:
    """``--no-ema``: load the raw weights even when the checkpoint holds EMA weights."""
    parser.add_argument("--no-ema", action="store_true",
                        help="use the raw weights of the checkpoint, not its EMA weights (default: EMA when present)")


def work_dir(args, cfg: dict) -> Path:
    """The run's work dir: ``--work-dir``, else the config's ``work_dir``, else
    ``work_dirs/<config-stem>`` (the same rule as tools/train.py)."""
    from defectkit.engine import default_work_dir

    return Path(getattr(args, "work_dir", None) or cfg.get("work_dir") or default_work_dir(args.config))


def load(args) -> dict:
    """Load args.config with --cfg-options (a ``ConfigError`` becomes one line under run_main)."""
    from defectkit.config import load_config

    return load_config(args.config, args.cfg_options)


DEBUG_ENV = "DEFECTKIT_DEBUG"


def _user_error_kind(exc: BaseException) -> str | None:
    """``"config"``, ``"checkpoint"``, ... for an error the user can fix from its message
    alone (a bad config, file, checkpoint or work dir); None for anything else (a bug)."""
    import errno

    kinds: list[tuple[type, str]] = []
    try:
        from defectkit.config import ConfigError
        from defectkit.data.formats.common import DataFormatError
        from defectkit.engine.checkpoint import CheckpointError
        from defectkit.engine.losses import NonFiniteLossError
        from defectkit.engine.workdir import WorkDirError
        from defectkit.models.backbones import PretrainedWeightsError
        kinds = [(ConfigError, "config"), (CheckpointError, "checkpoint"), (DataFormatError, "data"),
                 (WorkDirError, "work dir"), (PretrainedWeightsError, "weights"),
                 (NonFiniteLossError, "training")]
    except ImportError:      # defectkit itself does not import: that is no user error
        pass
    for cls, kind in kinds:
        if isinstance(exc, cls):
            return kind
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return "file"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT):
        return "file"
    return None


def _one_line(exc: BaseException) -> str:
    """The message of ``exc``; for an error re-raised from a DataLoader worker (whose message
    holds the worker's traceback) the original message only."""
    msg = str(exc)
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror and str(exc.filename) not in msg:
        msg = f"{exc.filename}: {exc.strerror}"
    if "Original Traceback" in msg:
        last = [l for l in msg.splitlines() if l.strip()][-1]
        prefix = f"{type(exc).__name__}: "
        msg = last.split(prefix, 1)[1] if prefix in last else last
    return msg.strip() or type(exc).__name__


def run_main(main) -> None:
    """Run a tool's ``main()`` as a program: an expected user error (bad config, data file,
    checkpoint, missing file, unwritable or locked work dir) prints ONE line
    ``<kind> error: <message>`` on stderr and exits 2, as does ``sys.exit("message")``;
    Ctrl-C exits 130. ``--debug`` anywhere on the command line (removed before ``main``
    parses it) or ``DEFECTKIT_DEBUG=1`` shows the full traceback instead."""
    if "--debug" in sys.argv[1:]:
        sys.argv = [sys.argv[0]] + [a for a in sys.argv[1:] if a != "--debug"]
        os.environ[DEBUG_ENV] = "1"          # tools started by this one (compare, demo) inherit it
    debug = os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
    try:
        code = main()
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            sys.exit(2)
        raise
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - sorted into user errors and bugs below
        kind = _user_error_kind(e)
        if kind is None or debug:
            raise
        print(f"{kind} error: {_one_line(e)}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)


def pipeline_norm(pipeline):
    """(mean, std) of the Normalize step of a built pipeline, to undo it when drawing."""
    for t in getattr(pipeline, "transforms", None) or []:
        inner = getattr(t, "t", t)
        if hasattr(inner, "mean") and hasattr(inner, "std"):
            return list(inner.mean), list(inner.std)
    return None, None


def result_names(cfg: dict, result, classes):
    """Display names for a result's class indices, as the result declares them
    (``Result.class_names``: an image-level label is named after the model's ``target``,
    "normal" / "defective" for ``is_defective``; boxes, masks and maps use ``classes``)."""
    return result.class_names(cfg["model"].get("target", "is_defective"), classes)
