"""ZNet / UNet: shapes, parameter counts, Scope weight sharing, compat modes, image head,
losses (hand-computed Dice, CE with class weights) and a loss that falls on a tiny set."""
import pytest
import torch

from defectkit.config import ConfigError, validate_config
from defectkit.engine import build_model
from defectkit.models.segmentation import UNet, ZNet, segmentation_losses, soft_dice_loss
from defectkit.models.segmentation.znet import ScopeConv


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_znet_parameter_count_and_shape():
    m = ZNet()
    # the note's hand count: ~4.40 M, dominated by the two 256->256 5x5 convs (1.64 M each)
    assert 4.35e6 < n_params(m) < 4.45e6
    assert n_params(m.bottleneck) == 256 * 256 * 25 + 256 + 2 * 256
    # one shared 6->6 3x3 block: 324 weights + 6 biases + 12 BatchNorm parameters (original)
    orig = ZNet(compat="original").scope
    assert n_params(orig.conv) + n_params(orig.norms) == 342
    # original: BN1d in gate 1 (5 + 30 channels) and gate 2 (8), BN on the last conv (2 channels)
    # = 2 * 45 = 90 more parameters; fixed: three more Scope BatchNorms = 3 * 12 = 36
    assert n_params(ZNet(compat="original")) - n_params(m) == 90 - 36
    m.eval()
    with torch.no_grad():
        logits, aux = m.logits(torch.rand(1, 3, 64, 128))
    assert logits.shape == (1, 2, 64, 128) and aux is None
    with torch.no_grad():                                   # not a multiple of 16: padded, cropped
        assert m.logits(torch.rand(1, 3, 50, 70))[0].shape == (1, 2, 50, 70)


def test_scope_conv_shares_one_conv_four_times():
    for share_bn in (True, False):
        scope = ScopeConv(6, 4, share_weights=True, share_bn=share_bn)
        calls = []
        scope.conv.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape))
        out = scope(torch.rand(2, 3, 16, 16))
        assert out.shape == (2, 30, 16, 16) and len(calls) == 4      # one conv, four applications
        assert n_params(scope.conv) == 6 * 6 * 9 + 6
        assert len(scope.norms) == (1 if share_bn else 4)
        # the outputs are [a, f(a), f(f(a)), ...]: recompute them from the stem by hand
        scope.eval()
        x = torch.rand(1, 3, 8, 8)
        with torch.no_grad():
            chain = [scope.stem(x)]
            for i in range(4):
                bn = scope.norms[0 if share_bn else i]
                chain.append(torch.relu(bn(scope.conv(chain[-1]))))
            torch.testing.assert_close(scope(x), torch.cat(chain, 1))
    shared = ScopeConv(6, 4, share_weights=True)
    unshared = ScopeConv(6, 4, share_weights=False)
    assert n_params(unshared) - n_params(shared) == 3 * 342
    # ZNet: the original shares the block's BatchNorm as well, fixed gives each step its own
    assert len(ZNet(compat="original").scope.norms) == 1 and len(ZNet().scope.norms) == 4


def test_znet_compat_original_vs_fixed():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 64)
    orig, fixed = ZNet(compat="original").eval(), ZNet(compat="fixed").eval()
    with torch.no_grad():
        lo = orig.logits(x)[0]
        lf = fixed.logits(x)[0]
        g1 = fixed.gate1(x)
    assert (lo >= 0).all()                         # BN + ReLU before the softmax
    assert (lf < 0).any()                          # plain logits
    assert ((g1 > 0) & (g1 < 1)).all()             # sigmoid gate
    assert isinstance(orig.gate1.mlp[-1][-1], torch.nn.ReLU)
    with pytest.raises(ValueError, match="compat"):
        ZNet(compat="bug")


def test_unet_shapes_and_size():
    assert abs(n_params(UNet()) - 31.04e6) < 0.02e6   # the paper's UNet (depth 4, width 64)
    m = UNet(base_channels=4, depth=3, classes=["a", "b"]).eval()
    assert m.num_classes == 3
    with torch.no_grad():
        assert m.logits(torch.rand(2, 3, 20, 36))[0].shape == (2, 3, 20, 36)
    with torch.no_grad():
        assert UNet(base_channels=4, depth=2, bilinear=True).logits(torch.rand(1, 3, 8, 8))[0].shape == (1, 2, 8, 8)


