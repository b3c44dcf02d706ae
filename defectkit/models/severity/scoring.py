"""Severity score and image verdict: pure functions and dataclasses (no model, no config I/O).

Severity score (research note §2 "Severity score formula", the original README):

    severity = sum_k w_k * p_k          p: (G,) grade probabilities, lightest grade first
                                         w: (G,) ascending weights in [0, 1]

README example: w = [0.2, 0.4, 0.6, 0.8, 1.0], p = [0, 0.02, 0.08, 0.85, 0.05] -> 0.786.
Default weights ``linspace(0, 1, G)`` (lightest grade 0, heaviest 1). The shipped original
(``defect_detection_with_severity_score/inference.py``, ``predict_cls_img``) hard-codes
``score += scores[j] * 0.2 * j``, i.e. w_k = 0.2 k ([0, 0.2, .., 1.0] only for its 6 classes;
above 1 for more): :func:`compat_weights`, selected by ``model.compat_weights_0_2k: true``.

Verdict (the original has none; designed here): an ordered list of rules, the FIRST rule that
fires makes the image NG and names itself; no rule firing = OK. A rule selects the reported
defects of its ``types`` (``all`` = every type) that meet ALL its per-defect conditions
(``severity_at_least``, ``score_at_least``, ``area_at_least`` in ORIGINAL pixels^2) and
fires when at least ``count_at_least`` (default 1) such defects exist::

    rules:
      - {name: severe_dash, types: [dash_col], severity_at_least: 0.6}
      - {name: many_defects, types: all, count_at_least: 3}

A defect with an unknown severity (NaN: a ground-truth box of grade -1) never meets a
``severity_at_least`` condition.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

RULE_KEYS = ("name", "types", "severity_at_least", "score_at_least", "area_at_least", "count_at_least")
_CONDITIONS = (("severity_at_least", "severity"), ("score_at_least", "score"), ("area_at_least", "area"))


# ------------------------------------------------------------------------- score
def default_weights(num_grades: int) -> torch.Tensor:
    """``linspace(0, 1, G)`` float32 (G,): lightest grade 0, heaviest 1 (G = 1: [1.0])."""
    if num_grades < 1:
        raise ValueError(f"num_grades must be >= 1, got {num_grades}")
    return torch.linspace(0.0, 1.0, num_grades) if num_grades > 1 else torch.ones(1)


def compat_weights(num_grades: int) -> torch.Tensor:
    """The original's hard-coded ``w_k = 0.2 * k`` (k = 0..G-1), float32 (G,)."""
    return 0.2 * torch.arange(num_grades, dtype=torch.float32)


def resolve_weights(weights: Sequence[float] | None, grades: Sequence[str], type_name: str,
                    compat: bool = False) -> torch.Tensor:
    """The (G,) float32 weights of one defect type: ``weights`` as given (length checked
    against the G grade names), else :func:`compat_weights` when ``compat`` else
    :func:`default_weights`. ValueError naming ``model.severity_heads.<type>.score_weights``."""
    g = len(grades)
    if weights is None:
        return compat_weights(g) if compat else default_weights(g)
    key = f"model.severity_heads.{type_name}.score_weights"
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
        raise ValueError(f"{key}: expected a list of {g} numbers (one per grade {list(grades)}), got {weights!r}")
    if len(weights) != g:
        raise ValueError(f"{key}: {len(weights)} weights {list(weights)} for {g} grades {list(grades)}; "
                         f"give one weight per grade, lightest first (or null for linspace(0, 1, {g}))")
    try:
        w = torch.tensor([float(v) for v in weights], dtype=torch.float32)
    except (TypeError, ValueError):
        raise ValueError(f"{key}: every weight must be a number, got {list(weights)}") from None
    if not torch.isfinite(w).all():
        raise ValueError(f"{key}: weights must be finite, got {list(weights)}")
    return w


