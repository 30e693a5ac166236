"""--weights imagenet | none | PATH: hub cache/download, state dicts, checkpoints, clear errors.

No test touches the network: ``no_network`` (autouse) makes every way out (torch.hub's downloader
and ``urlopen``, ``urllib``, sockets) fail the test; tests that exercise the download replace
the downloader or ``urlopen`` with local fakes.
"""
import http.client
import io
import socket
import urllib.error
import urllib.request

import pytest
import torch
import torch.hub
import torchvision

from dmlrs.errors import DmlrsError
from dmlrs.models import build_model, imagenet_weights_path

DIM = 8
REAL_DOWNLOAD = torch.hub.download_url_to_file  # before no_network replaces it
RESNET18_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
RESNET18_FILE = "resnet18-f37072fd.pth"


@pytest.fixture(scope="module")
def torchvision_resnet18_state():
    """A freshly initialised torchvision resnet18 state dict, ImageNet classifier included."""
    torch.manual_seed(123)
    return torchvision.models.resnet18().state_dict()


def _network_used(*args, **kwargs):
    pytest.fail(f"a test tried to reach the network: {args!r} {kwargs!r}")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail the test on any download attempt (tests may override these with fakes)."""
    monkeypatch.setattr(torch.hub, "download_url_to_file", _network_used)
    monkeypatch.setattr(torch.hub, "urlopen", _network_used)
    monkeypatch.setattr(urllib.request, "urlopen", _network_used)
    monkeypatch.setattr(socket, "create_connection", _network_used)
    monkeypatch.setattr(socket.socket, "connect", _network_used)


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


def _offline(url, dst, hash_prefix=None, progress=True):
    raise urllib.error.URLError("offline")


def test_imagenet_offline_names_path_url_and_alternatives(empty_torch_home, monkeypatch):
    expected = empty_torch_home / "hub" / "checkpoints" / RESNET18_FILE
    assert imagenet_weights_path("resnet18") == expected
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
    with pytest.raises(DmlrsError) as error:
        build_model("resnet18", DIM, weights="imagenet")
    message = str(error.value)
    assert "downloading" in message and "failed" in message and "offline" in message
    assert str(expected) in message
    assert RESNET18_URL in message
    assert "--weights none" in message and "--weights PATH" in message and "TORCH_HOME" in message
    assert isinstance(error.value.__cause__, urllib.error.URLError)
    assert not expected.exists()


def test_imagenet_download_uses_progress_bar_and_hash_check(empty_torch_home, monkeypatch,
                                                            torchvision_resnet18_state):
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append({"url": url, "dst": dst, "hash_prefix": hash_prefix, "progress": progress})
        torch.save(torchvision_resnet18_state, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    model = build_model("resnet18", DIM, weights="imagenet")
    path = imagenet_weights_path("resnet18")
    assert calls == [{"url": RESNET18_URL, "dst": str(path), "hash_prefix": "f37072fd",
                      "progress": True}]
    _assert_backbone_holds(model, torchvision_resnet18_state)
    # The second time the cached file is used; no_network's downloader fails the test if called.
    monkeypatch.setattr(torch.hub, "download_url_to_file", _network_used)
    _assert_backbone_holds(build_model("resnet18", DIM, weights="imagenet"),
                           torchvision_resnet18_state)


class _FakeResponse:
    """Stands in for ``urlopen``'s response: the bytes of ``payload``, maybe cut short."""

    def __init__(self, payload: bytes, truncate_at: int | None = None):
        self._stream = io.BytesIO(payload)
        self._size = len(payload)
        self._truncate_at = truncate_at

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def info(self):
        message = http.client.HTTPMessage()
        message["Content-Length"] = str(self._size)
        return message

    def read(self, size=-1):
        if self._truncate_at is not None and self._stream.tell() >= self._truncate_at:
            raise http.client.IncompleteRead(b"", self._size - self._stream.tell())
        if self._truncate_at is not None:
            size = min(size, self._truncate_at - self._stream.tell())
        return self._stream.read(size)


@pytest.mark.parametrize("truncated", [False, True], ids=["hash-mismatch", "truncated"])
def test_imagenet_bad_download_is_a_clear_error(empty_torch_home, monkeypatch,
                                                torchvision_resnet18_state, truncated):
    """torch.hub's real downloader runs on fake bytes: its SHA-256 prefix check (the random
    weights do not hash to f37072fd) or a connection cut mid-file end in one DmlrsError."""
    buffer = io.BytesIO()
    torch.save(torchvision_resnet18_state, buffer)
    payload = buffer.getvalue()
    response = _FakeResponse(payload, truncate_at=len(payload) // 2 if truncated else None)
    monkeypatch.setattr(torch.hub, "download_url_to_file", REAL_DOWNLOAD)
    monkeypatch.setattr(torch.hub, "urlopen", lambda request, *args, **kwargs: response)
    with pytest.raises(DmlrsError) as error:
        build_model("resnet18", DIM, weights="imagenet")
    message = str(error.value)
    path = imagenet_weights_path("resnet18")
    assert "downloading" in message and "failed" in message
    assert ("IncompleteRead" if truncated else "invalid hash value") in message
    assert str(path) in message and RESNET18_URL in message and "--weights none" in message
    assert list(path.parent.iterdir()) == []  # no partial or unchecked file left behind


def test_imagenet_loads_from_cache_without_network(empty_torch_home, torchvision_resnet18_state):
    path = imagenet_weights_path("resnet18")
    assert path.name == RESNET18_FILE
    path.parent.mkdir(parents=True)
    torch.save(torchvision_resnet18_state, path)
    model = build_model("resnet18", DIM, weights="imagenet")  # no_network fails on any download
    _assert_backbone_holds(model, torchvision_resnet18_state)


@pytest.mark.parametrize("content", ["garbage", "truncated", "pickled-module"])
def test_imagenet_corrupt_cache_file_is_named(empty_torch_home, torchvision_resnet18_state,
                                               content):
    path = imagenet_weights_path("resnet18")
    path.parent.mkdir(parents=True)
    if content == "garbage":
        path.write_bytes(b"\x00not a torch file\xff" * 10)
    elif content == "truncated":
        buffer = io.BytesIO()
        torch.save(torchvision_resnet18_state, buffer)
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    else:  # loads only without weights_only=True (torch.hub's own default is False)
        torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(DmlrsError) as error:
        build_model("resnet18", DIM, weights="imagenet")
    message = str(error.value)
    assert f"cannot read the cached ImageNet weights for resnet18 at {path}" in message
    assert "weights_only=True" in message and "Delete it" in message and RESNET18_URL in message
    assert "--weights none" in message
    assert path.exists()  # dmlrs does not delete the user's file itself


@pytest.mark.parametrize("name, file_name", [("resnet50", "resnet50-0676ba61.pth"),
                                             ("vgg16", "vgg16-397923af.pth")])
def test_imagenet_cache_file_names(empty_torch_home, name, file_name):
    assert imagenet_weights_path(name) == empty_torch_home / "hub" / "checkpoints" / file_name


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
