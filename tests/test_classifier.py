import pytest
import torch

from defectkit.config import validate_config
from defectkit.registry import MODELS
from defectkit.structures import ClassificationResult


def make_set(n: int, seed: int, size: int = 32):
    """Half normal (noise), half defective (noise + a bright 8x8 square somewhere)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=g) * 0.5
    y = torch.arange(n) % 2
    for i in torch.nonzero(y).flatten().tolist():
        r, c = torch.randint(0, size - 8, (2,), generator=g).tolist()
        images[i, :, r:r + 8, c:c + 8] += 3.0
    return {"image": images, "is_defective": y,
            "meta": [{"id": f"img{i}", "path": f"/x/img{i}.png"} for i in range(n)]}


def test_build_from_config_and_validate():
    cfg = {"model": {"type": "ImageClassifier", "backbone": "small_cnn", "pretrained": None,
                     "num_classes": 2, "target": "is_defective", "dropout": 0.1,
                     "class_weights": [1.0, 2.0], "label_smoothing": 0.1}}
    validate_config(cfg)
    m = MODELS.build(cfg["model"])
    assert m.class_names == ["normal", "defective"]
    assert m.fc.out_features == 2


def test_forward_returns_losses_and_predict_results():
    torch.manual_seed(0)
    m = MODELS.build({"type": "ImageClassifier", "backbone": "resnet18"})
    batch = make_set(4, 0)
    out = m(batch)
    assert set(out) == {"loss_cls", "acc"}
    assert out["loss_cls"].requires_grad and out["loss_cls"].ndim == 0
    assert not out["acc"].requires_grad
    m.eval()
    res = m.predict(batch)
    assert len(res) == 4 and all(isinstance(r, ClassificationResult) for r in res)
    for r in res:
        assert r.scores.shape == (2,) and r.scores.device.type == "cpu"
        assert torch.isclose(r.scores.sum(), torch.tensor(1.0), atol=1e-5)
        assert r.label == int(r.scores.argmax())
        assert r.name(m.class_names) in ("normal", "defective")


def test_classifier_learns_bright_square():
    torch.manual_seed(0)
    m = MODELS.build({"type": "ImageClassifier", "backbone": "small_cnn"})
    train, test = make_set(32, 1), make_set(32, 2)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    m.train()
    losses = []
    for _ in range(40):
        loss = m(train)["loss_cls"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    m.eval()
    pred = torch.tensor([r.label for r in m.predict(test)])
    acc = (pred == test["is_defective"]).float().mean().item()
    assert acc > 0.8, acc


def test_label_target_and_multiclass():
    m = MODELS.build({"type": "ImageClassifier", "backbone": "small_cnn", "num_classes": 3,
                      "target": "label", "classes": ["A", "B", "C"]})
    assert m.class_names == ["A", "B", "C"]
    batch = {"image": torch.randn(3, 3, 32, 32), "label": torch.tensor([0, 1, 2])}
    assert m(batch)["loss_cls"].isfinite()
    with pytest.raises(KeyError, match="is_defective"):
        MODELS.build({"type": "ImageClassifier", "backbone": "small_cnn"})(batch)
    with pytest.raises(ValueError, match="num_classes"):
        m({"image": torch.randn(2, 3, 32, 32), "label": torch.tensor([0, 5])})


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes must be 2"):
        MODELS.build({"type": "ImageClassifier", "backbone": "small_cnn", "num_classes": 3})
    with pytest.raises(ValueError, match="class_weights"):
        MODELS.build({"type": "ImageClassifier", "backbone": "small_cnn", "class_weights": [1.0]})


def test_frozen_backbone_and_local_pretrained(tmp_path):
    src = MODELS.build({"type": "ImageClassifier", "backbone": "small_cnn"})
    path = tmp_path / "cls.pth"
    torch.save({"state_dict": src.state_dict()}, path)   # keys 'backbone.*' and 'fc.*'
    m = MODELS.build({"type": "ImageClassifier", "backbone": "small_cnn", "pretrained": str(path),
                      "frozen_stages": 4})
    assert torch.equal(m.backbone.layer2[0].weight, src.backbone.layer2[0].weight)
    assert not any(p.requires_grad for p in m.backbone.parameters())
    assert all(p.requires_grad for p in m.fc.parameters())


@pytest.mark.cuda
def test_runs_on_cuda_and_returns_cpu_scores():
    m = MODELS.build({"type": "ImageClassifier", "backbone": "small_cnn"}).cuda()
    batch = {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in make_set(4, 0).items()}
    with torch.autocast("cuda", dtype=torch.float16):
        out = m(batch)
    assert out["loss_cls"].dtype == torch.float32
    out["loss_cls"].backward()
    m.eval()
    res = m.predict(batch)
    assert res[0].scores.device.type == "cpu" and res[0].scores.dtype == torch.float32
