"""Defect-Gen models (defectkit/models/generation/): sample layout, the two denoisers, the
diffusers-based sampler against the original's formulas, the two-stage switch and the
original script's call pattern, config plumbing, EMA weights, determinism, training losses,
the preview hook under the real trainer. Tiny sizes (<= 64 px, <= 32 channels)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import defectkit  # noqa: F401  (registers the models)
from defectkit.config import ConfigError
from defectkit.engine.builders import build_model
from defectkit.models.generation import (PALETTE, ADMUNet, DefectGen, DiffusionDenoiser, GenerationResult,
                                         SinDiffusionUNet, adm_param_count_full, check_channels, check_mask,
                                         colour_mask, count_steps, make_sample_scheduler, plan_stages,
                                         sample_loop, sindiffusion_param_count_full, split_x0, to_x0)
from defectkit.models.generation.diffusion import initial_noise
from defectkit.registry import MODELS

K = 2
C = 3 + K + 1


def tiny_sin(**kw) -> dict:
    return dict(type="SinDiffusionUNet", in_channels=C, image_size=16, model_channels=16, channel_mult=[1, 2],
                num_res_blocks=1, norm_num_groups=8) | kw


def tiny_adm(**kw) -> dict:
    return dict(type="ADMUNet", in_channels=C, image_size=16, model_channels=16, channel_mult=[1, 2],
                num_res_blocks=1, attention_downsample=[2], num_head_channels=8, norm_num_groups=8) | kw


def denoiser_cfg(net: dict | None = None, **kw) -> dict:
    return dict(type="DiffusionDenoiser", num_defect=K, denoiser=net or tiny_sin(), **kw)


class Recorder(nn.Module):
    """Stub denoiser: records (t, x) of every call and predicts a fixed x0 in [-0.5, 0.5]."""

    def __init__(self, name: str, log: list, in_channels: int = C):
        super().__init__()
        self.name, self.log, self.in_channels = name, log, in_channels
        self.scale = nn.Parameter(torch.tensor(0.5))

    def forward(self, x, t):
        assert t.dtype == torch.long and t.shape == (x.shape[0],)
        self.log.append((self.name, int(t[0]) if bool((t == t[0]).all()) else t.clone(), x.clone()))
        return self.scale * torch.tanh(x)


def stub_fn(name: str, log: list):
    rec = Recorder(name, log)
    return lambda x, t: rec(x, t)


# ---------------------------------------------------------------- sample layout
def test_check_channels_and_mask_name_the_key_file_and_value():
    check_channels(6, 2)
    with pytest.raises(ValueError, match=r"model.denoiser.in_channels: 5 channels.*3 \+ 2 \+ 1 = 6"):
        check_channels(5, 2, "model.denoiser.in_channels")
    with pytest.raises(ValueError, match=r"img/003\.png: mask value 255 > num_defect 2"):
        check_mask(torch.tensor([[0, 1], [2, 255]]), 2, "img/003.png")
    with pytest.raises(ValueError, match=r"a\.png: mask value 3 > num_defect 2"):
        to_x0(torch.rand(1, 3, 4, 4), torch.full((1, 4, 4), 3), 2, "a.png")


def test_denoiser_validates_channels_at_build_and_masks_per_file():
    with pytest.raises(ConfigError, match=r"in_channels: 7 channels"):
        build_model(denoiser_cfg(tiny_sin() | {"in_channels": 7}))
    with pytest.raises(ConfigError, match=r"num_defect 2 does not match the 3 dataset classes"):
        build_model(denoiser_cfg(), ["a", "b", "c"])
    m = build_model(dict(type="DiffusionDenoiser", denoiser=tiny_sin()), ["hole", "stain"])   # K from classes
    assert m.num_defect == 2 and m.classes == ["hole", "stain"]
    mask = torch.zeros(2, 16, 16, dtype=torch.long)
    mask[1, 3, 3] = 7
    batch = {"image": torch.rand(2, 3, 16, 16), "mask": mask,
             "meta": [{"path": "data/x/ok.png"}, {"path": "data/x/bad_mask.png"}]}
    with pytest.raises(ValueError, match=r"data/x/bad_mask\.png: mask value 7 > num_defect 2"):
        m(batch)


def test_one_hot_argmax_round_trip():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 3, 8, 8, generator=g)
    mask = torch.randint(0, K + 1, (3, 8, 8), generator=g)
    x0 = to_x0(image, mask, K)
    assert x0.shape == (3, C, 8, 8) and x0.dtype == torch.float32
    assert x0[:, :3].min() >= -1 and x0[:, :3].max() <= 1
    assert torch.equal(x0[:, 3:].sum(1), torch.ones(3, 8, 8))          # one-hot, channel 3 = background
    assert torch.equal(x0[:, 3], (mask == 0).float())
    img2, mask2 = split_x0(x0)
    assert torch.equal(mask2, mask) and torch.allclose(img2, image, atol=1e-6)
    noisy = x0 + 0.3 * torch.randn(x0.shape, generator=g)              # argmax, no threshold
    assert torch.equal(split_x0(noisy)[1], noisy[:, 3:].argmax(1))


# ---------------------------------------------------------------- diffusion
def test_schedule_is_the_originals_cosine():
    sched = make_sample_scheduler(1000)
    T, s = 1000, 0.008
    f = [math.cos(((t / T) + s) / (1 + s) * math.pi / 2) ** 2 for t in range(T + 1)]
    betas = [min(1 - f[t + 1] / f[t], 0.999) for t in range(T)]
    abar = np.cumprod([1 - b for b in betas])
    assert np.allclose(sched.alphas_cumprod.double().numpy(), abar, atol=1e-5)
    assert sched.alphas_cumprod[399] == pytest.approx(0.65, abs=0.01)
    assert sched.alphas_cumprod[599] == pytest.approx(0.34, abs=0.01)


@pytest.mark.parametrize("t", [999, 600, 400, 37, 1])
def test_ddim_eta0_step_equals_cold_diffusion_update(t):
    """x_{t-1} = x_t - D(x0_hat, t) + D(x0_hat, t-1), D(x0, tau) = sqrt(abar_tau) x0 +
    sqrt(1 - abar_tau) eps_hat, eps_hat from x_t and x0_hat (note §1.4), by hand."""
    g = torch.Generator().manual_seed(t)
    sched = make_sample_scheduler(1000, num_inference_steps=1000)
    a = sched.alphas_cumprod.double()
    x_t = torch.randn(2, C, 8, 8, generator=g, dtype=torch.float64)
    x0_hat = torch.rand(2, C, 8, 8, generator=g, dtype=torch.float64) * 1.8 - 0.9     # nothing clipped
    ours = sched.step(x0_hat.float(), t, x_t.float(), eta=0.0).prev_sample.double()
    eps = (x_t - a[t].sqrt() * x0_hat) / (1 - a[t]).sqrt()

    def D(tau):
        return a[tau].sqrt() * x0_hat + (1 - a[tau]).sqrt() * eps

    cold = x_t - D(t) + D(t - 1)
    assert torch.allclose(ours, cold, atol=2e-4), (ours - cold).abs().max()
    # with clipping, the original keeps sqrt(abar_t) (x0_hat - clip(x0_hat)) on top (note §1.4)
    x0_big = x0_hat * 2
    clipped = x0_big.clamp(-1, 1)
    ours = sched.step(x0_big.float(), t, x_t.float(), eta=0.0).prev_sample.double()
    eps = (x_t - a[t].sqrt() * x0_big) / (1 - a[t]).sqrt()
    original = x_t - (a[t].sqrt() * clipped + (1 - a[t]).sqrt() * eps) \
        + (a[t - 1].sqrt() * clipped + (1 - a[t - 1]).sqrt() * eps)
    assert torch.allclose(ours + a[t].sqrt() * (x0_big - clipped), original, atol=2e-4)


def test_two_stage_switch_on_one_trajectory():
    log: list = []
    stages = {"large": stub_fn("large", log), "small": stub_fn("small", log)}
    g = torch.Generator().manual_seed(0)
    x, secs = sample_loop(stages, (2, C, 8, 8), num_inference_steps=1000, t_switch=400, generator=g)
    calls = [(n, t) for n, t, _ in log]
    assert calls == [("large", t) for t in range(999, 399, -1)] + [("small", t) for t in range(399, -1, -1)]
    assert set(secs) == {"large", "small"} and all(v > 0 for v in secs.values())
    # one trajectory: the same function for both stages gives the single-model result
    f = stub_fn("f", [])
    one = sample_loop({"large": f}, (2, C, 8, 8), num_inference_steps=1000, mode="large_only",
                      generator=torch.Generator().manual_seed(0))[0]
    two = sample_loop({"large": f, "small": f}, (2, C, 8, 8), num_inference_steps=1000, t_switch=400,
                      generator=torch.Generator().manual_seed(0))[0]
    assert torch.equal(one, two) and torch.equal(x, two)
    # respaced: 50 steps of 20, the switch by t
    assert plan_stages(make_sample_scheduler(num_inference_steps=50).timesteps.tolist(), t_switch=400) == [
        ("large", list(range(980, 399, -20))), ("small", list(range(380, -1, -20)))]
    assert count_steps(50, t_switch=400) == {"large": 30, "small": 20}


def test_compat_repo_sampling_reproduces_the_original_call_pattern():
    """Original scripts/inference.py: large p_sample_loop with num_timesteps (1000, 400)
    runs t = 599..0 from pure noise; small with (400, 0) restarts from its output at t = 399."""
    log: list = []
    stages = {"large": stub_fn("large", log), "small": stub_fn("small", log)}
    x, _ = sample_loop(stages, (2, C, 8, 8), num_inference_steps=1000, t_switch=400, compat_repo_sampling=True,
                       generator=torch.Generator().manual_seed(3))
    calls = [(n, t) for n, t, _ in log]
    assert calls == [("large", t) for t in range(599, -1, -1)] + [("small", t) for t in range(399, -1, -1)]
    noise = initial_noise((2, C, 8, 8), torch.Generator().manual_seed(3))
    assert torch.equal(log[0][2], noise)                               # pure noise labelled 599
    # the large stage alone over 599..0 from that noise == what the small model receives at 399
    sched = make_sample_scheduler(1000, num_inference_steps=1000)
    y, f = noise.clone(), stub_fn("l", [])
    for t in range(599, -1, -1):
        y = sched.step(f(y, torch.full((2,), t)), t, y).prev_sample
    assert torch.equal(log[600][2], y)
    last_in = log[-1][2]                                               # the small model's t = 0 input
    assert torch.equal(x, sched.step(stub_fn("s", [])(last_in, torch.zeros(2, dtype=torch.long)), 0,
                                     last_in).prev_sample)
    # respaced compat: the same 600/400 split on the grid of 20
    log.clear()
    sample_loop(stages, (1, C, 8, 8), num_inference_steps=50, t_switch=400, compat_repo_sampling=True,
                generator=torch.Generator().manual_seed(0))
    assert [(n, t) for n, t, _ in log] == [("large", t) for t in range(580, -1, -20)] + \
        [("small", t) for t in range(380, -1, -20)]
    with pytest.raises(ValueError, match="compat_repo_sampling"):
        sample_loop(stages, (1, C, 8, 8), mode="large_only", compat_repo_sampling=True)


@pytest.mark.parametrize("mode", ["large_only", "small_only"])
def test_single_model_modes(mode):
    log: list = []
    stages = {"large": stub_fn("large", log), "small": stub_fn("small", log)}
    _, secs = sample_loop(stages, (1, C, 8, 8), num_inference_steps=25, mode=mode,
                          generator=torch.Generator().manual_seed(0))
    name = mode.split("_")[0]
    assert [n for n, _, _ in log] == [name] * 25 and list(secs) == [name]
    with pytest.raises(ValueError, match=f"needs the {name} denoiser"):
        sample_loop({}, (1, C, 8, 8), num_inference_steps=5, mode=mode)


# ---------------------------------------------------------------- config -> sampler, EMA
def _stub_parts(model: DefectGen, log: list) -> None:
    for name in ("large", "small"):
        part = getattr(model, name)
        if part is not None:
            part.denoiser = Recorder(name, log)


def test_config_options_reach_the_sampler():
    cfg = dict(type="DefectGen", large=denoiser_cfg(tiny_adm()), small=denoiser_cfg(), t_switch=300, eta=0.5,
               num_inference_steps=20, seed=11)
    model = build_model(cfg)
    log: list = []
    _stub_parts(model, log)
    res = model.sample(2, batch_size=2)
    calls = [(n, t) for n, t, _ in log]
    assert calls == [("large", t) for t in range(950, 299, -50)] + [("small", t) for t in range(250, -1, -50)]
    assert [r.seed for r in res] == [11, 12]
    assert model.sampler_options()["eta"] == 0.5
    again = model.sample(2, batch_size=1)                       # eta noise per sample: batch-independent
    assert all(torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask) for a, b in zip(res, again))
    det = build_model(cfg | {"eta": 0.0})
    _stub_parts(det, [])
    assert not torch.equal(det.sample(1)[0].image, res[0].image)  # eta reached the DDIM step
    # a denoiser alone: model.sampling
    d = build_model(denoiser_cfg(sampling={"num_inference_steps": 7, "seed": 4}))
    log2: list = []
    d.denoiser = Recorder("x", log2)
    out = d.sample(1)
    assert len(log2) == 7 and out[0].seed == 4 and list(out[0].stage_seconds) == ["small"]
    with pytest.raises(ConfigError, match="t_switch"):
        build_model(cfg | {"t_switch": 1000})
    with pytest.raises(ConfigError, match="model.small is required"):
        build_model(dict(type="DefectGen", large=denoiser_cfg(tiny_adm())))
    with pytest.raises(ConfigError, match="num_defect"):
        build_model(cfg | {"small": dict(denoiser_cfg(tiny_sin() | {"in_channels": 7}), num_defect=3)})


def test_bad_sampler_options_and_checkpoints_are_config_errors_naming_the_key(tmp_path):
    """eta > 1 would make the DDIM step NaN (black images, no error); an image size that is
    not a multiple of the UNet's down-sampling factor would fail deep inside the UNet; a
    part's checkpoint that is missing or of the other denoiser is named by its key."""
    cfg = dict(type="DefectGen", large=denoiser_cfg(tiny_adm()), small=denoiser_cfg(), num_inference_steps=4)
    with pytest.raises(ConfigError, match=r"eta: DDIM eta must be in \[0, 1\].*got 1.5"):
        build_model(cfg | {"eta": 1.5})
    with pytest.raises(ConfigError, match=r"model.sampling: eta: DDIM eta must be in \[0, 1\]"):
        build_model(denoiser_cfg(sampling={"eta": 2.0}))
    build_model(cfg | {"eta": 1.0})
    with pytest.raises(ConfigError, match=r"model.image_size: 17x17 px.*multiples of 2"):
        build_model(cfg | {"image_size": 17})
    with pytest.raises(ConfigError, match=r"model.sampling.image_size: 16x9 px.*multiples of 2"):
        build_model(denoiser_cfg(sampling={"image_size": [16, 9]}))
    d = build_model(denoiser_cfg())
    with pytest.raises(ValueError, match=r"image_size: 15x15 px"):
        d.sample(1, image_size=15)
    with pytest.raises(ValueError, match=r"training images.*15x16 px"):
        d({"image": torch.rand(1, 3, 15, 16), "mask": torch.zeros(1, 15, 16, dtype=torch.long)})

    from defectkit.models.weights import CheckpointError
    with pytest.raises(CheckpointError, match=r"model.large_checkpoint: .*not found: .*nope\.pth"):
        build_model(cfg | {"large_checkpoint": str(tmp_path / "nope.pth")})
    small = build_model(denoiser_cfg())
    torch.save({"state_dict": small.state_dict(), "meta": {"config": {"model": denoiser_cfg()}}}, tmp_path / "s.pth")
    with pytest.raises(CheckpointError, match=r"model.large_checkpoint: .*s\.pth holds a SinDiffusionUNet "
                                              r"denoiser, but this part builds ADMUNet"):
        build_model(cfg | {"large_checkpoint": str(tmp_path / "s.pth")})
    assert build_model(cfg | {"small_checkpoint": str(tmp_path / "s.pth")}).weights_source["small"] == "raw"
    # classes: a checkpoint trained on other classes (here: the same two in another order) is refused,
    # and a config without classes takes the checkpoint's
    torch.save({"state_dict": small.state_dict(), "meta": {"classes": ["stain", "hole"]}}, tmp_path / "c.pth")
    with pytest.raises(CheckpointError, match=r"model.small_checkpoint: .*c\.pth was trained on the classes "
                                              r"\['stain', 'hole'\], but the model generates \['hole', 'stain'\]"):
        build_model(cfg | {"classes": ["hole", "stain"], "small_checkpoint": str(tmp_path / "c.pth")})
    assert build_model(cfg | {"small_checkpoint": str(tmp_path / "c.pth")}).classes == ["stain", "hole"]


