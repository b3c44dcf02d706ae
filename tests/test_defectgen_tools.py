"""Defect-Gen tools: tools/generate.py (the generated-dataset layout and its readers,
determinism, alignment filter, one-line errors), the generated-dataset writer
(defectkit/data/formats/generated.py) and tools/synth_utility.py.

The generator here is a fake registered below (``_FakeDefectGenSampler``: the
``sample(num, seed, batch_size, progress)`` API of DefectGen, sample i drawn from seed
``seed + i``), so the tests need no trained diffusion model; configs name this module in
``custom_imports`` so subprocesses register it too."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from defectkit.models.base import BaseModel
from defectkit.models.generation import PALETTE, GenerationResult
from defectkit.registry import MODELS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers_tools import ROOT, tool  # noqa: E402

CLASSES = ["hole", "stain"]


# ---------------------------------------------------------------------------- fakes
def _register(obj):
    if obj.__name__ not in MODELS:
        MODELS.register(obj=obj)
    return MODELS.get(obj.__name__)


def fake_sample(seed: int, size: int, num_defect: int) -> GenerationResult:
    """One deterministic (image, mask) pair from ``seed``: noise and 1-3 rectangles."""
    g = torch.Generator().manual_seed(int(seed))
    image = torch.rand(3, size, size, generator=g)
    mask = torch.zeros(size, size, dtype=torch.int64)
    for _ in range(int(torch.randint(0, 4, (), generator=g))):
        x, y = (int(v) for v in torch.randint(0, size - 4, (2,), generator=g))
        w, h = (int(v) for v in torch.randint(1, 8, (2,), generator=g))
        mask[y:y + h, x:x + w] = int(torch.randint(1, num_defect + 1, (), generator=g))
    return GenerationResult(image=image, mask=mask, seed=int(seed), stage_seconds={"large": 0.01, "small": 0.02})


class _FakeDefectGenSampler(BaseModel):
    """DefectGen's sampling API without diffusion; loads its own (no) weights."""
    loads_own_weights = True

    def __init__(self, num_defect: int = 2, classes: list[str] | None = None, size: int = 24,
                 eta: float = 0.0, num_inference_steps: int = 10, t_switch: int = 400,
                 mode: str = "two_stage", seed: int = 0):
        super().__init__()
        if mode not in ("two_stage", "large_only", "small_only"):
            raise ValueError(f"mode: {mode!r}")
        self.num_defect, self.classes, self.size = num_defect, classes, size
        self.eta, self.num_inference_steps, self.t_switch, self.mode, self.seed = \
            eta, num_inference_steps, t_switch, mode, seed
        self.calls: list[tuple[int, int, int]] = []

    def sampler_options(self) -> dict:
        """The public sampler settings tools/generate.py records (DefectGen's method)."""
        return dict(num_inference_steps=self.num_inference_steps, eta=self.eta, t_switch=self.t_switch,
                    mode=self.mode, compat_repo_sampling=False)

    @property
    def sample_batch_size(self) -> int:
        return 8

    def sample(self, num: int, seed: int = 0, batch_size: int = 8, progress=None) -> list[GenerationResult]:
        self.calls.append((num, seed, batch_size))
        return [fake_sample(seed + i, self.size, self.num_defect) for i in range(num)]

    def predict(self, batch):
        return self.sample(len(batch["image"]))


class _FakeDefectGenDenoiser(_FakeDefectGenSampler):
    """One trained denoiser: takes a CHECKPOINT; sampler options in ``sampling``."""
    loads_own_weights = False

    def __init__(self, num_defect: int = 2, classes: list[str] | None = None, size: int = 24,
                 sampling: dict | None = None):
        unknown = sorted(set(sampling or {}) - {"eta", "num_inference_steps", "seed"})
        if unknown:
            raise ValueError(f"sampling: unknown key(s) {unknown}")
        super().__init__(num_defect=num_defect, classes=classes, size=size, **(sampling or {}))
        self.weight = torch.nn.Parameter(torch.zeros(1))


_FakeDefectGenSampler = _register(_FakeDefectGenSampler)
_FakeDefectGenDenoiser = _register(_FakeDefectGenDenoiser)


def write_config(path: Path, model: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"custom_imports": ["test_defectgen_tools"], "model": model,
                                    "device": "cpu"}))
    return path


@pytest.fixture
def sampler_cfg(tmp_path):
    return write_config(tmp_path / "fake_gen.yaml", {"type": "_FakeDefectGenSampler", "classes": CLASSES})


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: the tiny models are slower with two on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def generate():
    return tool("generate")


def run_generate(generate, *argv) -> dict:
    assert generate.main([str(a) for a in argv]) == 0
    out = Path(argv[argv.index("--out") + 1])
    return json.loads((out / "generation.json").read_text())


def png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


