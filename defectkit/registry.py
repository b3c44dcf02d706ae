"""A small registry: name -> class or function, built from config dicts.

    @MODELS.register()
    class ImageClassifier(nn.Module): ...

    model = MODELS.build({"type": "ImageClassifier", "num_classes": 2})

Every defectkit module registers itself when ``import defectkit`` runs, so an
unknown ``type`` always means a typo or a missing ``custom_imports`` entry.

Two optional hooks serve load-time validation (``defectkit.config.validate_config``):
``check_build`` (the entries are cheap to construct, so each config is built once at
load to surface value errors early; a callable gives the run-time keyword arguments
to add, e.g. a dummy parameter list for optimizers) and ``hints`` (value types of
keys whose constructors carry no annotations).
"""
from __future__ import annotations

import difflib
from typing import Any, Callable


class Registry:
    def __init__(self, name: str, check_build: bool | Callable[[], dict] = False,
                 hints: dict[str, Any] | None = None):
        self.name = name
        self._entries: dict[str, Callable] = {}
        self.check_build = check_build
        self.hints: dict[str, Any] = dict(hints or {})

    def register(self, name: str | None = None, obj: Callable | None = None):
        """Decorator (``@R.register()`` / ``@R.register('Alias')``) or direct call."""

        def _add(o: Callable) -> Callable:
            key = name or o.__name__
            if key in self._entries and self._entries[key] is not o:
                raise KeyError(f"'{key}' is already registered in the {self.name} registry "
                               f"(by {self._entries[key].__module__})")
            self._entries[key] = o
            return o

        return _add(obj) if obj is not None else _add

    def get(self, name: str) -> Callable:
        if name not in self._entries:
            raise KeyError(self.unknown_message(name))
        return self._entries[name]

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(str(name), self._entries, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return (f"'{name}' is not in the {self.name} registry{hint} "
                f"(available: {', '.join(sorted(self._entries))})")

    def build(self, cfg: dict, **extra: Any) -> Any:
        """Call the registered object with the keys of ``cfg`` except ``type``.

        ``extra`` supplies arguments computed at run time (e.g. ``num_classes``
        read from a dataset); explicit config keys take precedence.
        """
        if not isinstance(cfg, dict) or "type" not in cfg:
            raise TypeError(f"{self.name} config must be a dict with a 'type' key, got {cfg!r}")
        args = dict(cfg)
        obj = self.get(args.pop("type"))
        for k, v in extra.items():
            args.setdefault(k, v)
        return obj(**args)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def keys(self) -> list[str]:
        return sorted(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.name!r}, {self.keys()})"


def _probe_params() -> dict:
    """One dummy parameter, so an optimizer config can be built (and checked) at load."""
    import torch

    return {"params": [torch.zeros(1, requires_grad=True)]}


MODELS = Registry("model")            # full models and their parts (backbones, heads)
DATASETS = Registry("dataset")
TRANSFORMS = Registry("transform", check_build=True)
EVALUATORS = Registry("evaluator")
OPTIMIZERS = Registry("optimizer", check_build=_probe_params,   # torch may lack annotations
                      hints={"lr": float, "momentum": float, "dampening": float, "eps": float,
                             "weight_decay": float, "betas": tuple[float, float],
                             "nesterov": bool, "amsgrad": bool})
LR_SCHEDULES = Registry("lr_schedule", check_build=True)
HOOKS = Registry("hook", check_build=True)   # training hooks (train.hooks: [{type: ...}])
