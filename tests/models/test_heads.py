"""Heads as the original code builds them: kaiming-normal weights, default biases, HR-S2DML's
parameter-free LayerNorm in front of the linear layer."""
import math

import torch

from dmlrs.models import build_model
from dmlrs.models.heads import ClassHead, EmbeddingHead, HashHead


def test_linear_weights_are_kaiming_normal_and_biases_pytorch_default():
    torch.manual_seed(0)
    head, classes = EmbeddingHead(2048, 256), ClassHead(256, 45)
    for layer in (head.fc, classes.fc):
        fan_in = layer.weight.shape[1]
        weight = layer.weight.detach().double().flatten()
        # kaiming_normal_(fan_in, leaky_relu a=0): N(0, 2 / fan_in); PyTorch's default would
        # be uniform with std 1 / sqrt(3 fan_in), sqrt(6) = 2.45x smaller
        assert abs(weight.std().item() / math.sqrt(2.0 / fan_in) - 1) < 0.03
        assert abs(weight.mean().item()) < 4 * math.sqrt(2.0 / fan_in / weight.numel())
        kurtosis = (((weight - weight.mean()) / weight.std()) ** 4).mean().item()
        assert abs(kurtosis - 3.0) < 0.2  # normal (uniform would give 1.8)
        assert layer.bias.abs().max().item() <= 1 / math.sqrt(fan_in)


def test_model_heads_use_the_original_init():
    torch.manual_seed(1)
    model = build_model("resnet50", 128, num_classes=30)
    for layer in (model.projection.fc, model.classifier.fc):
        fan_in = layer.weight.shape[1]
        assert abs(layer.weight.std().item() / math.sqrt(2.0 / fan_in) - 1) < 0.1


def test_standardize_is_a_parameter_free_layer_norm_before_the_linear_layer():
    torch.manual_seed(2)
    head = EmbeddingHead(6, 3, standardize=True).double()
    assert not list(head.standardize.parameters()) and set(head.state_dict()) == {"fc.weight", "fc.bias"}
    x = torch.randn(4, 6, dtype=torch.float64) * 5 + 3
    expected = torch.zeros(4, 3, dtype=torch.float64)
    for i in range(4):
        mean = sum(x[i].tolist()) / 6
        var = sum((v - mean) ** 2 for v in x[i].tolist()) / 6
        z = [(v - mean) / math.sqrt(var + 1e-5) for v in x[i].tolist()]
        for j in range(3):
            expected[i, j] = sum(head.fc.weight[j, k].item() * z[k] for k in range(6)) + head.fc.bias[j].item()
    assert torch.allclose(head(x), expected, atol=1e-12)
    assert not torch.allclose(EmbeddingHead(6, 3).double()(x), expected)


def test_hash_head_is_tanh_of_the_same_linear_output():
    torch.manual_seed(3)
    raw, tanh = EmbeddingHead(8, 4), HashHead(8, 4)
    tanh.load_state_dict(raw.state_dict())
    x = torch.randn(5, 8)
    assert torch.allclose(tanh(x), torch.tanh(raw(x)))


def test_standardized_model_loads_plain_state_dicts():
    plain = build_model("resnet18", 16)
    standardized = build_model("resnet18", 16, standardize=True)
    standardized.load_state_dict(plain.state_dict())  # LayerNorm without affine has no state
    assert standardized.standardize and "standardize=True" in repr(standardized)