# ---------------------------------------------------------------------------- the writer
def test_components_of_a_hand_made_mask_are_the_coco_boxes_and_polygons():
    from pycocotools import mask as mask_utils

    from defectkit.data.formats.generated import mask_components

    m = np.zeros((12, 16), np.int64)
    m[1:3, 1:4] = 1                 # class 1: a 3x2 block ...
    m[3, 4] = 1                     # ... and a pixel touching it diagonally: one 8-connected component
    m[8:11, 2] = 1                  # class 1: a vertical 1-px line
    m[5:9, 8:13] = 2                # class 2: a block with a hole
    m[6, 10] = 0
    m[5:7, 13] = 1                  # class 1 touching the class-2 block: its own component
    m[0, 15] = 2                    # class 2: a single pixel
    comps = mask_components(m, 2)
    got = [(c["category_id"], c["box"], c["area"]) for c in comps]
    assert got == [(1, (1, 1, 5, 4), 7), (1, (13, 5, 14, 7), 2), (1, (2, 8, 3, 11), 3),
                   (2, (15, 0, 16, 1), 1), (2, (8, 5, 13, 9), 19)]
    for c in comps:                 # the edge polygon is exactly the component (holes filled)
        lab, _ = ndimage.label(m == c["category_id"], structure=np.ones((3, 3)))
        x0, y0, x1, y1 = c["box"]
        k = lab[y0:y1, x0:x1].max()
        comp = ndimage.binary_fill_holes(lab == k)
        flat = [float(v) for xy in c["edge_polygon"] for v in xy]
        decoded = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([flat], 12, 16))).astype(bool)
        assert (decoded == comp).all(), c


def test_labelme_points_rasterise_to_the_component_by_the_labelme_rule():
    from PIL import ImageDraw

    from defectkit.data.formats.generated import mask_components

    rng = np.random.default_rng(0)
    for _ in range(40):
        m = (rng.random((20, 20)) < 0.4).astype(np.int64)
        lab, _ = ndimage.label(m == 1, structure=np.ones((3, 3)))
        objects = ndimage.find_objects(lab)
        for c in mask_components(m, 1):
            x0, y0, x1, y1 = c["box"]
            j = [j for j, sl in enumerate(objects, 1)
                 if sl == (slice(y0, y1), slice(x0, x1)) and (lab == j).sum() == c["area"]][0]
            comp = ndimage.binary_fill_holes(lab == j)
            img = Image.new("L", (20, 20))
            ImageDraw.Draw(img).polygon([tuple(p) for p in c["labelme_points"]], fill=1, outline=1)
            assert (np.asarray(img).astype(bool) == comp).all()
            xs, ys = [p[0] for p in c["labelme_points"]], [p[1] for p in c["labelme_points"]]
            assert len(xs) >= 3 and max(xs) > min(xs) and max(ys) > min(ys)   # a valid LabelMe box


def test_writer_refuses_a_folder_with_other_files(tmp_path):
    from defectkit.data.formats.generated import GeneratedDatasetWriter, GeneratedOutputError

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(GeneratedOutputError, match="notes.txt"):
        GeneratedDatasetWriter(tmp_path, CLASSES, lambda m: Image.new("RGB", (1, 1)), 3)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_writer_keeps_a_users_images_and_masks_folders(tmp_path):
    """A folder holding only layout-named entries (``images/``, ``masks/``) but no
    generation.json of ours is the user's data: refused, nothing deleted. An interrupted
    run (the stub generation.json) is replaced, and is not readable as a finished set."""
    from defectkit.data.formats.common import DataFormatError
    from defectkit.data.formats.generated import GeneratedDatasetWriter, GeneratedOutputError, read_generation

    colour = lambda m: Image.new("RGB", m.shape[::-1])  # noqa: E731
    for sub in ("images", "masks"):
        (tmp_path / "mine" / sub).mkdir(parents=True)
        (tmp_path / "mine" / sub / "photo.png").write_bytes(b"mine")
    with pytest.raises(GeneratedOutputError, match="no generation.json"):
        GeneratedDatasetWriter(tmp_path / "mine", CLASSES, colour, 3)
    assert (tmp_path / "mine" / "images" / "photo.png").read_bytes() == b"mine"
    assert (tmp_path / "mine" / "masks" / "photo.png").read_bytes() == b"mine"

    (tmp_path / "empty" / "images").mkdir(parents=True)           # empty layout folders: fine
    GeneratedDatasetWriter(tmp_path / "empty", CLASSES, colour, 3)
    w = GeneratedDatasetWriter(tmp_path / "cut", CLASSES, colour, 3)
    w.add(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.int64))     # ... then interrupted
    with pytest.raises(DataFormatError, match="did not finish"):
        read_generation(tmp_path / "cut")
    w = GeneratedDatasetWriter(tmp_path / "cut", CLASSES, colour, 3)       # the next run replaces it
    assert not any((tmp_path / "cut" / "images").iterdir())
    w.add(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.int64))
    w.finish({})
    assert read_generation(tmp_path / "cut")["count"] == 1