def test_defect_gen_samples_with_the_ema_weights(tmp_path):
    torch.manual_seed(0)
    src = build_model(denoiser_cfg())
    raw = {k: v.clone() for k, v in src.state_dict().items()}
    ema = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in raw.items()}
    torch.save({"state_dict": raw, "ema": {"state_dict": ema, "num_updates": 5, "decay": 0.9}}, tmp_path / "ema.pth")
    torch.save({"state_dict": raw}, tmp_path / "raw.pth")
    cfg = dict(type="DefectGen", small=denoiser_cfg(), mode="small_only", num_inference_steps=4,
               small_checkpoint=str(tmp_path / "ema.pth"))
    g = build_model(cfg)
    assert g.weights_source == {"small": "ema"}
    for k, v in g.small.state_dict().items():
        assert torch.equal(v, ema[k]), k
    ref = build_model(denoiser_cfg(sampling={"num_inference_steps": 4}))
    ref.load_state_dict(ema)
    a, b = g.sample(2, seed=1)[0], ref.sample(2, seed=1)[0]
    assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask)
    g_raw = build_model(cfg | {"use_ema": False})
    assert g_raw.weights_source == {"small": "raw"} and torch.equal(
        g_raw.small.state_dict()["denoiser.conv_in.weight"], raw["denoiser.conv_in.weight"])
    assert not torch.equal(g_raw.sample(1, seed=1)[0].image, a.image)
    assert build_model(cfg | {"small_checkpoint": str(tmp_path / "raw.pth")}).weights_source == {"small": "raw"}


