import logging

import pytest
import torch

from defectkit.models.backbones import (PretrainedWeightsError, build_backbone,
                                        parse_torchvision_uri, read_state_dict)
from defectkit.registry import MODELS


@pytest.mark.parametrize("name,channels", [
    ("resnet18", [64, 128, 256, 512]),
    ("small_cnn", [16, 32, 64, 128]),
])
def test_stage_shapes_and_channels(name, channels):
    bb = build_backbone(name, out_indices=(1, 2, 3, 4))
    feats = bb(torch.randn(2, 3, 64, 64))
    assert list(feats) == ["layer1", "layer2", "layer3", "layer4"]
    assert bb.out_channels == channels
    assert bb.strides == [4, 8, 16, 32]
    for (k, f), c, s in zip(feats.items(), channels, bb.strides):
        assert f.shape == (2, c, 64 // s, 64 // s), k


def test_out_indices_subset_and_names():
    bb = build_backbone("small_cnn", out_indices=("layer1", 3))
    feats = bb(torch.randn(1, 3, 32, 32))
    assert list(feats) == ["layer1", "layer3"]
    assert bb.out_channels == [16, 64]
    with pytest.raises(ValueError, match="stage"):
        build_backbone("small_cnn", out_indices=(5,))


def test_unknown_backbone_suggests():
    with pytest.raises(ValueError, match="did you mean 'resnet50'"):
        build_backbone("resnet5O")


def test_small_cnn_is_registered():
    bb = MODELS.build({"type": "SmallCNN", "width": 8, "out_indices": [4]})
    assert bb.out_channels == [64]


def test_local_pth_with_module_prefix(tmp_path, caplog):
    src = build_backbone("resnet18")
    sd = {"module." + k: v for k, v in src.state_dict().items()}
    sd["module.fc.weight"] = torch.zeros(2, 512)        # classifier head: skipped
    sd["module.extra.weight"] = torch.zeros(3)          # unknown: reported, not fatal
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": sd, "meta": {"epoch": 3}}, path)
    with caplog.at_level(logging.WARNING):
        dst = build_backbone("resnet18", pretrained=str(path))
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k
    assert "extra.weight" in caplog.text
    assert "fc.weight" not in caplog.text


def test_model_key_and_backbone_prefix(tmp_path):
    src = build_backbone("small_cnn")
    path = tmp_path / "w.pth"
    torch.save({"model": {"backbone." + k: v for k, v in src.state_dict().items()}}, path)
    sd = read_state_dict(path)
    assert set(sd) == set(src.state_dict())
    dst = build_backbone("small_cnn", pretrained=str(path))
    assert torch.equal(dst.layer4[0].weight, src.layer4[0].weight)


def test_missing_file_error_names_the_file(tmp_path):
    missing = tmp_path / "nowhere" / "weights.pth"
    with pytest.raises(FileNotFoundError, match="weights.pth"):
        build_backbone("small_cnn", pretrained=str(missing))


def test_shape_mismatch_is_an_error(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(build_backbone("resnet18").state_dict(), path)
    with pytest.raises(ValueError, match="shapes"):
        build_backbone("resnet50", pretrained=str(path))


def test_file_with_no_matching_key_is_an_error(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"decoder.weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="no tensor of"):
        build_backbone("small_cnn", pretrained=str(path))


def test_torchvision_uri_parsing():
    from torchvision.models import ResNet50_Weights

    assert parse_torchvision_uri("torchvision://resnet50") == ("resnet50", ResNet50_Weights.IMAGENET1K_V1)
    assert parse_torchvision_uri("torchvision://resnet50.IMAGENET1K_V2")[1] is ResNet50_Weights.IMAGENET1K_V2
    assert parse_torchvision_uri("torchvision://ResNet50_Weights.IMAGENET1K_V2") == \
        ("resnet50", ResNet50_Weights.IMAGENET1K_V2)
    with pytest.raises(ValueError, match="IMAGENET1K_V9"):
        parse_torchvision_uri("torchvision://resnet50.IMAGENET1K_V9")
    with pytest.raises(ValueError, match="not a torchvision model"):
        parse_torchvision_uri("torchvision://resnet5000")


def test_torchvision_download_failure_names_cache_file(monkeypatch, tmp_path):
    from torchvision.models import ResNet18_Weights

    def offline(self, *a, **k):
        raise OSError("no network")

    monkeypatch.setattr(ResNet18_Weights, "get_state_dict", offline)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(PretrainedWeightsError) as e:
        build_backbone("resnet18", pretrained="torchvision://resnet18")
    msg = str(e.value)
    fname = ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]      # resnet18-f37072fd.pth
    expected = str(tmp_path / "hub" / "checkpoints" / fname)
    assert expected in msg and ResNet18_Weights.IMAGENET1K_V1.url in msg
    assert "local .pth" in msg


def test_torchvision_arch_mismatch(monkeypatch):
    from torchvision.models import ResNet34_Weights

    monkeypatch.setattr(ResNet34_Weights, "get_state_dict", lambda self, *a, **k: {})
    with pytest.raises(ValueError, match="resnet34 weights but the backbone is resnet18"):
        build_backbone("resnet18", pretrained="torchvision://resnet34")


def _trainable(bb, prefix):
    return [p.requires_grad for n, p in bb.named_parameters() if n.startswith(prefix)]


def test_frozen_stages():
    bb = build_backbone("resnet18", frozen_stages=1)
    assert not any(_trainable(bb, "conv1") + _trainable(bb, "bn1") + _trainable(bb, "layer1"))
    assert all(_trainable(bb, "layer2") + _trainable(bb, "layer4"))
    bb.train()
    assert not bb.bn1.training and not bb.layer1[0].bn1.training
    assert bb.layer2[0].bn1.training
    # frozen BN statistics do not move during a training forward
    before = bb.layer1[0].bn1.running_mean.clone()
    bb(torch.randn(2, 3, 32, 32))
    assert torch.equal(before, bb.layer1[0].bn1.running_mean)

    none = build_backbone("small_cnn", frozen_stages=-1)
    assert all(p.requires_grad for p in none.parameters())
    stem = build_backbone("small_cnn", frozen_stages=0)
    assert not any(_trainable(stem, "stem")) and all(_trainable(stem, "layer1"))


def test_norm_eval_keeps_bn_in_eval():
    bb = build_backbone("small_cnn", norm_eval=True).train()
    bns = [m for m in bb.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    assert all(p.requires_grad for p in bb.parameters())
    assert bb.training


def test_register_custom_backbone():
    from defectkit.models.backbones import BACKBONES, SmallCNN, register_backbone

    register_backbone("tiny8", lambda **kw: SmallCNN(width=8, **kw))
    try:
        assert build_backbone("tiny8", out_indices=(4,)).out_channels == [64]
        with pytest.raises(KeyError):
            register_backbone("tiny8", lambda **kw: None)
    finally:
        BACKBONES.pop("tiny8")