# ---------------------------------------------------------------------------- generate
def test_generate_writes_the_layout_readable_by_the_datasets(generate, sampler_cfg, tmp_path):
    from defectkit.data.datasets import CocoDataset, LabelMeDataset, MaskFolderDataset

    out = tmp_path / "gen"
    rec = run_generate(generate, sampler_cfg, "--num", 7, "--out", out, "--batch-size", 3, "--seed", 5)
    names = [f"{i:05d}.png" for i in range(7)]
    for d in ("images", "masks", "masks_converted_dir"):
        assert sorted(p.name for p in (out / d).iterdir()) == names
    assert sorted(p.name for p in (out / "labelme").iterdir()) == [n.replace(".png", ".json") for n in names]

    coco = json.loads((out / "coco.json").read_text())
    assert [c["id"] for c in coco["categories"]] == [1, 2]
    assert [c["name"] for c in coco["categories"]] == CLASSES
    assert len(coco["images"]) == 7
    palette = np.asarray(PALETTE, np.uint8)
    for i, name in enumerate(names):
        index = png(out / "masks_converted_dir" / name)
        colour = png(out / "masks" / name)
        assert index.dtype == np.uint8 and index.ndim == 2 and colour.shape == index.shape + (3,)
        assert (colour == palette[index]).all()                   # colour and index masks agree
        expect = fake_sample(5 + i, 24, 2)
        assert (index == expect.mask.numpy()).all()               # sample i is seed 5 + i
        assert (png(out / "images" / name) == np.asarray(expect.image_pil())).all()
        # COCO boxes = the 8-connected components of each class of the index mask
        boxes = []
        for k in (1, 2):
            lab, _ = ndimage.label(index == k, structure=np.ones((3, 3)))
            boxes += [(k, [s[1].start, s[0].start, s[1].stop - s[1].start, s[0].stop - s[0].start])
                      for s in ndimage.find_objects(lab)]
        anns = [(a["category_id"], a["bbox"]) for a in coco["annotations"] if a["image_id"] == i + 1]
        assert sorted(anns) == sorted(boxes)

    assert rec["count"] == 7 and rec["num_requested"] == 7 and rec["filtered"] == 0
    assert rec["seeds"] == list(range(5, 12)) and [s["seed"] for s in rec["samples"]] == list(range(5, 12))
    assert rec["classes"] == CLASSES and rec["model"] == "_FakeDefectGenSampler"
    assert (rec["steps"], rec["eta"], rec["t_switch"], rec["mode"]) == (10, 0.0, 400, "two_stage")
    assert rec["stage_seconds"] == pytest.approx({"large": 0.07, "small": 0.14})
    assert rec["total_seconds"] > 0 and rec["versions"]["torch"] == torch.__version__
    assert "diffusers" in rec["versions"] and rec["config"]["model"]["type"] == "_FakeDefectGenSampler"

    # the three project readers, with the real dataset classes
    mf = MaskFolderDataset(img_dir=str(out / "images"), mask_dir=str(out / "masks_converted_dir"), classes=CLASSES)
    cc = CocoDataset(ann_file=str(out / "coco.json"), img_dir=str(out / "images"))
    lm = LabelMeDataset(ann_dir=str(out / "labelme"), img_dir=str(out / "images"), classes=CLASSES)
    from defectkit.data.defect_spectrum import DefectSpectrumDataset
    ds = DefectSpectrumDataset(root=str(out), classes=CLASSES)          # its `synthetic` layout, found by itself
    assert len(mf) == len(cc) == len(lm) == len(ds) == 7
    assert cc.classes == CLASSES
    assert torch.equal(ds[3]["mask"], mf[3]["mask"])
    for i in range(7):
        index = torch.from_numpy(png(out / "masks_converted_dir" / names[i]).astype(np.int64))
        s_mf, s_lm, s_cc = mf[i], lm[i], cc[i]
        assert torch.equal(s_mf["mask"], index)
        assert torch.equal(s_lm["mask"], index)   # rectangles have no holes: LabelMe polygons are exact
        assert int(s_cc["is_defective"]) == int(index.max() > 0) == int(s_mf["is_defective"])
        assert len(s_cc["boxes"]) == len(s_lm["boxes"])


def test_generate_is_deterministic_for_a_seed_whatever_the_batch_size(generate, sampler_cfg, tmp_path):
    outs = []
    for b in (1, 3, 8):
        out = tmp_path / f"b{b}"
        run_generate(generate, sampler_cfg, "--num", 5, "--out", out, "--batch-size", b, "--seed", 2)
        outs.append(out)
    files = [sorted(p.relative_to(o) for p in o.rglob("*") if p.is_file() and p.name != "generation.json")
             for o in outs]
    assert files[0] == files[1] == files[2] and len(files[0]) == 5 * 4 + 1
    for rel in files[0]:
        data = [(o / rel).read_bytes() for o in outs]
        assert data[0] == data[1] == data[2], rel
    other = tmp_path / "seed3"
    run_generate(generate, sampler_cfg, "--num", 5, "--out", other, "--seed", 3)
    # seed 3 is seed 2 shifted by one sample
    assert (other / "images" / "00000.png").read_bytes() == (outs[0] / "images" / "00001.png").read_bytes()
    assert (other / "images" / "00000.png").read_bytes() != (outs[0] / "images" / "00000.png").read_bytes()


