"""--weights imagenet | none | PATH: offline cache, state dicts, dmlrs checkpoints, clear errors."""
import pytest
import torch
import torchvision

from dmlrs.errors import DmlrsError
from dmlrs.models import build_model, imagenet_weights_path

DIM = 8


@pytest.fixture(scope="module")
def torchvision_resnet18_state():
    """A freshly initialised torchvision resnet18 state dict, ImageNet classifier included."""
    torch.manual_seed(123)
    return torchvision.models.resnet18().state_dict()


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home"


def _assert_backbone_holds(model, state):
    for key in ("conv1.weight", "layer4.1.bn2.running_var", "layer3.0.downsample.0.weight"):
        torch.testing.assert_close(model.backbone.state_dict()[key], state[key], rtol=0, atol=0)


@pytest.mark.parametrize("weights", ["none", None])
def test_none_keeps_random_init_and_differs_from_file(torchvision_resnet18_state, weights):
    model = build_model("resnet18", DIM, weights=weights)
    assert not torch.equal(model.backbone.conv1.weight, torchvision_resnet18_state["conv1.weight"])


def test_imagenet_missing_from_cache_names_path_and_url(empty_torch_home):
    expected = empty_torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert imagenet_weights_path("resnet18") == expected
    with pytest.raises(DmlrsError) as error:
        build_model("resnet18", DIM, weights="imagenet")
    message = str(error.value)
    assert str(expected) in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert "--weights none" in message and "--weights PATH" in message
    assert not expected.exists()  # nothing was downloaded


@pytest.mark.parametrize("name, file_name", [("resnet50", "resnet50-0676ba61.pth"),
                                             ("vgg16", "vgg16-397923af.pth")])
def test_imagenet_cache_file_names(empty_torch_home, name, file_name):
    assert imagenet_weights_path(name) == empty_torch_home / "hub" / "checkpoints" / file_name


def test_imagenet_loads_from_cache(empty_torch_home, torchvision_resnet18_state):
    path = imagenet_weights_path("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(torchvision_resnet18_state, path)
    model = build_model("resnet18", DIM, weights="imagenet")
    _assert_backbone_holds(model, torchvision_resnet18_state)


def test_torchvision_state_dict_file_loads_into_backbone(tmp_path, torchvision_resnet18_state):
    path = tmp_path / "resnet18.pth"
    # Old torchvision files lack BatchNorm's num_batches_tracked; they must still load.
    torch.save({k: v for k, v in torchvision_resnet18_state.items()
                if not k.endswith("num_batches_tracked")}, path)
    model = build_model("resnet18", DIM, weights=str(path), num_classes=3)
    _assert_backbone_holds(model, torchvision_resnet18_state)


def test_data_parallel_prefix_is_stripped(tmp_path, torchvision_resnet18_state):
    path = tmp_path / "ddp.pth"
    torch.save({f"module.{k}": v for k, v in torchvision_resnet18_state.items()}, path)
    model = build_model("resnet18", DIM, weights=path)
    _assert_backbone_holds(model, torchvision_resnet18_state)


@pytest.mark.parametrize("as_checkpoint", [True, False], ids=["checkpoint", "bare-state-dict"])
def test_dmlrs_model_file_loads_whole_model(tmp_path, as_checkpoint):
    torch.manual_seed(7)
    trained = build_model("resnet18", DIM, num_classes=3, head="hash").eval()
    path = tmp_path / "last.pt"
    state = trained.state_dict()
    torch.save({"model": state, "epoch": 3, "optimizer": {}} if as_checkpoint else state, path)
    torch.manual_seed(8)
    loaded = build_model("resnet18", DIM, num_classes=3, head="hash", weights=path).eval()
    for key, value in state.items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images)["logits"], trained(images)["logits"])


def test_checkpoint_with_other_dim_is_described(tmp_path):
    path = tmp_path / "best.pt"
    torch.save({"model": build_model("resnet18", 16, num_classes=4).state_dict()}, path)
    with pytest.raises(DmlrsError) as error:
        build_model("resnet18", DIM, num_classes=4, weights=path)
    message = str(error.value)
    assert str(path) in message
    assert "a resnet18 state dict, dim 16, num_classes 4" in message
    assert "projection.fc.weight" in message


def test_state_dict_for_wrong_backbone_names_it(tmp_path, torchvision_resnet18_state):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision_resnet18_state, path)
    for target in ("resnet50", "vgg16"):
        with pytest.raises(DmlrsError) as error:
            build_model(target, DIM, weights=path)
        message = str(error.value)
        assert str(path) in message and f"the {target} backbone" in message
        assert "looks like a resnet18 state dict" in message


def test_garbage_file_is_rejected(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"\x00not a torch file\xff" * 10)
    with pytest.raises(DmlrsError, match="cannot read .*garbage.pth"):
        build_model("resnet18", DIM, weights=path)


def test_missing_file_is_rejected(tmp_path):
    with pytest.raises(DmlrsError, match="nope.pth: file not found"):
        build_model("resnet18", DIM, weights=tmp_path / "nope.pth")


def test_tensor_file_is_not_a_state_dict(tmp_path):
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)
    with pytest.raises(DmlrsError, match="holds a Tensor, not a state dict"):
        build_model("resnet18", DIM, weights=path)


def test_pickled_module_is_refused_by_weights_only(tmp_path):
    path = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(DmlrsError, match="cannot read .*module.pth.*pickled Python objects"):
        build_model("resnet18", DIM, weights=path)


def test_dict_without_tensors_is_not_a_state_dict(tmp_path):
    path = tmp_path / "config.pth"
    torch.save({"lr": 0.1, "epochs": 3}, path)
    with pytest.raises(DmlrsError, match="not a state dict"):
        build_model("resnet18", DIM, weights=path)
