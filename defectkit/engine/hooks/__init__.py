"""Training hooks (see ``base.py`` for the order of calls). The built-in ones, one per file,
are registered in ``HOOKS`` (so the registry lists every hook) but switched on by their
``train.*`` keys; ``train.hooks`` adds custom ones."""
from ...registry import HOOKS
from .base import HookBase, period_end  # noqa: F401
from .checkpoint import CheckpointHook
from .ema import EMAHook
from .evaluation import BestCheckpointHook, EvalHook, best_name, resolve_save_best  # noqa: F401
from .logging import LoggerHook
from .lr import LRScheduleHook

BUILTIN_HOOKS = (LRScheduleHook, EMAHook, LoggerHook, EvalHook, CheckpointHook, BestCheckpointHook)
for _hook in BUILTIN_HOOKS:
    HOOKS.register(obj=_hook)