def test_sampler_flags_reach_the_model_config(generate, sampler_cfg, tmp_path):
    rec = run_generate(generate, sampler_cfg, "--num", 2, "--out", tmp_path / "g", "--eta", 0.5, "--steps", 7,
                       "--t-switch", 250, "--mode", "large_only", "--cfg-options", "model.eta=0.1", "model.seed=9")
    model = rec["config"]["model"]
    assert (model["eta"], model["num_inference_steps"], model["t_switch"], model["mode"]) == (0.5, 7, 250, "large_only")
    assert (rec["eta"], rec["steps"], rec["t_switch"], rec["mode"]) == (0.5, 7, 250, "large_only")
    assert rec["seed"] == 9 and rec["seeds"] == [9, 10]      # the config's seed when --seed is not given


def test_a_denoiser_config_takes_one_checkpoint_and_its_sampling_keys(generate, tmp_path):
    from defectkit.config import ConfigError
    from defectkit.engine.checkpoint import save_checkpoint

    cfg = write_config(tmp_path / "den.yaml", {"type": "_FakeDefectGenDenoiser", "classes": CLASSES})
    ckpt = save_checkpoint({"state_dict": {"weight": torch.zeros(1)}, "meta": {"classes": CLASSES}},
                           tmp_path / "den.pth")
    rec = run_generate(generate, cfg, ckpt, "--num", 2, "--out", tmp_path / "g", "--eta", 1.0, "--steps", 4)
    assert rec["config"]["model"]["sampling"] == {"eta": 1.0, "num_inference_steps": 4}
    assert (rec["eta"], rec["steps"], rec["weights"]) == (1.0, 4, "raw")
    with pytest.raises(ConfigError, match=r"_FakeDefectGenDenoiser.*sampling: unknown key\(s\) \['t_switch'\]"):
        generate.main([str(cfg), str(ckpt), "--num", "1", "--out", str(tmp_path / "h"), "--t-switch", "300"])
    with pytest.raises(ConfigError, match="--eta: model UNet has no `eta` option"):
        generate.flag_options({"type": "UNet"}, {"eta": 0.5})
    # the real denoiser: its `sampling` dataclass says which flags it takes, and the error names the flag
    assert generate.flag_options({"type": "DiffusionDenoiser"}, {"eta": 0.5, "steps": 3, "mode": None}) == \
        {"model.sampling.eta": 0.5, "model.sampling.num_inference_steps": 3}
    with pytest.raises(ConfigError, match="--t-switch: model DiffusionDenoiser has no `t_switch` option"):
        generate.flag_options({"type": "DiffusionDenoiser"}, {"t_switch": 300})
    with pytest.raises(ConfigError, match="exactly one CHECKPOINT"):
        generate.main([str(cfg), "--num", "1", "--out", str(tmp_path / "h")])


def test_filter_alignment_drops_pairs_below_the_threshold(generate, sampler_cfg, tmp_path, monkeypatch):
    calls = {}

    def load_alignment_segmenter(config, checkpoint, device):
        calls["load"] = (config, checkpoint, str(device))
        return "segmenter"

    def alignment_scores(segmenter, images01, masks):
        assert segmenter == "segmenter" and images01.dtype == torch.float32 and images01.ndim == 4
        assert masks.dtype == torch.int64 and masks.shape == images01.shape[:1] + images01.shape[2:]
        # sample with an odd number of defect pixels: poorly aligned
        return [0.1 if int((m > 0).sum()) % 2 else 0.9 for m in masks]

    fake = types.ModuleType("defectkit.evaluation.generation")
    fake.load_alignment_segmenter, fake.alignment_scores = load_alignment_segmenter, alignment_scores
    monkeypatch.setitem(sys.modules, "defectkit.evaluation.generation", fake)
    import defectkit.evaluation as ev
    monkeypatch.setattr(ev, "generation", fake, raising=False)

    out = tmp_path / "g"
    rec = run_generate(generate, sampler_cfg, "--num", 8, "--out", out, "--batch-size", 3,
                       "--filter-alignment", 0.5, "--seg-config", "seg.yaml", "--seg-checkpoint", "seg.pth")
    bad = [s for s in range(8) if int((fake_sample(s, 24, 2).mask > 0).sum()) % 2]
    assert 0 < len(bad) < 8                                   # the fake data exercise both sides
    assert calls["load"] == ("seg.yaml", "seg.pth", "cpu")
    assert rec["filtered"] == len(bad) and rec["count"] == 8 - len(bad)
    assert [d["seed"] for d in rec["filter"]["dropped"]] == bad
    assert [s["seed"] for s in rec["samples"]] == [s for s in range(8) if s not in bad]
    assert all(s["alignment_iou"] == 0.9 for s in rec["samples"])
    assert len(list((out / "images").iterdir())) == 8 - len(bad)
    coco = json.loads((out / "coco.json").read_text())
    assert len(coco["images"]) == 8 - len(bad)
    with pytest.raises(SystemExit, match="needs --seg-config and --seg-checkpoint"):
        generate.main([str(sampler_cfg), "--num", "1", "--out", str(tmp_path / "h"), "--filter-alignment", "0.5"])
    monkeypatch.undo()                                      # the real loader: a missing checkpoint names the flag
    with pytest.raises(SystemExit, match=r"--seg-config/--seg-checkpoint: .*file not found: .*nope\.pth") as e:
        generate.main([str(sampler_cfg), "--num", "1", "--out", str(tmp_path / "h"), "--filter-alignment", "0.5",
                       "--seg-config", "configs/defectgen/seg_unet_tiny_synth.yaml",
                       "--seg-checkpoint", str(tmp_path / "nope.pth")])
    assert "evaluation.alignment" not in str(e.value)


