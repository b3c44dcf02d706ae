"""Training hooks (see ``base.py`` for the order of calls); the built-in ones, one per file,
are registered in ``HOOKS`` so a config may also list them in ``train.hooks``."""
from ...registry import HOOKS
from .base import HookBase, period_end  # noqa: F401
from .checkpoint import CheckpointHook
from .ema import EMAHook
from .evaluation import BestCheckpointHook, EvalHook, best_name, resolve_save_best  # noqa: F401
from .logging import LoggerHook
from .lr import LRScheduleHook

for _hook in (CheckpointHook, EMAHook, LoggerHook, LRScheduleHook):
    HOOKS.register(obj=_hook)