# ---------------------------------------------------------------- the two networks
def test_denoiser_output_shapes_and_sizes():
    x, t = torch.randn(2, C, 32, 32), torch.tensor([0, 999])
    for cfg in (tiny_adm(), tiny_sin(), tiny_sin(channel_mult=[1, 2, 4], num_res_blocks=2)):
        net = MODELS.build(cfg)
        y = net(x, t)
        assert y.shape == x.shape and y.dtype == torch.float32, cfg
    sin = MODELS.build(tiny_sin(channel_mult=[1, 2, 4], num_res_blocks=2))
    assert sin.receptive_field() == 157
    assert MODELS.build(tiny_sin(channel_mult=[1, 2, 4], num_res_blocks=1)).receptive_field() == 101
    assert MODELS.build(tiny_sin()).receptive_field() == 45
    assert ADMUNet(**{k: v for k, v in tiny_adm().items() if k != "type"}).receptive_field() == float("inf")
    assert not any("attn" in n.lower() or "attention" in n.lower() for n, _ in sin.named_modules())
    # full sizes, counted on the meta device (no memory, no forward): note §1.2 / §1.3
    assert adm_param_count_full(9) == pytest.approx(125.4e6, abs=0.05e6)
    assert sindiffusion_param_count_full(6) == pytest.approx(98.2e6, abs=0.05e6)