def severity_score(probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_k w_k p_k`` over the last dim: probs (..., G), weights (G,) -> (...,) float32."""
    probs = torch.as_tensor(probs, dtype=torch.float32)
    weights = torch.as_tensor(weights, dtype=torch.float32, device=probs.device)
    if probs.shape[-1] != weights.shape[0]:
        raise ValueError(f"severity_score: {probs.shape[-1]} probabilities but {weights.shape[0]} weights")
    return (probs * weights).sum(-1)


# ----------------------------------------------------------------------- verdict
@dataclass(frozen=True)
class VerdictRule:
    """One rule (see the module docstring). ``types`` None = every type."""
    name: str
    types: tuple[str, ...] | None = None
    severity_at_least: float | None = None
    score_at_least: float | None = None
    area_at_least: float | None = None
    count_at_least: int = 1

    @classmethod
    def parse(cls, cfg: Any, where: str, classes: Sequence[str] | None = None) -> "VerdictRule":
        """A rule from its config dict; ValueError naming ``where`` (e.g.
        ``model.verdict.rules[0]``) and the key for unknown keys, bad values, unknown types."""
        if not isinstance(cfg, dict):
            raise ValueError(f"{where}: expected a dict with keys {list(RULE_KEYS)}, got {cfg!r}")
        unknown = sorted(set(cfg) - set(RULE_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown} (a rule takes {list(RULE_KEYS)})")
        name = cfg.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}.name: every rule needs a non-empty name, got {name!r}")
        types = cfg.get("types", "all")
        if types == "all" or types is None:
            types_t = None
        else:
            if isinstance(types, str):
                types = [types]
            if not isinstance(types, (list, tuple)) or not types:
                raise ValueError(f"{where}.types: 'all' or a non-empty list of defect types, got {types!r}")
            types_t = tuple(str(t) for t in types)
            if classes is not None:
                bad = [t for t in types_t if t not in classes]
                if bad:
                    raise ValueError(f"{where}.types: {bad} not among the defect types {list(classes)}")
        values: dict[str, Any] = {}
        for key, _ in _CONDITIONS:
            v = cfg.get(key)
            if v is not None:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise ValueError(f"{where}.{key}: expected a number, got {v!r}")
                values[key] = float(v)
        count = cfg.get("count_at_least", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"{where}.count_at_least: expected an int >= 1, got {count!r}")
        if not values and "count_at_least" not in cfg:
            raise ValueError(f"{where} ({name}): no condition; give at least one of "
                             f"severity_at_least, score_at_least, area_at_least, count_at_least")
        return cls(name=name, types=types_t, count_at_least=count, **values)

    def matches(self, type_name: str, score: float, severity: float, area: float) -> bool:
        """Whether one defect meets the rule's type and per-defect conditions."""
        if self.types is not None and type_name not in self.types:
            return False
        vals = {"severity": severity, "score": score, "area": area}
        for key, field in _CONDITIONS:
            thr = getattr(self, key)
            if thr is not None and not vals[field] >= thr:      # NaN never passes
                return False
        return True

    def describe(self, type_name: str, score: float, severity: float, area: float, count: int) -> str:
        """``"<name>: <type> severity 0.72 >= 0.6"`` (the values that fired the rule)."""
        vals = {"severity": severity, "score": score, "area": area}
        parts = [f"{field} {vals[field]:.4g} >= {getattr(self, key):g}"
                 for key, field in _CONDITIONS if getattr(self, key) is not None]
        text = f"{self.name}: {type_name} " + ", ".join(parts) if parts else f"{self.name}:"
        if self.count_at_least > 1 or not parts:
            text += (", " if parts else " ") + f"{count} defect{'s' if count != 1 else ''} >= {self.count_at_least}"
        return text


@dataclass(frozen=True)
class Verdict:
    verdict: str                     # "OK" | "NG"
    rule: str | None                 # the firing rule's description, None when OK
    fired: list[str | None]          # per defect: the name of the rule it fired, or None


@dataclass(frozen=True)
class VerdictRules:
    """The ordered rules of ``model.verdict``; see the module docstring."""
    rules: tuple[VerdictRule, ...]

    @classmethod
    def parse(cls, cfg: Any, classes: Sequence[str] | None = None, where: str = "model.verdict") -> "VerdictRules":
        """From ``{rules: [...]}`` (or the list itself). ``None`` -> one rule ``any_defect``
        (``count_at_least: 1``: every reported defect makes the image NG). ``{rules: []}``:
        every image OK. ValueError naming the key (``model.verdict.rules[i].<key>``)."""
        if cfg is None:
            return cls((VerdictRule(name="any_defect", count_at_least=1),))
        if isinstance(cfg, dict):
            unknown = sorted(set(cfg) - {"rules"})
            if unknown:
                raise ValueError(f"{where}: unknown key(s) {unknown} (expected {{rules: [...]}})")
            rules = cfg.get("rules", [])
        else:
            rules = cfg
        if not isinstance(rules, (list, tuple)):
            raise ValueError(f"{where}.rules: expected a list of rules, got {rules!r}")
        parsed = tuple(VerdictRule.parse(r, f"{where}.rules[{i}]", classes) for i, r in enumerate(rules))
        names = [r.name for r in parsed]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"{where}.rules: rule names must be unique, repeated: {dup}")
        return cls(parsed)

    def apply(self, types: Sequence[str], scores: Sequence[float], severities: Sequence[float],
              areas: Sequence[float]) -> Verdict:
        """The verdict of one image from its reported defects (one entry each, same order).
        The first rule (in config order) that fires decides; ``fired[i]`` is that rule's
        name for the defects that met it, None for the others (and for every defect of an
        OK image)."""
        n = len(types)
        vals = [(str(types[i]), float(scores[i]), float(severities[i]), float(areas[i])) for i in range(n)]
        for rule in self.rules:
            hits = [i for i, v in enumerate(vals) if rule.matches(*v)]
            if len(hits) >= rule.count_at_least and hits:
                # report the defect with the highest severity (then score) among those that met it
                top = max(hits, key=lambda i: (_nan_low(vals[i][2]), vals[i][1]))
                fired = [rule.name if i in set(hits) else None for i in range(n)]
                return Verdict("NG", rule.describe(*vals[top], count=len(hits)), fired)
        return Verdict("OK", None, [None] * n)


def _nan_low(x: float) -> float:
    return -math.inf if math.isnan(x) else x