def test_predict_original_size_and_image_head_gate():
    m = ZNet(widths=[8, 16, 32, 64], aux_head={"gate_thr": 1.0}).eval()
    batch = {"image": torch.rand(2, 3, 32, 64), "image_sizes": [(32, 64), (32, 64)],
             "meta": [{"orig_size": (64, 128)}, {"orig_size": (32, 64)}]}
    calls = []
    m.head.register_forward_hook(lambda *a: calls.append(1))
    res = m.predict(batch)
    assert [tuple(r.mask.shape) for r in res] == [(64, 128), (32, 64)]
    assert all(r.gated and not r.mask.any() and r.image_scores.shape == (2,) for r in res)
    assert not calls                               # P(defective) <= 1.0: decoder skipped
    m.aux_cfg.gate_thr = None
    res = m.predict(batch)
    assert calls and not any(r.gated for r in res)
    m.train()
    out = m({"image": batch["image"], "mask": torch.zeros(2, 32, 64, dtype=torch.long),
             "is_defective": torch.tensor([0, 1])})
    assert {"loss_ce", "loss_aux"} <= set(out)


def test_losses_hand_computed():
    # 1 image, 2 pixels, 2 classes; logits give p(defect) = 0.5 and 0.8808 (sigmoid(2))
    logits = torch.tensor([[[[0.0, 0.0]], [[0.0, 2.0]]]])       # (1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])
    p1 = torch.sigmoid(torch.tensor(2.0)).item()
    # class 0: p = (0.5, 1 - p1), y = (1, 0): (2*0.5 + 1) / (0.5 + 1 - p1 + 1 + 1)
    d0 = (2 * 0.5 + 1) / (0.5 + (1 - p1) + 1 + 1)
    d1 = (2 * p1 + 1) / (0.5 + p1 + 1 + 1)
    assert soft_dice_loss(logits, target).item() == pytest.approx(1 - (d0 + d1) / 2, abs=1e-6)
    w = torch.tensor([1.0, 3.0])
    assert soft_dice_loss(logits, target, w).item() == pytest.approx(1 - (d0 + 3 * d1) / 4, abs=1e-6)
    ce = -(torch.log(torch.tensor(0.5)) * 1 + torch.log(torch.tensor(p1)) * 3) / 4
    out = segmentation_losses(logits, target, "ce+dice", w)
    assert out["loss_ce"].item() == pytest.approx(ce.item(), abs=1e-6)
    assert set(out) == {"loss_ce", "loss_dice"}
    ign = torch.tensor([[[0, 255]]])                            # the ignored pixel counts nowhere
    assert segmentation_losses(logits, ign, "ce")["loss_ce"].item() == pytest.approx(-torch.log(torch.tensor(0.5)).item())
    with pytest.raises(ValueError, match="loss"):
        segmentation_losses(logits, target, "focal")


@pytest.mark.parametrize("name", ["znet_fixed", "znet_original", "unet"])
def test_losses_fall_on_a_tiny_set(name):
    torch.manual_seed(0)
    imgs = torch.rand(4, 3, 32, 64) * 0.3 + 0.3
    masks = torch.zeros(4, 32, 64, dtype=torch.long)
    for i, (y, x) in enumerate([(4, 8), (20, 40), (10, 30), (24, 10)]):
        imgs[i, :, y:y + 5, x:x + 6] = 0.05                       # dark pits
        masks[i, y:y + 5, x:x + 6] = 1
    model = {"znet_fixed": lambda: ZNet(widths=[8, 16, 32, 64], loss="ce+dice"),
             "znet_original": lambda: ZNet(compat="original", widths=[8, 16, 32, 64], loss="ce+dice"),
             "unet": lambda: UNet(base_channels=8, depth=3, loss="ce+dice")}[name]()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    batch = {"image": imgs, "mask": masks}
    losses = []
    for _ in range(20):
        out = model(batch)
        loss = out["loss_ce"] + out["loss_dice"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # compat original (ReLU'd logits, BN1d gates) learns more slowly than fixed, but learns
    assert losses[-1] < (0.8 if name == "znet_original" else 0.6) * losses[0], losses


def test_build_from_config_and_errors():
    m = build_model({"type": "ZNet", "compat": "original"}, classes=["Pitting"])
    assert isinstance(m, ZNet) and m.num_classes == 2 and m.compat == "original"
    with pytest.raises(ValueError, match="num_classes 3"):
        ZNet(num_classes=3, classes=["Pitting"])
    with pytest.raises(ValueError, match="class_weights"):
        UNet(class_weights=[1.0])
    with pytest.raises(ValueError, match="aux_head: unknown option"):
        ZNet(aux_head={"gate_th": 0.5})
    with pytest.raises(ConfigError, match="did you mean 'compat'"):
        validate_config({"model": {"type": "ZNet", "compt": "fixed"}})
    with pytest.raises(KeyError, match="mask"):
        ZNet(widths=[8, 16, 32, 64])({"image": torch.rand(1, 3, 16, 16)})
    with pytest.raises(ValueError, match="mask value 3"):
        ZNet(widths=[8, 16, 32, 64])({"image": torch.rand(1, 3, 16, 16),
                                      "mask": torch.full((1, 16, 16), 3)})