def test_stage_name_is_declared_by_the_network():
    """A denoiser alone labels its timing with its network's declared stage, not by the
    class name (a user's ADMUNet subclass is still the large-receptive-field model)."""
    class MyADM(ADMUNet):
        pass

    net = MyADM(**{k: v for k, v in tiny_adm().items() if k != "type"})
    assert DiffusionDenoiser(net, num_defect=K).stage_name == "large"
    assert build_model(denoiser_cfg(tiny_adm())).stage_name == "large"
    assert build_model(denoiser_cfg(tiny_sin())).stage_name == "small"


def test_sindiffusion_receptive_field_is_157_px_empirically():
    """Gradient of one output pixel w.r.t. the input (GroupNorm statistics removed, random
    weights): the non-zero window is exactly receptive_field() wide."""
    torch.manual_seed(0)
    net = SinDiffusionUNet(in_channels=C, model_channels=8, channel_mult=[1, 2, 4], num_res_blocks=2,
                           norm_num_groups=8)
    for mod in list(net.modules()):
        for name, child in list(mod.named_children()):
            if isinstance(child, nn.GroupNorm):
                setattr(mod, name, nn.Identity())
        if isinstance(mod, nn.Conv2d):
            nn.init.normal_(mod.weight, std=0.1)
    net = net.double()
    x = torch.randn(1, C, 192, 192, dtype=torch.float64, requires_grad=True)
    net(x, torch.tensor([10]))[0, :, 96, 96].sum().backward()
    hit = x.grad.abs().sum((0, 1)) > 0
    rows, cols = hit.any(1).nonzero(), hit.any(0).nonzero()
    assert int(rows.max() - rows.min() + 1) == int(cols.max() - cols.min() + 1) == net.receptive_field() == 157