def test_generate_refuses_an_output_folder_with_other_files(generate, sampler_cfg, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(SystemExit, match="is not empty and does not hold a generated dataset"):
        generate.main([str(sampler_cfg), "--num", "1", "--out", str(out)])
    run_generate(generate, sampler_cfg, "--num", 2, "--out", tmp_path / "again")
    run_generate(generate, sampler_cfg, "--num", 1, "--out", tmp_path / "again")   # an earlier output: replaced
    assert len(list((tmp_path / "again" / "images").iterdir())) == 1


def test_generate_errors_are_one_line(tmp_path, capsys, monkeypatch):
    """A missing checkpoint (as a program, in a subprocess) and a missing config (through
    run_main in this process) end in ONE ``<kind> error: ...`` line and exit status 2."""
    generate = tool("generate")            # puts tools/ on sys.path
    from _common import run_main

    cfg = write_config(tmp_path / "den.yaml", {"type": "_FakeDefectGenDenoiser", "classes": CLASSES})
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent), "OMP_NUM_THREADS": "1"}
    env.pop("DEFECTKIT_DEBUG", None)
    p = subprocess.run([sys.executable, str(ROOT / "tools/generate.py"), str(cfg), str(tmp_path / "missing.pth"),
                        "--num", "1", "--out", str(tmp_path / "o")], capture_output=True, text=True, env=env, cwd=ROOT)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("checkpoint error: "), p.stderr
    assert "missing.pth" in lines[0]

    monkeypatch.delenv("DEFECTKIT_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["generate.py", str(tmp_path / "nope.yaml"), "--num", "1", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as e:
        run_main(generate.main)
    lines = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(lines) == 1 and lines[0].startswith("config error: ") and "nope.yaml" in lines[0]


# ---------------------------------------------------------------------------- synth_utility
def test_synth_utility_trains_real_and_mixed_runs_and_reuses_them(generate, tmp_path, capsys):
    import yaml

    from defectkit.data.synth import generate as make_synth

    real = tmp_path / "real"
    make_synth("demo", real, num_images=10, size=(32, 32), seed=0, workers=1)
    gen_cfg = write_config(tmp_path / "gen.yaml", {"type": "_FakeDefectGenSampler", "classes": CLASSES, "size": 32})
    run_generate(generate, gen_cfg, "--num", 6, "--out", tmp_path / "gen")

    def split(name):
        return {"type": "MaskFolderDataset", "img_dir": str(real / "images"), "mask_dir": str(real / "masks"),
                "classes": CLASSES, "split_file": str(real / "voc/ImageSets/Main" / f"{name}.txt"),
                "pipeline": [{"type": "Resize", "scale": [32, 32], "keep_ratio": False}]}

    seg = tmp_path / "seg.yaml"
    seg.write_text(yaml.safe_dump({
        "model": {"type": "UNet", "base_channels": 4, "depth": 2},
        "data": {"train": split("train"), "test": split("test"), "batch_size": 2, "num_workers": 0},
        "optimizer": {"type": "Adam", "lr": 0.001},
        "train": {"max_iters": 2, "val_interval": 0, "checkpoint_interval": 2, "log_interval": 1,
                  "save_best": None, "progress": False},
        "evaluation": {"type": "SegmentationEvaluator", "protocol": "mmseg"},
        "device": "cpu"}))
    work = tmp_path / "utility"
    synth_utility = tool("synth_utility")
    argv = [str(seg), "--generated", str(tmp_path / "gen"), "--ratios", "0", "1", "--seeds", "0",
            "--work-dir", str(work)]
    assert synth_utility.main(argv) == 0
    out = capsys.readouterr().out
    assert "| ratio | runs | train samples | defect IoU (%)" in out

    res = json.loads((work / "utility.json").read_text())
    runs = {r["ratio"]: r for r in res["runs"]}
    n_real = len((real / "voc/ImageSets/Main/train.txt").read_text().split())
    assert runs[0]["train_samples"] == n_real and runs[0]["generated_samples"] == 0
    assert runs[1]["train_samples"] == 2 * n_real and runs[1]["generated_samples"] == n_real   # the mixed run saw more
    for r in runs.values():
        assert 0.0 <= r["metrics"]["defect_IoU"] <= 1.0 and 0.0 <= r["metrics"]["mIoU"] <= 1.0
    log = next((work / "ratio1_seed0").rglob("*.log")).read_text()
    assert f"train set: {2 * n_real} samples" in log
    with open(work / "utility.csv") as f:
        rows = list(__import__("csv").DictReader(f))
    assert [float(r["ratio"]) for r in rows] == [0.0, 1.0]
    assert float(rows[1]["defect_IoU_mean"]) == pytest.approx(runs[1]["metrics"]["defect_IoU"], abs=1e-6)
    with Image.open(work / "utility.png") as im:
        assert im.size[0] > 100 and im.size[1] > 100

    # same settings: both runs are reused, nothing trains
    assert synth_utility.main(argv) == 0
    assert capsys.readouterr().out.count("reusing") == 2
    # other settings in the same work dir: one line naming the key, unless --retrain
    with pytest.raises(SystemExit, match="optimizer.lr"):
        synth_utility.main(argv + ["--cfg-options", "optimizer.lr=0.01"])
    # a trained run whose test did not finish: resumed (nothing left to train) and tested
    (work / "ratio0_seed0" / "utility_run.json").unlink()
    ckpts = sorted(p.name for p in (work / "ratio0_seed0").glob("*.pth"))
    assert synth_utility.main(argv) == 0
    out = capsys.readouterr().out
    assert "ratio 0, seed 0: resuming" in out and out.count("reusing") == 1
    assert sorted(p.name for p in (work / "ratio0_seed0").glob("*.pth")) == ckpts
    # --retrain: the runs made with other settings are trained again
    assert synth_utility.main(argv + ["--retrain", "--cfg-options", "optimizer.lr=0.01"]) == 0
    assert capsys.readouterr().out.count("retraining") == 2
    assert json.loads((work / "utility.json").read_text())["runs"][0]["config_hash"] != runs[0]["config_hash"]


# ---------------------------------------------------------------------------- the real tiny models
TINY_LARGE = {"type": "DiffusionDenoiser", "num_defect": 2, "classes": CLASSES,
              "denoiser": {"type": "ADMUNet", "in_channels": 6, "image_size": 16, "model_channels": 16,
                           "channel_mult": [1, 2], "num_res_blocks": 1, "attention_downsample": [2],
                           "num_head_channels": 8, "norm_num_groups": 8}}
TINY_SMALL = {"type": "DiffusionDenoiser", "num_defect": 2, "classes": CLASSES,
              "denoiser": {"type": "SinDiffusionUNet", "in_channels": 6, "model_channels": 8, "channel_mult": [1, 2],
                           "num_res_blocks": 1, "norm_num_groups": 8, "image_size": 16}}


def random_checkpoint(part: dict, path: Path, seed: int) -> Path:
    """A checkpoint of ``part`` with every weight drawn at random (the built model's output
    layers start at zero, which would make every sample the same grey image)."""
    from defectkit.engine.builders import build_model
    from defectkit.engine.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    model = build_model(part)
    state = {k: (0.3 * torch.randn_like(v) if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    return save_checkpoint({"state_dict": state, "meta": {"classes": CLASSES}}, path)


def test_real_two_stage_model_flags_and_determinism(generate, tmp_path):
    """DefectGen with tiny random-weight parts given as CHECKPOINTs (large, small): the flags
    reach its sampler, and the files do not depend on the batch size (eta > 0: the
    per-sample noise is seeded too)."""
    cfg = write_config(tmp_path / "two_stage.yaml", {"type": "DefectGen", "large": TINY_LARGE, "small": TINY_SMALL,
                                                     "classes": CLASSES, "image_size": 16, "num_inference_steps": 20})
    ckpts = [random_checkpoint(TINY_LARGE, tmp_path / "large.pth", 0),
             random_checkpoint(TINY_SMALL, tmp_path / "small.pth", 1)]
    flags = ["--steps", 4, "--eta", 0.5, "--t-switch", 500, "--mode", "two_stage", "--seed", 3]
    recs = [run_generate(generate, cfg, *ckpts, "--num", 4, "--out", tmp_path / f"b{b}", "--batch-size", b, *flags)
            for b in (1, 3)]
    rec = recs[0]
    assert (rec["steps"], rec["eta"], rec["t_switch"], rec["mode"]) == (4, 0.5, 500, "two_stage")
    assert rec["config"]["model"]["large_checkpoint"] == str(ckpts[0])
    assert rec["config"]["model"]["small_checkpoint"] == str(ckpts[1])
    assert rec["sampler"]["compat_repo_sampling"] is False and rec["seeds"] == [3, 4, 5, 6]
    assert set(rec["stage_seconds"]) == {"large", "small"} and rec["weights"] == {"large": "raw", "small": "raw"}
    for i in range(4):
        a, b = (png(tmp_path / f"b{bs}" / "images" / f"{i:05d}.png").astype(int) for bs in (1, 3))
        assert np.abs(a - b).max() <= 1          # float sums may differ in the last bit between batch sizes
        ma, mb = (png(tmp_path / f"b{bs}" / "masks_converted_dir" / f"{i:05d}.png") for bs in (1, 3))
        assert (ma == mb).all() and ma.max() <= 2
    a0 = png(tmp_path / "b1" / "images" / "00000.png").astype(int)
    assert np.abs(a0 - png(tmp_path / "b1" / "images" / "00001.png").astype(int)).max() > 10   # seeds differ
    # CHECKPOINTs must name every part
    from defectkit.config import ConfigError
    with pytest.raises(ConfigError, match="large_checkpoint, small_checkpoint"):
        generate.main([str(cfg), str(ckpts[0]), "--num", "1", "--out", str(tmp_path / "x")])


def test_large_only_and_small_only_need_only_their_own_checkpoint(generate, tmp_path):
    """--mode large_only samples with the large denoiser alone: one CHECKPOINT is the large
    one's and the small part's checkpoint is never read (here the config names a file that
    does not exist); small_only likewise; a checkpoint the mode needs and lacks is named."""
    from defectkit.checkpoint_io import CheckpointError
    from defectkit.config import ConfigError

    large = random_checkpoint(TINY_LARGE, tmp_path / "large.pth", 0)
    small = random_checkpoint(TINY_SMALL, tmp_path / "small.pth", 1)
    gone = str(tmp_path / "gone.pth")
    base = {"type": "DefectGen", "large": TINY_LARGE, "small": TINY_SMALL, "classes": CLASSES, "image_size": 16,
            "num_inference_steps": 2}
    cfg = write_config(tmp_path / "g.yaml", base | {"small_checkpoint": gone})
    rec = run_generate(generate, cfg, large, "--num", 1, "--out", tmp_path / "l", "--mode", "large_only")
    assert rec["config"]["model"]["large_checkpoint"] == str(large)
    assert rec["weights"] == {"large": "raw", "small": "unused"} and list(rec["stage_seconds"]) == ["large"]
    rec = run_generate(generate, cfg, small, "--num", 1, "--out", tmp_path / "s", "--mode", "small_only")
    assert rec["config"]["model"]["small_checkpoint"] == str(small)
    assert rec["weights"] == {"large": "unused", "small": "raw"} and list(rec["stage_seconds"]) == ["small"]
    # the mode's own checkpoint unset: named, before anything is built
    with pytest.raises(ConfigError, match=r"DefectGen \(mode large_only\) samples with the large denoiser\(s\), "
                                          r"but model.large_checkpoint is not set"):
        generate.main([str(cfg), "--num", "1", "--out", str(tmp_path / "x"), "--mode", "large_only"])
    # ... or set to a missing file: the key and the file
    with pytest.raises(CheckpointError, match=r"model.small_checkpoint: checkpoint file not found: .*gone\.pth"):
        generate.main([str(cfg), "--num", "1", "--out", str(tmp_path / "x"), "--mode", "small_only"])
    # two_stage needs both: one CHECKPOINT is not enough, and the count error names both
    with pytest.raises(ConfigError, match=r"samples with 2 part\(s\) \(large_checkpoint, small_checkpoint\)"):
        generate.main([str(cfg), str(large), "--num", "1", "--out", str(tmp_path / "x")])
    with pytest.raises(ConfigError, match=r"give 1 CHECKPOINT\(s\) in that order or all 2 \(large, small\)"):
        generate.main([str(cfg), str(large), str(small), str(small), "--num", "1", "--out", str(tmp_path / "x"),
                       "--mode", "large_only"])
    # a config without the small part at all samples large_only from the large checkpoint
    only = write_config(tmp_path / "only.yaml", {k: v for k, v in base.items() if k != "small"} | {"mode": "large_only"})
    rec = run_generate(generate, only, large, "--num", 1, "--out", tmp_path / "o")
    assert rec["weights"] == {"large": "raw"} and rec["mode"] == "large_only"


def test_generate_reads_the_samplers_public_settings(generate):
    """The sampler settings and batch size come from the model's public sampler_options() /
    sample_batch_size, for DefectGen and a denoiser alone; another model is refused."""
    from defectkit.config import ConfigError
    from defectkit.engine.builders import build_model

    gen = build_model({"type": "DefectGen", "large": TINY_LARGE, "small": TINY_SMALL, "classes": CLASSES,
                       "t_switch": 300, "num_inference_steps": 6, "batch_size": 3})
    assert generate.sampler_settings(gen) == {"num_inference_steps": 6, "eta": 0.0, "t_switch": 300,
                                              "mode": "two_stage", "compat_repo_sampling": False}
    assert generate.default_batch_size(gen) == 3 and gen.parts == ("large", "small")
    den = build_model(TINY_SMALL | {"sampling": {"num_inference_steps": 5, "batch_size": 2}})
    assert generate.sampler_settings(den) == {"num_inference_steps": 5, "eta": 0.0, "t_switch": None,
                                              "mode": "large_only", "compat_repo_sampling": None}
    assert generate.default_batch_size(den) == 2
    with pytest.raises(ConfigError, match="Linear is not a Defect-Gen sampler"):
        generate.sampler_settings(torch.nn.Linear(1, 1))
    assert generate.default_batch_size(torch.nn.Linear(1, 1)) == 8


def test_real_denoiser_with_its_checkpoint_samples_the_ema_weights(generate, tmp_path):
    from defectkit.engine.builders import build_model
    from defectkit.engine.checkpoint import save_checkpoint

    model = build_model(TINY_SMALL)
    ema = {k: v + 0.01 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    ckpt = save_checkpoint({"state_dict": model.state_dict(), "ema": {"state_dict": ema},
                            "meta": {"classes": CLASSES}}, tmp_path / "small.pth")
    cfg = write_config(tmp_path / "small.yaml", TINY_SMALL)
    rec = run_generate(generate, cfg, ckpt, "--num", 2, "--out", tmp_path / "ema", "--steps", 2, "--eta", 1.0)
    raw = run_generate(generate, cfg, ckpt, "--num", 2, "--out", tmp_path / "raw", "--steps", 2, "--eta", 1.0,
                       "--no-ema")
    assert (rec["weights"], raw["weights"]) == ("ema", "raw")
    assert (rec["steps"], rec["eta"], rec["config"]["model"]["sampling"]) == (2, 1.0, {"num_inference_steps": 2, "eta": 1.0})
    assert list(rec["stage_seconds"]) == ["small"]
    assert rec["batch_size"] == 4                 # no --batch-size: the denoiser's sampling.batch_size
    assert (tmp_path / "ema/images/00000.png").read_bytes() != (tmp_path / "raw/images/00000.png").read_bytes()


def test_filter_alignment_with_a_real_segmenter_checkpoint(generate, sampler_cfg, tmp_path):
    """The eval helper's segmenter loader and scores: every pair is scored, pairs below THR
    are dropped, the rest kept; a segmenter of other classes is refused in one line."""
    import yaml

    from defectkit.engine.builders import build_model
    from defectkit.engine.checkpoint import save_checkpoint

    def seg_files(classes, name):
        test = {"type": "MaskFolderDataset", "img_dir": "unused", "mask_dir": "unused", "classes": classes,
                "pipeline": [{"type": "Resize", "scale": [24, 24], "keep_ratio": False}]}
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump({"model": {"type": "UNet", "base_channels": 4, "depth": 2},
                                       "data": {"test": test}}))
        torch.manual_seed(0)
        model = build_model({"type": "UNet", "base_channels": 4, "depth": 2}, classes)
        ckpt = save_checkpoint({"state_dict": model.state_dict(), "meta": {"classes": classes}}, tmp_path / f"{name}.pth")
        return str(cfg), str(ckpt)

    cfg, ckpt = seg_files(CLASSES, "seg")
    rec = run_generate(generate, sampler_cfg, "--num", 6, "--out", tmp_path / "g", "--filter-alignment", 0.5,
                       "--seg-config", cfg, "--seg-checkpoint", ckpt)
    kept = [s["alignment_iou"] for s in rec["samples"]]
    dropped = [d["alignment_iou"] for d in rec["filter"]["dropped"]]
    assert len(kept) + len(dropped) == 6 and rec["filtered"] == len(dropped) and rec["count"] == len(kept)
    assert all(0.5 <= v <= 1.0 for v in kept) and all(0.0 <= v < 0.5 for v in dropped)
    cfg, ckpt = seg_files(["a", "b"], "other")
    with pytest.raises(SystemExit, match=r"segmenter's classes \['a', 'b'\] differ"):
        generate.main([str(sampler_cfg), "--num", "1", "--out", str(tmp_path / "h"), "--filter-alignment", "0.5",
                       "--seg-config", cfg, "--seg-checkpoint", ckpt])


def test_labelme_draw_order_keeps_a_component_inside_another(tmp_path):
    """A class-1 blob inside a class-2 ring: the ring's polygon is filled, so the blob must
    come later in the LabelMe file to be drawn over it (the reader draws in order), although
    class 1 comes first in class order."""
    from defectkit.data.datasets import LabelMeDataset
    from defectkit.data.formats.generated import GeneratedDatasetWriter
    from defectkit.models.generation import colour_mask

    m = np.zeros((16, 16), np.int64)
    m[2:14, 2:14] = 2
    m[5:9, 5:9] = 1                  # inside the ring
    m[0:2, 14:16] = 1                # a small blob elsewhere
    w = GeneratedDatasetWriter(tmp_path / "g", CLASSES, colour_mask, 1)
    w.add(np.zeros((16, 16, 3), np.uint8), m, {"seed": 0})
    w.finish({})
    ds = LabelMeDataset(ann_dir=str(tmp_path / "g/labelme"), img_dir=str(tmp_path / "g/images"), classes=CLASSES)
    assert torch.equal(ds[0]["mask"], torch.from_numpy(m))
