"""EmbeddingModel outputs for every backbone x head: shapes, unit norm, heads vs float64 references."""
import math

import pytest
import torch

from dmlrs.errors import DmlrsError
from dmlrs.models import BACKBONES, build_backbone, build_model

DIM = 8
NUM_CLASSES = 5


@pytest.fixture(scope="module", params=[("embedding", None), ("embedding", NUM_CLASSES),
                                        ("hash", None), ("hash", NUM_CLASSES)],
                ids=lambda p: f"{p[0]}-classes{p[1]}")
def resnet18_model(request):
    head, num_classes = request.param
    torch.manual_seed(0)
    return build_model("resnet18", DIM, head=head, num_classes=num_classes).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _linear_reference(x, linear):
    """``W x + b`` with explicit loops in float64: (B, in) -> (B, out)."""
    weight, bias = linear.weight.double(), linear.bias.double()
    out = torch.zeros(x.shape[0], weight.shape[0], dtype=torch.float64)
    for i in range(x.shape[0]):
        for j in range(weight.shape[0]):
            out[i, j] = (weight[j] * x[i].double()).sum() + bias[j]
    return out


def test_attributes_describe_the_model(resnet18_model):
    assert resnet18_model.backbone_name == "resnet18"
    assert resnet18_model.feature_dim == 512
    assert resnet18_model.dim == DIM
    assert resnet18_model.head in ("embedding", "hash")


def test_outputs_and_logits_only_with_classes(resnet18_model, images):
    with torch.no_grad():
        out = resnet18_model(images)
    assert out["features"].shape == (2, DIM)
    assert out["embedding"].shape == (2, DIM)
    if resnet18_model.num_classes is None:
        assert set(out) == {"features", "embedding"}
        assert resnet18_model.classifier is None
    else:
        assert set(out) == {"features", "embedding", "logits"}
        assert out["logits"].shape == (2, NUM_CLASSES)


def test_heads_match_float64_reference(resnet18_model, images):
    with torch.no_grad():
        trunk = resnet18_model.backbone(images)
        out = resnet18_model(images)
    assert trunk.shape == (2, 512)
    projected = _linear_reference(trunk, resnet18_model.projection.fc)
    expected = torch.tanh(projected) if resnet18_model.head == "hash" else projected
    torch.testing.assert_close(out["features"].double(), expected, rtol=1e-5, atol=1e-5)
    if resnet18_model.num_classes is not None:
        logits = _linear_reference(out["features"], resnet18_model.classifier.fc)
        torch.testing.assert_close(out["logits"].double(), logits, rtol=1e-5, atol=1e-5)


def test_embedding_is_unit_norm_features(resnet18_model, images):
    with torch.no_grad():
        out = resnet18_model(images)
        embedded = resnet18_model.embed(images)
    for i in range(images.shape[0]):
        row = out["features"][i].double()
        norm = math.sqrt(sum(float(v) ** 2 for v in row))
        torch.testing.assert_close(out["embedding"][i].double(), row / norm, rtol=1e-6, atol=1e-6)
        assert abs(float(out["embedding"][i].double().norm()) - 1.0) < 1e-6
    torch.testing.assert_close(embedded, out["embedding"])


def test_hash_codes_are_relaxed_within_minus_one_one(images):
    torch.manual_seed(0)
    model = build_model("resnet18", 32, head="hash").eval()
    with torch.no_grad():
        model.projection.fc.weight.mul_(50.0)  # push pre-activations far beyond +-1
        codes = model(images)["features"]
        pre_activation = model.projection.fc(model.backbone(images))
    assert pre_activation.abs().max() > 1.5
    assert codes.abs().max() <= 1.0
    assert (codes > 0).any() and (codes < 0).any()


def test_larger_input_and_gradients_reach_the_first_convolution():
    torch.manual_seed(0)
    model = build_model("resnet18", DIM, num_classes=3)
    out = model(torch.randn(2, 3, 64, 64))
    (out["embedding"].sum() + out["logits"].sum()).backward()
    assert model.backbone.conv1.weight.grad is not None
    assert model.backbone.conv1.weight.grad.abs().sum() > 0


def test_channels_last_forward_equals_default(images):
    torch.manual_seed(0)
    default = build_model("resnet18", DIM, num_classes=3).eval()
    nhwc = build_model("resnet18", DIM, num_classes=3, channels_last=True).eval()
    nhwc.load_state_dict(default.state_dict())
    assert nhwc.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected, got = default(images), nhwc(images)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5)


def test_autocast_keeps_embedding_float32_and_unit_norm(images):
    torch.manual_seed(0)
    model = build_model("resnet18", DIM, num_classes=3).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images)
    assert out["features"].dtype == torch.bfloat16
    assert out["embedding"].dtype == torch.float32
    torch.testing.assert_close(out["embedding"].norm(dim=1), torch.ones(2))


@pytest.mark.parametrize("name, feature_dim", [("resnet50", 2048), ("vgg16", 512)])
def test_heavier_backbones_one_tiny_forward(name, feature_dim, images):
    torch.manual_seed(0)
    model = build_model(name, DIM, num_classes=NUM_CLASSES).eval()
    assert model.feature_dim == feature_dim == BACKBONES[name].feature_dim
    with torch.no_grad():
        trunk = model.backbone(images)
        out = model(images)
    assert trunk.shape == (2, feature_dim)
    assert out["embedding"].shape == (2, DIM) and out["logits"].shape == (2, NUM_CLASSES)
    torch.testing.assert_close(out["embedding"].norm(dim=1), torch.ones(2))


def test_vgg16_trunk_has_no_fc_layers():
    trunk = build_backbone("vgg16")
    assert not any(isinstance(m, torch.nn.Linear) for m in trunk.modules())
    assert sum(p.numel() for p in trunk.parameters()) < 15_000_000  # conv layers only (14.7M)


@pytest.mark.parametrize("kwargs, flag", [
    ({"backbone": "resnet34"}, "--model"),
    ({"head": "arcface"}, "head"),
    ({"dim": 0}, "--dim"),
    ({"num_classes": 0}, "num_classes"),
])
def test_bad_arguments_raise_clear_errors(kwargs, flag):
    with pytest.raises(DmlrsError, match=flag):
        build_model(**kwargs)
