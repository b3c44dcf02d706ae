"""Layers point down (DESIGN §6, docs/architecture.md): ``defectkit/models/`` imports neither
``defectkit.engine`` nor ``defectkit.evaluation``, and every registered model declares the
model interface (``BaseModel``)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import defectkit  # noqa: F401  (registers everything)
from defectkit.models.base import BaseModel
from defectkit.registry import MODELS

PKG = Path(defectkit.__file__).resolve().parent
FORBIDDEN = ("defectkit.engine", "defectkit.evaluation")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, at any depth (function-local
    imports included); relative imports are resolved against the file's package, and
    ``from pkg import name`` also yields ``pkg.name`` (``from .. import engine``)."""
    package = ".".join(path.relative_to(PKG.parent).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.append((node.lineno, module))
            out += [(node.lineno, f"{module}.{a.name}") for a in node.names]
    return out


def forbidden_imports(root: Path) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        for line, module in imported_modules(path):
            if any(module == f or module.startswith(f + ".") for f in FORBIDDEN):
                bad.append(f"{path.relative_to(PKG.parent)}:{line}: imports {module}")
    return bad


def test_models_import_neither_engine_nor_evaluation():
    assert forbidden_imports(PKG / "models") == []


def test_the_walk_sees_relative_and_function_local_imports(tmp_path):
    pkg = tmp_path / "defectkit" / "models" / "fam"
    pkg.mkdir(parents=True)
    (pkg / "m.py").write_text("import torch\n"
                              "from ...engine.checkpoint import load_checkpoint\n"
                              "def f():\n"
                              "    from ... import evaluation\n"
                              "    import defectkit.engine.builders as b\n")
    found = {m for _, m in imported_modules_under(tmp_path, pkg / "m.py")}
    assert {"defectkit.engine.checkpoint", "defectkit.evaluation", "defectkit.engine.builders"} <= found


def imported_modules_under(root: Path, path: Path):
    global PKG
    old, PKG = PKG, root / "defectkit"
    try:
        return imported_modules(path)
    finally:
        PKG = old


@pytest.mark.parametrize("name", sorted(k for k in MODELS.keys()
                                        if isinstance(MODELS.get(k), type)
                                        and MODELS.get(k).__module__.startswith("defectkit.models.")
                                        and hasattr(MODELS.get(k), "predict")))
def test_every_model_declares_the_interface(name):
    assert issubclass(MODELS.get(name), BaseModel)


# ------------------------------------------------- composite models get built parts
TINY_DET = dict(type="FasterRCNN", backbone="small_cnn", frozen_stages=-1, norm_eval=False, fpn_channels=16,
                fc_dim=16, rois_per_img=16, anchor_sizes=(8, 16, 32, 64, 128), rpn_train_topn=50,
                rpn_test_topn=50)
TINY_CLS = dict(type="ImageClassifier", backbone="small_cnn", num_classes=2)


def test_composite_parts_are_built_by_the_builder_with_the_dataset_classes():
    from torch import nn

    from defectkit.engine.builders import build_model
    from defectkit.models.detection import FasterRCNN, TwoModelDetector

    m = build_model(dict(type="TwoModelDetector", classifier=TINY_CLS, detector=TINY_DET), ["a", "b", "c"])
    assert isinstance(m.detector, FasterRCNN) and m.detector.classes == ["a", "b", "c"]
    assert m.classifier.fc.out_features == 2                      # the classifier is not told the classes
    with pytest.raises(TypeError, match="model.classifier: TwoModelDetector takes a built model"):
        TwoModelDetector(classifier=TINY_CLS, detector=nn.Identity())
    with pytest.raises(ValueError, match="model.detector: has 3 classes but the dataset has 2"):
        build_model(dict(type="TwoModelDetector", classifier=TINY_CLS, detector={**TINY_DET, "num_classes": 3}),
                    ["a", "b"])
