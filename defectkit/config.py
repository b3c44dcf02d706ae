"""YAML configs: ``_base_`` inheritance, ``_delete_``, ``--cfg-options``, validation.

A config is a plain nested ``dict`` loaded with ``yaml.safe_load``.

* ``_base_: [../_base_/a.yaml, b.yaml]`` (or one string) is merged first, in order,
  paths relative to the file that names them; the file's own keys win.
* Dicts merge recursively; a dict with ``_delete_: true`` replaces the inherited one.
  Lists are replaced, never merged.
* ``--cfg-options`` follows mmengine's grammar: ``a.b=1 a.l="[1,2]" a.list.0.k=v``,
  ``x=true``/``false``, ``x=None``, ``x=1,2`` (a list).

Validation (``validate_config``) runs before any work: every key of a dict that is
built by a registry must be a parameter of the registered constructor, and every
key of a plain section must be known. Errors carry the dotted path and a suggestion.
"""
from __future__ import annotations

import collections.abc
import copy
import dataclasses
import difflib
import inspect
import numbers
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from .registry import Registry


class ConfigError(ValueError):
    """A problem in a config file or override; the message names the key or file."""


# --------------------------------------------------------------------------- loading
def _read_yaml(path: Path, asked_by: Path | None) -> dict:
    if not path.is_file():
        who = f" (named in _base_ of {asked_by})" if asked_by else ""
        raise ConfigError(f"config file not found: {path}{who}")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return _unalias(data)