def test_sindiffusion_first_decoder_block_takes_no_skip():
    net = MODELS.build(tiny_sin(channel_mult=[1, 2, 4], num_res_blocks=2))
    assert net.up_takes_skip[0] is False and all(net.up_takes_skip[1:])
    first = net.up[0][0]
    assert first.in_layers[2].in_channels == 16 * 4                       # deepest width alone
    assert net.up[1][0].in_layers[2].in_channels == 16 * 4 * 2           # cat[h, skip]
    assert first.emb_layers[1].out_features == 16 * 4                     # additive: one vector, not 2


# ---------------------------------------------------------------- determinism, losses
def randomise(model: nn.Module) -> nn.Module:
    """Random weights everywhere (the UNets zero-initialise their output convs: x0_hat = 0)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn_like(p))
    return model


def test_generation_is_deterministic_for_a_seed():
    m = randomise(build_model(denoiser_cfg(sampling={"num_inference_steps": 5, "eta": 0.3}))).eval()
    a = m.sample(3, seed=5, batch_size=3)
    b = m.sample(3, seed=5, batch_size=3)
    c = m.sample(3, seed=6, batch_size=3)
    assert [r.seed for r in a] == [5, 6, 7]
    for x, y in zip(a, b):                                         # same seed: identical tensors
        assert torch.equal(x.image, y.image) and torch.equal(x.mask, y.mask)
    assert not torch.equal(a[0].image, c[0].image)                 # another seed: another sample
    # sample i depends on its own seed only (its own generator): another batching or another
    # position gives the same sample up to the convolutions' float rounding for another batch size
    for x, y in zip(a, m.sample(3, seed=5, batch_size=2)):
        assert torch.allclose(x.image, y.image, atol=1e-5)
    assert torch.allclose(a[1].image, c[0].image, atol=1e-5)
    r = a[0]
    assert r.image.shape == (3, 16, 16) and r.image.dtype == torch.float32 and 0 <= r.image.min() <= r.image.max() <= 1
    assert r.mask.shape == (16, 16) and r.mask.dtype == torch.int64 and int(r.mask.max()) <= K
    # predict: one result per image, seeded by the sample's dataset index, whatever the batch
    batch = {"image": torch.rand(2, 3, 16, 16), "meta": [{"index": 4}, {"index": 9}]}
    p = m.predict(batch)
    q = m.predict({"image": batch["image"].flip(0), "meta": [{"index": 9}, {"index": 4}]})
    assert [x.seed for x in p] == [4, 9] and torch.allclose(p[1].image, q[0].image, atol=1e-5)


def test_tiny_denoiser_loss_falls():
    torch.manual_seed(0)
    m = build_model(denoiser_cfg())
    image = torch.zeros(4, 3, 16, 16)
    image[:, 0] = torch.linspace(0, 1, 16)                         # a fixed, learnable batch
    mask = torch.zeros(4, 16, 16, dtype=torch.long)
    mask[:, 4:8, 4:8], mask[:, 10:14, 2:6] = 1, 2
    batch = {"image": image, "mask": mask}
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3, weight_decay=0.002)
    losses = []
    for _ in range(30):
        loss = m(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-6:]) < 0.5 * np.mean(losses[:6]), losses


def test_mse_ce_loss_and_train_t_range():
    log: list = []
    m = DiffusionDenoiser(denoiser=Recorder("x", log), num_defect=K, loss="mse_ce", ce_weight=0.2,
                          train_t_range=[400, 999])
    torch.manual_seed(0)
    image, mask = torch.rand(8, 3, 8, 8), torch.randint(0, K + 1, (8, 8, 8))
    out = m({"image": image, "mask": mask})
    assert set(out) == {"loss_rgb", "loss_mask", "ce"}
    x_t = log[0][2]
    pred = 0.5 * torch.tanh(x_t)
    x0 = to_x0(image, mask, K)
    assert out["loss_rgb"].item() == pytest.approx(((pred[:, :3] - x0[:, :3]) ** 2).mean().item(), rel=1e-5)
    logp = pred[:, 3:].log_softmax(1)
    ce = -logp.gather(1, mask[:, None]).mean()
    assert out["loss_mask"].item() == pytest.approx(0.2 * ce.item(), rel=1e-5)
    for _ in range(30):
        m({"image": image, "mask": mask})
    ts = torch.cat([t for _, t, _ in log])
    assert ts.min() >= 400 and ts.max() <= 999 and len(set(ts.tolist())) > 1
    mse = DiffusionDenoiser(denoiser=Recorder("y", []), num_defect=K)
    assert set(mse({"image": image, "mask": mask})) == {"loss"}
    with pytest.raises(ValueError, match="train_t_range"):
        DiffusionDenoiser(denoiser=Recorder("z", []), num_defect=K, train_t_range=[500, 1000])
    with pytest.raises(ValueError, match="model.loss"):
        DiffusionDenoiser(denoiser=Recorder("z", []), num_defect=K, loss="l1")


# ---------------------------------------------------------------- result, preview hook
def test_generation_result_files_json_and_drawing(tmp_path):
    from PIL import Image

    from defectkit.visualization import draw_result

    mask = torch.tensor([[0, 1], [2, 12]])
    r = GenerationResult(image=torch.rand(3, 2, 2), mask=mask, seed=3, stage_seconds={"large": 0.5, "small": 0.25})
    assert r.to_json() == {"seed": 3, "shape": [2, 2], "class_pixels": {0: 1, 1: 1, 2: 1, 12: 1},
                           "stage_seconds": {"large": 0.5, "small": 0.25}}
    img_path, mask_path = r.write_files(tmp_path, "s0")
    assert np.array_equal(np.array(Image.open(mask_path)), mask.numpy())
    assert Image.open(img_path).size == (2, 2)
    cm = np.array(colour_mask(mask))
    assert [tuple(cm[0, 0]), tuple(cm[0, 1]), tuple(cm[1, 0])] == [PALETTE[0], PALETTE[1], PALETTE[2]]
    assert tuple(cm[1, 1]) == PALETTE[2]                    # 12 wraps to 1 + (11 % 10)
    assert len(PALETTE) == 11 and PALETTE[0] == (0, 0, 0)
    assert draw_result(torch.rand(3, 2, 2), r, ["hole", "stain"]).width > 4


def test_preview_hook_under_the_trainer_uses_ema_weights(tmp_path):
    from PIL import Image

    from defectkit.engine.trainer import Trainer
    from defectkit.models.generation import pairs_grid

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.png")
        m = np.zeros((16, 16), np.uint8)
        m[2:6, 2:6], m[8:12, 8:12] = 1, 2
        Image.fromarray(m).save(tmp_path / "masks" / f"{i}.png")
    cfg = {"model": dict(type="DiffusionDenoiser", denoiser=tiny_sin(), sampling={"num_inference_steps": 3}),
           "data": {"train": {"type": "MaskFolderDataset", "img_dir": str(tmp_path / "images"),
                              "mask_dir": str(tmp_path / "masks"), "classes": ["hole", "stain"]},
                    "batch_size": 2, "num_workers": 0},
           "optimizer": {"type": "AdamW", "lr": 1e-3, "weight_decay": 0.002},
           "train": {"max_iters": 3, "ema": {"decay": 0.5}, "log_interval": 1, "checkpoint_interval": 3,
                     "save_best": None, "progress": False,
                     "hooks": [{"type": "SamplePreviewHook", "interval": 2, "num": 2, "seed": 7,
                                "num_inference_steps": 2}]},
           "seed": 0, "device": "cpu"}
    t = Trainer(cfg, work_dir=tmp_path / "work")
    try:
        t.train()
    finally:
        t.close()
    previews = sorted(p.name for p in (tmp_path / "work" / "previews").glob("*.png"))
    assert previews == ["iter_2.png", "iter_3.png"]
    ckpt = torch.load(tmp_path / "work" / "latest.pth", weights_only=True)
    model = build_model(cfg["model"], ["hole", "stain"])
    model.load_state_dict(ckpt["ema"]["state_dict"])
    model.sampling.num_inference_steps = 2
    expected = np.array(pairs_grid(model.eval().sample(2, seed=7)))
    assert np.array_equal(np.array(Image.open(tmp_path / "work" / "previews" / "iter_3.png")), expected)
    model.load_state_dict(ckpt["state_dict"])                 # the raw weights draw a different grid
    assert not np.array_equal(np.array(pairs_grid(model.sample(2, seed=7))), expected)


def test_a_single_model_mode_reads_only_its_own_checkpoint(tmp_path):
    """large_only / small_only sample with one part: the other part's checkpoint is not read
    (a missing file is no error; its weights are 'unused'), the one it samples with is."""
    from defectkit.models.weights import CheckpointError

    small = build_model(denoiser_cfg())
    torch.save({"state_dict": small.state_dict()}, tmp_path / "s.pth")
    large = build_model(denoiser_cfg(tiny_adm()))
    torch.save({"state_dict": large.state_dict()}, tmp_path / "l.pth")
    cfg = dict(type="DefectGen", large=denoiser_cfg(tiny_adm()), small=denoiser_cfg(), num_inference_steps=2,
               large_checkpoint=str(tmp_path / "l.pth"), small_checkpoint=str(tmp_path / "gone.pth"))
    g = build_model(cfg | {"mode": "large_only"})
    assert g.parts == ("large",) and g.weights_source == {"large": "raw", "small": "unused"}
    assert list(g.sample(1, batch_size=1)[0].stage_seconds) == ["large"]
    g = build_model(cfg | {"mode": "small_only", "small_checkpoint": str(tmp_path / "s.pth"),
                           "large_checkpoint": str(tmp_path / "gone.pth")})
    assert g.parts == ("small",) and g.weights_source == {"large": "unused", "small": "raw"}
    with pytest.raises(CheckpointError, match=r"model.small_checkpoint: .*not found: .*gone\.pth"):
        build_model(cfg)                                             # two_stage needs both
    assert DefectGen.parts_for_mode("two_stage") == ("large", "small")
    with pytest.raises(ValueError, match="model.mode must be one of"):
        DefectGen.parts_for_mode("both")


def test_samplers_expose_their_settings_publicly():
    g = build_model(dict(type="DefectGen", large=denoiser_cfg(tiny_adm()), small=denoiser_cfg(), batch_size=5,
                         t_switch=100))
    assert g.sample_batch_size == 5 and g.sampler_options()["t_switch"] == 100
    d = build_model(denoiser_cfg(sampling={"batch_size": 3, "num_inference_steps": 9}))
    assert d.sample_batch_size == 3
    assert d.sampler_options()["num_inference_steps"] == 9 and d.sampler_options()["mode"] == "large_only"
