"""The papers' transforms: output shapes, ImageNet normalisation, eval determinism, augmentation."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from dmlrs.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms
from dmlrs.errors import DmlrsError


def _image(w=40, h=30, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), mode="RGB")


@pytest.mark.parametrize("size", [16, 33])
def test_shapes_and_dtype(size):
    train_tf, eval_tf = build_transforms(size)
    for tf in (train_tf, eval_tf):
        out = tf(_image())
        assert out.shape == (3, size, size) and out.dtype == torch.float32


def test_eval_is_resize_then_imagenet_normalisation():
    _, eval_tf = build_transforms(20)
    image = _image()
    out = eval_tf(image)
    resized = np.asarray(image.resize((20, 20), Image.BILINEAR), dtype=np.float64) / 255.0  # (H, W, 3)
    expected = (resized - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(out.permute(1, 2, 0).double().numpy(), expected, atol=0.02)
    assert torch.equal(out, eval_tf(image))


def test_train_pipeline_has_the_papers_steps_and_randomises():
    train_tf, _ = build_transforms(24)
    kinds = [type(t) for t in train_tf.transforms]
    assert kinds == [T.Resize, T.RandomGrayscale, T.ColorJitter, T.RandomHorizontalFlip, T.ToTensor, T.Normalize]
    grey, jitter = train_tf.transforms[1], train_tf.transforms[2]
    assert grey.p == 0.2
    assert jitter.brightness == (0.6, 1.4) and jitter.contrast == (0.6, 1.4)
    assert jitter.saturation == (0.6, 1.4) and jitter.hue == (-0.4, 0.4)
    torch.manual_seed(0)
    outs = [train_tf(_image()) for _ in range(4)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


@pytest.mark.parametrize("bad", [0, 4, 32.0, "64", True])
def test_bad_size_is_a_user_error(bad):
    with pytest.raises(DmlrsError, match="--img-size"):
        build_transforms(bad)