def _unalias(o: Any) -> Any:
    """Fresh containers everywhere: a YAML alias (``*eval``) becomes an independent
    copy, so overriding ``data.val`` later never changes ``data.test`` as well."""
    if isinstance(o, dict):
        return {k: _unalias(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_unalias(v) for v in o]
    return o


def merge(base: dict, child: dict) -> dict:
    """Recursive merge of ``child`` onto ``base`` (copies; inputs untouched)."""
    out = copy.deepcopy(base)
    for k, v in child.items():
        if isinstance(v, dict):
            v = dict(v)
            delete = v.pop("_delete_", False)
            if not delete and isinstance(out.get(k), dict):
                out[k] = merge(out[k], v)
            else:
                out[k] = merge({}, v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _strip_delete(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _strip_delete(v) for k, v in d.items() if k != "_delete_"}
    if isinstance(d, list):
        return [_strip_delete(v) for v in d]
    return d


def _load_tree(path: Path, asked_by: Path | None, stack: tuple) -> dict:
    path = path.resolve()
    if path in stack:
        raise ConfigError(f"_base_ cycle: {' -> '.join(str(p) for p in stack + (path,))}")
    data = _read_yaml(path, asked_by)
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list):
        raise ConfigError(f"{path}: _base_ must be a path or a list of paths")
    merged: dict = {}
    for b in bases:
        merged = merge(merged, _load_tree(path.parent / b, path, stack + (path,)))
    return merge(merged, data)


def load_config(path: str | os.PathLike, cfg_options: list[str] | dict | None = None,
                validate: bool = True) -> dict:
    """Load ``path`` with its bases, apply overrides, validate, return a plain dict.

    ``cfg_options``: ``["a.b=1", ...]`` (the command line) or ``{"a.b": 1}``. Raises
    ConfigError (one line naming the file, the dotted key or the option as written)."""
    cfg = _strip_delete(_load_tree(Path(path), None, ()))
    written: dict = {}
    if cfg_options:
        if isinstance(cfg_options, list):
            opts = parse_cfg_options(cfg_options)
            written = {o.split("=", 1)[0].strip(): o for o in cfg_options}
        else:
            opts = cfg_options
        apply_options(cfg, opts, written)
    _propagate_category(cfg)
    if validate:
        try:
            validate_config(cfg)
        except ConfigError as e:
            raise _blame_options(e, written) from None
    return cfg


def _propagate_category(cfg: dict) -> None:
    """``data.category`` (e.g. one MVTec category, ``--cfg-options data.category=cable``)
    replaces the ``category`` key of every data split and of ``evaluation`` that has one."""
    data = cfg.get("data")
    cat = data.get("category") if isinstance(data, dict) else None
    if cat is None:
        return
    for node in [data.get(s) for s in ("train", "val", "test")] + [cfg.get("evaluation")]:
        if isinstance(node, dict) and "category" in node:
            node["category"] = cat


# --------------------------------------------------------------------- --cfg-options
def _parse_scalar(v: str) -> Any:
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    if v in ("None", "none", "null"):
        return None
    return v


def _find_closing(s: str) -> int:
    """Index of the first top-level comma in ``s`` (or len)."""
    depth = 0
    for i, c in enumerate(s):
        if c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c == "," and depth == 0:
            return i
    if depth != 0:
        raise ConfigError(f"unbalanced brackets in option value: {s!r}")
    return len(s)


def parse_value(val: str) -> Any:
    """mmengine DictAction grammar: scalars, ``a,b``, ``[a,b]``, ``(a,b)``, nested."""
    val = val.strip().strip("'\"").replace(" ", "")
    is_tuple = val.startswith("(") and val.endswith(")")
    if (val.startswith("[") and val.endswith("]")) or is_tuple:
        inner = val[1:-1]
        items = []
        while inner:
            cut = _find_closing(inner)
            items.append(parse_value(inner[:cut]))
            inner = inner[cut + 1:]
        return tuple(items) if is_tuple else items
    if val and (val[0] in "([" or val[-1] in ")]"):
        raise ConfigError(f"unbalanced brackets in option value: {val!r}")
    if "," in val:
        return [parse_value(v) for v in val.split(",") if v != ""]
    return _parse_scalar(val)


def _option_error(key: str, written: dict | None, problem: str) -> ConfigError:
    shown = repr(written[key]) if written and key in written else key
    return ConfigError(f"--cfg-options {shown}: {problem}")


def _check_key(key: str, written: dict | None = None) -> list[str]:
    parts = key.split(".")
    if not key:
        raise _option_error(key, written, "empty key before '='")
    if not all(parts):
        raise _option_error(key, written, f"empty part in the key '{key}' (a.b.c=VALUE)")
    return parts


def parse_cfg_options(options: list[str]) -> dict:
    """``["a.b=1", "l=[1,2]"]`` -> ``{"a.b": 1, "l": [1, 2]}``. The value is everything
    after the FIRST ``=`` (``optimizer.lr=1e-3=4`` gives the string ``'1e-3=4'``, which
    validation then rejects). Raises ConfigError naming the option as written."""
    out = {}
    for opt in options:
        if "=" not in opt:
            raise ConfigError(f"--cfg-options {opt!r}: expected KEY=VALUE")
        k, v = opt.split("=", 1)
        k = k.strip()
        _check_key(k, {k: opt})
        try:
            out[k] = parse_value(v)
        except ConfigError as e:
            raise ConfigError(f"--cfg-options {opt!r}: {e}") from None
    return out


def apply_options(cfg: dict, options: dict, written: dict | None = None) -> None:
    """Set dotted keys in place; integer parts index into lists; missing (or null)
    dicts on the way are created. ``written`` maps a key to the option as the user
    wrote it, for the errors (a scalar on the way, an index into a mapping, an index
    out of range, an empty key part)."""
    for key, value in options.items():
        parts = _check_key(key, written)
        node: Any = cfg
        for depth, p in enumerate(parts):
            where = ".".join(parts[:depth + 1])
            last = depth == len(parts) - 1
            if isinstance(node, list):
                idx = _list_index(node, p, where, key, written)
                if last:
                    node[idx] = list(value) if isinstance(value, tuple) else value
                else:
                    node = _descend(node, idx, where, parts[depth + 1], key, written)
                continue
            if p not in node and p.lstrip("-").isdigit() and int(p) in node:
                p = int(p)                          # a YAML mapping with integer keys
            elif p not in node and p.lstrip("-").isdigit():
                raise _option_error(key, written, f"'{p}' looks like a list index, but "
                                    f"{where.rpartition('.')[0] or 'the config'} is a mapping")
            if last:
                node[p] = list(value) if isinstance(value, tuple) else value
            else:
                if node.get(p) is None:
                    node[p] = {}
                node = _descend(node, p, where, parts[depth + 1], key, written)


def _descend(node: Any, p: Any, where: str, child: str, key: str, written: dict | None) -> Any:
    sub = node[p]
    if not isinstance(sub, (dict, list)):
        raise _option_error(key, written, f"{where} holds the {type(sub).__name__} {sub!r}, not a "
                            f"mapping or list, so it has no '{child}'; set {where}=... instead")
    return sub


def _list_index(node: list, p: str, where: str, key: str, written: dict | None = None) -> int:
    if not p.lstrip("-").isdigit() or not -len(node) <= int(p) < len(node):
        raise _option_error(key, written, f"'{p}' is not a valid index of "
                            f"{where.rpartition('.')[0] or 'the config'} (a list of {len(node)})")
    return int(p)


def _blame_options(e: ConfigError, written: dict) -> ConfigError:
    """Add the --cfg-options that set the key a validation error names."""
    head = str(e).split(": ", 1)[0].split(" (", 1)[0]    # 'optimizer (SGD)': a build-time error
    hits = [opt for k, opt in written.items()
            if k == head or k.startswith(head + ".") or head.startswith(k + ".")]
    if not hits:
        return e
    return ConfigError(f"{e} (set by --cfg-options {' '.join(repr(h) for h in hits)})")


# ------------------------------------------------------------------------ validation
Spec = Any  # None (anything) | Registry | dict[str, Spec] | dataclass type | ("list", Spec)
#            | ("extra_keys", Registry, {key: Spec}) (a built dict plus keys its builder pops)
#            | a type annotation (int, str | None, ...)

ROOT_SCHEMA: dict[str, Spec] = {}   # filled by defectkit.engine.settings (and families)


def register_section(name: str, spec: Spec) -> None:
    """Declare a top-level config section and how to validate it."""
    ROOT_SCHEMA[name] = spec


def _suggest(key: str, options) -> str:
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


def _unknown(path: str, key: str, options) -> ConfigError:
    full = f"{path}.{key}" if path else key
    return ConfigError(f"{full}: unknown key{_suggest(key, options)} "
                       f"(accepted: {', '.join(sorted(options))})")


def _is_dataclass_type(t) -> bool:
    return isinstance(t, type) and dataclasses.is_dataclass(t)


def _dataclass_in(annotation) -> type | None:
    """A dataclass named by an annotation such as ``GateConfig | dict | None``."""
    if _is_dataclass_type(annotation):
        return annotation
    for arg in typing.get_args(annotation):
        if _is_dataclass_type(arg):
            return arg
    return None


# ------------------------------------------------------------------- value types
_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.Iterable,
              collections.abc.Collection, collections.abc.MutableSequence)
_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)
_UNION = (typing.Union, getattr(types, "UnionType", typing.Union))   # X | Y: Python >= 3.10


def _accepts(t: Any, v: Any) -> bool:
    """Whether a config value ``v`` (YAML: None/bool/int/float/str/list/dict) fits the
    annotation ``t``. int fits float, bool fits only bool, a list fits a tuple; what
    this cannot judge (Callable, TypeVar, a class a YAML value can never be) passes."""
    origin, args = typing.get_origin(t), typing.get_args(t)
    if t is Any or t is object or t is inspect.Parameter.empty:
        return True
    if t is None or t is type(None):
        return v is None
    if origin in _UNION:
        return any(_accepts(a, v) for a in args)
    if origin is typing.Literal:
        return any(v == a and type(v) is type(a) for a in args)
    if t is bool:
        return isinstance(v, bool)
    if t is int:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)
    if t is float:
        return isinstance(v, numbers.Real) and not isinstance(v, bool)
    if t is str:
        return isinstance(v, str)
    if t in _SEQUENCES or origin in _SEQUENCES:
        if not isinstance(v, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(v) == len(args) and all(_accepts(a, x) for a, x in zip(args, v))
        return not args or all(_accepts(args[0], x) for x in v)
    if t in _MAPPINGS or origin in _MAPPINGS:
        if not isinstance(v, dict):
            return False
        return len(args) != 2 or all(_accepts(args[0], k) and _accepts(args[1], x)
                                     for k, x in v.items())
    if origin is not None or not isinstance(t, type):
        return True
    if issubclass(t, os.PathLike):
        return isinstance(v, (str, t))
    return isinstance(v, (dict, t))   # a dataclass or a class the parent builds from a dict


def _type_name(t: Any) -> str:
    """How a config user reads ``t``: only the types a config value can have."""
    origin, args = typing.get_origin(t), typing.get_args(t)
    if t is None or t is type(None):
        return "None"
    if origin in _UNION:
        names = [_type_name(a) for a in args if not _unwritable(a)]
        return " | ".join(dict.fromkeys(names)) or "?"
    if origin is typing.Literal:
        return f"one of {list(args)}"
    if t in _SEQUENCES or origin in _SEQUENCES:
        return f"list[{_type_name(args[0])}]" if len(args) == 1 or (len(args) == 2 and args[1] is Ellipsis) \
            else (f"list of {len(args)} [{', '.join(_type_name(a) for a in args)}]" if args else "list")
    if t in _MAPPINGS or origin in _MAPPINGS or _is_dataclass_type(t):
        return "dict"
    return getattr(t, "__name__", str(t))


def _unwritable(t: Any) -> bool:
    """A class no YAML value can be (e.g. torch.Tensor in ``float | Tensor``)."""
    return (isinstance(t, type) and typing.get_origin(t) is None and t not in (bool, int, float, str, list, tuple, dict, type(None))
            and not _is_dataclass_type(t) and not issubclass(t, os.PathLike)
            and t not in _SEQUENCES and t not in _MAPPINGS)


def _shown(v: Any) -> str:
    r = repr(v)
    return f"{type(v).__name__} {r if len(r) <= 60 else r[:57] + '...'}"


def check_value(value: Any, annotation: Any, path: str) -> None:
    """Raise ConfigError ``path: expected float, got str 'fast'`` unless ``value`` fits
    ``annotation`` (None: no annotation, nothing checked)."""
    if annotation is None or _accepts(annotation, value):
        return
    if typing.get_origin(annotation) is typing.Literal:
        raise ConfigError(f"{path}: {value!r} is not {_type_name(annotation)}")
    raise ConfigError(f"{path}: expected {_type_name(annotation)}, got {_shown(value)}")


def _hints(target: Any) -> dict:
    """Resolved annotations of ``target``; one that cannot be resolved is left out."""
    try:
        return typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - resolve one by one, skipping unresolvable forward refs
        pass
    out = {}
    module = inspect.getmodule(target)
    ns = getattr(target, "__globals__", None) or (vars(module) if module else {})
    for name, ann in getattr(target, "__annotations__", {}).items():
        try:
            out[name] = eval(ann, ns) if isinstance(ann, str) else ann  # noqa: S307 - module annotations
        except Exception:  # noqa: BLE001
            pass
    return out


def _path_msg(path: str, msg: str) -> str:
    """``path: msg``, merging a message that already names (the tail of) the key:
    ``model.gate`` + ``gate.schedule: ...`` -> ``model.gate.schedule: ...``."""
    head, sep, rest = msg.partition(": ")
    last = path.rsplit(".", 1)[-1]
    if sep and " " not in head:
        if head == path or head.startswith(path + "."):
            return msg
        if head == last or head.startswith(last + "."):
            return f"{path}{head[len(last):]}: {rest}"
    return f"{path}: {msg}"


def _error_text(e: Exception) -> str:
    return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)


def parse_options(cls: type, value: Any, path: str) -> Any:
    """THE parser of an option dataclass (``model.gate``, ``model.aux_head``, ...): config
    validation at load and the model constructor both call it, so the rules and messages
    live here. None and ready instances pass through; a dict is checked key by key
    (unknown key with a suggestion, value types from the field annotations, nested option
    dataclasses and fields with a ``spec`` in their metadata) and then built, so the
    dataclass's own ``__post_init__`` checks run. Every error is a ``ConfigError``
    (a ``ValueError``) naming ``path``."""
    if value is None or isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a dict or null, got {_shown(value)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = _hints(cls)
    for k, v in value.items():
        if k not in fields:
            raise ConfigError(f"{path}.{k}: unknown key{_suggest(k, fields)} "
                              f"({path}: unknown option; accepted: {', '.join(sorted(fields))})")
        sub = fields[k].metadata.get("spec")
        if sub is not None:
            _validate(v, sub, f"{path}.{k}")
            continue
        check_value(v, hints.get(k), f"{path}.{k}")
        if isinstance(v, dict) and _dataclass_in(hints.get(k)):
            parse_options(_dataclass_in(hints.get(k)), v, f"{path}.{k}")
    try:   # the dataclass's own value checks (__post_init__)
        return cls(**value)
    except (TypeError, ValueError) as e:
        raise ConfigError(_path_msg(path, _error_text(e))) from None


options_from = parse_options   # the older name


def _validate_built(value: Any, registry: Registry, path: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a dict with a 'type' key for the {registry.name} "
                          f"registry, got {value!r}")
    if "type" not in value:
        raise ConfigError(f"{path}: missing 'type' (one of the {registry.name} registry: "
                          f"{', '.join(registry.keys())})")
    try:
        obj = registry.get(value["type"])
    except KeyError as e:
        raise ConfigError(f"{path}.type: {e.args[0]}") from None
    target = obj.__init__ if inspect.isclass(obj) else obj
    sig = inspect.signature(target)
    params = {n: p for n, p in sig.parameters.items() if n != "self"}
    open_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    hints = {**registry.hints, **_hints(target)}
    children: dict = getattr(obj, "config_children", {})
    for k, v in value.items():
        if k == "type":
            continue
        sub_path = f"{path}.{k}"
        if k not in params:
            if open_kwargs:
                continue
            raise _unknown(path, k, params)
        if k in children:
            _validate(v, children[k], sub_path)
            continue
        check_value(v, hints.get(k), sub_path)
        if isinstance(v, dict) and "type" in v:
            _validate_built(v, registry, sub_path)
        elif isinstance(v, dict) and _dataclass_in(hints.get(k)):
            parse_options(_dataclass_in(hints.get(k)), v, sub_path)
    if registry.check_build:
        extra = registry.check_build() if callable(registry.check_build) else {}
        try:
            registry.build(value, **extra)
        except (TypeError, ValueError, KeyError) as e:
            raise ConfigError(f"{path} ({value['type']}): {_error_text(e)}") from None


def _validate(value: Any, spec: Spec, path: str) -> None:
    if spec is None or value is None:
        return
    if isinstance(spec, Registry):
        _validate_built(value, spec, path)
    elif isinstance(spec, tuple) and spec[0] == "list":
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {_shown(value)}")
        for i, item in enumerate(value):
            _validate(item, spec[1], f"{path}.{i}")
    elif isinstance(spec, tuple) and spec[0] == "extra_keys":   # (.., Registry, {key: spec}): keys the builder pops
        if isinstance(value, dict):
            for k, sub in spec[2].items():
                if k in value:
                    _validate(value[k], sub, f"{path}.{k}")
            value = {k: v for k, v in value.items() if k not in spec[2]}
        _validate(value, spec[1], path)
    elif _is_dataclass_type(spec):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        parse_options(spec, value, path)
    elif isinstance(spec, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        for k, v in value.items():
            if k not in spec:
                raise _unknown(path, k, spec)
            _validate(v, spec[k], f"{path}.{k}" if path else k)
    else:   # a type annotation, e.g. register_section("seed", int)
        check_value(value, spec, path)


def validate_config(cfg: dict) -> None:
    """Raise ConfigError for the first unknown key or type in ``cfg``."""
    import defectkit  # noqa: F401  - make sure every module has registered

    check_value(cfg.get("custom_imports"), typing.Optional[list[str]], "custom_imports")
    import_custom(cfg.get("custom_imports") or [])
    _validate(cfg, ROOT_SCHEMA, "")


def import_custom(modules: list[str]) -> None:
    import importlib

    for m in modules:
        try:
            importlib.import_module(m)
        except ImportError as e:
            raise ConfigError(f"custom_imports: cannot import '{m}': {e}") from e


# ------------------------------------------------------------------------------ dump
def to_yaml(cfg: dict) -> str:
    def plain(o):
        if isinstance(o, dict):
            return {k: plain(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [plain(v) for v in o]
        return o

    return yaml.safe_dump(plain(cfg), sort_keys=False, allow_unicode=True)


def dump_config(cfg: dict, path: str | os.PathLike) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(to_yaml(cfg), encoding="utf-8")
    os.replace(tmp, path)


def get_by_path(cfg: dict, dotted: str, default: Any = None) -> Any:
    node: Any = cfg
    for p in dotted.split("."):
        if isinstance(node, list) and p.lstrip("-").isdigit():
            node = node[int(p)]
        elif isinstance(node, dict) and p in node:
            node = node[p]
        else:
            return default
    return node
