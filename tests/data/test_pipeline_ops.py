"""The cached pipeline's batched augmentation against the PIL reference, op by op and end to end.

Tolerance everywhere: **zero**. Every op (grayscale, brightness, contrast, saturation, hue, flip,
``ToTensor`` + ``Normalize``) gives bit-identical values to torchvision's PIL path on the same
uint8 pixels; hue is checked on all 2**24 colours. The parameter sampler is checked both ways:
bit-identical to torchvision's draws under the same seed, and statistically (means, variances,
frequencies, permutations, independence across the images of a batch) against torchvision's own
``get_params``, with bounds from the sample size.
"""
from __future__ import annotations

import math
from collections import Counter
from itertools import permutations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as F
from PIL import Image
from torchvision import transforms as T

from dmlrs.data import gpu_augment as G
from dmlrs.data.transforms import build_transforms
from dmlrs.engine.loaders import SeededBatches, SeededDataset
from dmlrs.engine.seeding import TRAIN_STREAM, isolated_rng


# ----------------------------------------------------------------------------- images
def _images(size: int = 24, seed: int = 0) -> list[Image.Image]:
    """Edge cases and random pictures: noise, grey, saturated primaries, black, white, a constant
    colour, two-level images (PIL's contrast mean rounding), a smooth gradient."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    grey = np.repeat(rng.integers(0, 256, size=(size, size, 1), dtype=np.uint8), 3, axis=2)
    primaries = (rng.integers(0, 2, size=(size, size, 3)) * 255).astype(np.uint8)
    gradient = np.stack([*np.meshgrid(np.linspace(0, 255, size), np.linspace(255, 0, size)),
                         np.full((size, size), 128.0)], -1).astype(np.uint8)
    two_level = np.where(rng.random((size, size, 1)) < 0.5, 10, 245).repeat(3, axis=2).astype(np.uint8)
    two_level[..., 1] = 127
    arrays = [noise, grey, primaries, gradient, two_level, np.zeros_like(noise), np.full_like(noise, 255),
              np.broadcast_to(np.array([200, 30, 90], dtype=np.uint8), noise.shape).copy()]
    return [Image.fromarray(a, "RGB") for a in arrays]


def _tensor(image: Image.Image) -> torch.Tensor:
    """uint8 PIL image -> float (3, H, W) with the integer values (the ops' working form)."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float()


def _batch(images) -> torch.Tensor:
    return torch.stack([_tensor(image) for image in images])


def _f32(value: float) -> float:
    """The factor as torchvision draws it (a float32 value)."""
    return float(torch.tensor(value, dtype=torch.float32))


FACTORS = [0.6, 0.6000001, 0.75, 0.999, 1.0, 1.0001, 1.2345, 1.399999, 1.4]
HUES = [-0.4, -0.39999, -0.25, -0.1, -0.0039, 0.0, 0.002, 0.0039216, 0.1, 0.1234, 0.25, 0.33, 0.4]


# ----------------------------------------------------------------------------- (a) each op
@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation"])
@pytest.mark.parametrize("clip", [True, False])
def test_blend_ops_equal_pil_exactly(name, clip):
    op = {"brightness": G.adjust_brightness_, "contrast": G.adjust_contrast_, "saturation": G.adjust_saturation_}[name]
    reference = {"brightness": F.adjust_brightness, "contrast": F.adjust_contrast,
                 "saturation": F.adjust_saturation}[name]
    images = _images()
    workspace = G.Workspace()
    for factor in FACTORS:
        if not clip and factor > 1:
            continue  # clip=False is only ever used when no factor exceeds 1
        factor = _f32(factor)
        expected = _batch([reference(image, factor) for image in images])
        for ws in (None, workspace):
            got = op(_batch(images), torch.full((len(images),), factor), clip=clip, ws=ws)
            assert torch.equal(got, expected), (name, factor, (got - expected).abs().max())


def test_per_image_factors_in_one_call():
    images = _images()
    factors = torch.linspace(0.6, 1.4, len(images))
    for op, reference in ((G.adjust_brightness_, F.adjust_brightness), (G.adjust_contrast_, F.adjust_contrast),
                          (G.adjust_saturation_, F.adjust_saturation), (G.adjust_hue_, F.adjust_hue)):
        values = factors if op is not G.adjust_hue_ else factors - 1.0
        expected = _batch([reference(image, float(v)) for image, v in zip(images, values)])
        assert torch.equal(op(_batch(images), values), expected), op.__name__


def test_grayscale_flip_and_normalisation_equal_pil_exactly():
    images = _images()
    assert torch.equal(G.grayscale_(_batch(images)), _batch([F.rgb_to_grayscale(i, 3) for i in images]))
    assert torch.equal(G.grayscale_(_batch(images), ws=G.Workspace()),
                       _batch([F.rgb_to_grayscale(i, 3) for i in images]))
    assert torch.equal(_batch(images).flip(-1), _batch([F.hflip(i) for i in images]))
    _, evaluation = build_transforms(24)
    u8 = _batch(images).to(torch.uint8)
    assert torch.equal(G.eval_images(u8), torch.stack([evaluation(i) for i in images]))  # Resize is a no-op at 24 px
    assert torch.equal(G.normalize_(_batch(images)), torch.stack([evaluation(i) for i in images]))


@pytest.mark.parametrize("hue", HUES)
def test_hue_equals_pil_exactly(hue):
    hue = _f32(hue)
    images = _images()
    expected = _batch([F.adjust_hue(image, hue) for image in images])
    assert torch.equal(G.adjust_hue_(_batch(images), torch.full((len(images),), hue)), expected)
    assert torch.equal(G.adjust_hue_(_batch(images), torch.full((len(images),), hue), ws=G.Workspace()), expected)


def _all_colours() -> Image.Image:
    levels = np.arange(256, dtype=np.uint8)
    r, g, b = np.meshgrid(levels, levels, levels, indexing="ij")
    return Image.fromarray(np.stack([r, g, b], -1).reshape(4096, 4096, 3), "RGB")


@pytest.mark.parametrize("hue", [0.4, -0.2])
def test_hue_equals_pil_on_every_colour(hue):
    """All 2**24 colours: PIL's HSV quantisation (its rounding of exact multiples of 1/255 included),
    the modulo-256 wrap of the shift and the float32 factor tables reproduce PIL exactly."""
    hue = _f32(hue)
    image = _all_colours()
    expected = torch.from_numpy(np.array(F.adjust_hue(image, hue))).permute(2, 0, 1).float()
    got = G.adjust_hue_(_tensor(image)[None], torch.tensor([hue]))[0]
    assert torch.equal(got, expected), int((got != expected).sum())


def test_hue_equals_pil_for_every_shift_step():
    """The op depends on the factor only through PIL's uint8 step int(255 h) mod 256: every step
    that U[-0.4, 0.4] can give, on random colours."""
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8), "RGB")
    steps = range(-102, 103)
    factors = [_f32((step + 0.5 * (1 if step >= 0 else -1)) / 255.0) for step in steps]
    factors = [f for f in factors if -0.4 <= f <= 0.4]
    assert len(factors) >= 200
    expected = _batch([F.adjust_hue(image, f) for f in factors])
    got = G.adjust_hue_(_batch([image] * len(factors)), torch.tensor(factors))
    assert torch.equal(got, expected)
    assert sorted(set(G.hue_shift_steps(torch.tensor(factors)).tolist())) == sorted(
        {int(np.int32(f * 255).astype(np.uint8)) for f in factors})


# ----------------------------------------------------------------------------- the whole pipeline
def _reference_and_params(images, seeds, size):
    """The PIL reference train transform of each image under its seed, and our draws under it."""
    train, _ = build_transforms(size)
    draw = G.AugmentParams(train)
    refs, params = [], []
    for image, seed in zip(images, seeds):
        with isolated_rng(seed):
            refs.append(train(image))
        with isolated_rng(seed):
            params.append(draw.draw())
    return torch.stack(refs), torch.stack(params)


@pytest.mark.parametrize("schedule", ["order", "slot"])
@pytest.mark.parametrize("chunk", [1, 3, 4])
def test_augment_batch_equals_the_pil_train_transform_bit_for_bit(schedule, chunk):
    """Same seed -> same parameters -> the same float tensor as Resize + RandomGrayscale +
    ColorJitter + RandomHorizontalFlip + ToTensor + Normalize on PIL (the cache holds the resized
    pixels, here the images are already at the size)."""
    images = _images(size=20) * 6  # 48 images: several of each op order, grey and flipped ones
    reference, params = _reference_and_params(images, range(500, 548), 20)
    u8 = _batch(images).to(torch.uint8)
    plan = G.AugmentPlan(params, chunk=chunk)
    assert torch.equal(G.augment_batch(u8, plan, schedule=schedule), reference)
    assert params[:, G.GRAY].sum() > 0 and params[:, G.FLIP].sum() > 0


@pytest.mark.parametrize("schedule", ["order", "slot"])
def test_batches_of_one_kind_and_empty_batches(schedule):
    images = _images(size=12)
    _, params = _reference_and_params(images, range(len(images)), 12)
    u8 = _batch(images).to(torch.uint8)
    for column, value in ((G.GRAY, 1.0), (G.GRAY, 0.0), (G.FLIP, 1.0)):
        forced = params.clone()
        forced[:, column] = value
        forced[:, G.ORDER:] = torch.tensor([3.0, 2.0, 1.0, 0.0])  # one order for all
        train, _ = build_transforms(12)
        expected = []
        for image, row in zip(images, forced):
            out = F.rgb_to_grayscale(image, 3) if row[G.GRAY] else image
            for op in row[G.ORDER:].long().tolist():
                out = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)[op](
                    out, float(row[(G.BRIGHTNESS, G.CONTRAST, G.SATURATION, G.HUE)[op]]))
            out = F.hflip(out) if row[G.FLIP] else out
            expected.append(train.transforms[-1](F.to_tensor(out)))
        assert torch.equal(G.augment_batch(u8, forced, schedule=schedule), torch.stack(expected)), (column, value)
    empty = G.augment_batch(u8[:0], params[:0], schedule=schedule)
    assert empty.shape == (0, 3, 12, 12)


def test_plans_refuse_bad_parameters_and_shapes():
    with pytest.raises(ValueError, match="parameters"):
        G.AugmentPlan(torch.zeros(3, 4))
    bad = torch.zeros(1, G.PARAM_COUNT)
    bad[0, G.ORDER:] = torch.tensor([0.0, 0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="permutation"):
        G.AugmentPlan(bad)
    with pytest.raises(ValueError, match="uint8"):
        G.augment_batch(torch.zeros(1, 3, 4, 4), torch.tensor([[0, 0, 1, 1, 1, 0, 0, 1, 2, 3.0]]))
    with pytest.raises(ValueError, match="rows"):
        G.augment_batch(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([[0, 0, 1, 1, 1, 0, 0, 1, 2, 3.0]]))


def test_finish_images_dispatches_on_dtype_and_parameters():
    images = _images(size=16)
    u8 = _batch(images).to(torch.uint8)
    floats = torch.randn(2, 3, 16, 16)
    assert G.finish_images(floats, "cpu") is floats or torch.equal(G.finish_images(floats, "cpu"), floats)
    assert torch.equal(G.finish_images(u8, "cpu"), G.eval_images(u8))
    _, params = _reference_and_params(images, range(len(images)), 16)
    assert torch.equal(G.finish_images(u8, "cpu", params), G.augment_batch(u8, params))
    batch = G.attach_params({"image": u8, "augment": params, "label": torch.arange(len(images))})
    assert isinstance(getattr(batch["image"], G.PARAMS_ATTRIBUTE), G.AugmentPlan)
    taken = batch["image"]  # the image tensor alone still carries its plan (the unlabelled stream)
    assert torch.equal(G.finish_images(taken, "cpu"), G.augment_batch(u8, params))
    finished = G.finish_batch({**batch, "unlabelled": taken}, "cpu")
    assert "augment" not in finished and torch.equal(finished["image"], finished["unlabelled"])
    assert torch.equal(finished["label"], batch["label"])


def test_finishing_a_planned_batch_reads_no_tensor_value():
    """The plan is made where the batch is loaded; finishing it (inside the training step) reads no
    value back from a tensor, so on a GPU it costs no host-device sync."""
    from torch.overrides import TorchFunctionMode

    reads = {"tolist", "item", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu", "nonzero",
             "masked_select", "unique", "equal", "allclose", "__array__"}

    class Reads(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", str(func))
            if name in reads:
                self.seen.append(name)
            return func(*args, **(kwargs or {}))

    images = _images(size=16)
    _, params = _reference_and_params(images, range(len(images)), 16)
    batch = G.attach_params({"image": _batch(images).to(torch.uint8), "augment": params})
    G._hue_tables(torch.device("cpu"))  # built once per process (not per batch)
    for schedule in ("order", "slot"):
        with Reads() as mode:
            G.augment_batch(batch["image"], getattr(batch["image"], G.PARAMS_ATTRIBUTE), schedule=schedule)
        assert mode.seen == [], (schedule, mode.seen)


# ----------------------------------------------------------------------------- (b) parameters
def test_draws_are_torchvisions_own_under_the_same_seed():
    """RandomGrayscale, ColorJitter.get_params and RandomHorizontalFlip consume the torch RNG in
    this order; our draw makes the same calls, so each seed gives the reference's parameters."""
    train, _ = build_transforms(16)
    draw = G.AugmentParams(train)
    jitter = train.transforms[2]
    for seed in range(200):
        with isolated_rng(seed):
            gray = bool(torch.rand(1) < 0.2)
            order, b, c, s, h = T.ColorJitter.get_params(jitter.brightness, jitter.contrast, jitter.saturation,
                                                        jitter.hue)
            flip = bool(torch.rand(1) < 0.5)
        with isolated_rng(seed):
            row = draw.draw()
        assert row.tolist() == [float(gray), float(flip), b, c, s, h, *map(float, order.tolist())]
    assert draw.grayscale_p == 0.2 and draw.flip_p == 0.5
    assert draw.ranges == ([0.6, 1.4], [0.6, 1.4], [0.6, 1.4], [-0.4, 0.4])


def _loader_draws(n: int, batch: int = 64, seed: int = 11) -> torch.Tensor:
    """Parameters of ``n`` images as the training loader draws them: one per-draw seed each."""
    class Blank(torch.utils.data.Dataset):
        transform = G.AugmentParams()

        def __len__(self):
            return n

        def __getitem__(self, i):
            return self.transform(torch.zeros(1))["augment"]

    data = SeededDataset(Blank())
    rows = [data[key] for keys in SeededBatches([list(range(s, min(s + batch, n))) for s in range(0, n, batch)],
                                                seed, TRAIN_STREAM) for key in keys]
    return torch.stack(rows)


def test_parameter_distributions_match_torchvisions_sampler():
    """Means, variances and frequencies of the loader's draws agree with torchvision's own
    ``get_params`` draws (an independent stream) within 5 standard errors of the difference."""
    n = 6000
    ours = _loader_draws(n)
    torch.manual_seed(12345)
    theirs = []
    for _ in range(n):
        gray = float(torch.rand(1) < 0.2)
        order, b, c, s, h = T.ColorJitter.get_params([0.6, 1.4], [0.6, 1.4], [0.6, 1.4], [-0.4, 0.4])
        flip = float(torch.rand(1) < 0.5)
        theirs.append([gray, flip, b, c, s, h, *order.tolist()])
    theirs = torch.tensor(theirs, dtype=torch.float64)
    ours = ours.double()
    for column, (low, high) in ((G.BRIGHTNESS, (0.6, 1.4)), (G.CONTRAST, (0.6, 1.4)), (G.SATURATION, (0.6, 1.4)),
                                (G.HUE, (-0.4, 0.4))):
        a, b = ours[:, column], theirs[:, column]
        assert low <= a.min() and a.max() <= high
        mean_se = math.sqrt((a.var() + b.var()) / n)
        assert abs(a.mean() - b.mean()) < 5 * mean_se, column
        assert abs(a.mean() - (low + high) / 2) < 5 * math.sqrt((high - low) ** 2 / 12 / n), column
        var_se = (high - low) ** 2 * math.sqrt(2 * (1 / 180) / n)  # sd of a sample variance of U(low, high)
        assert abs(a.var() - (high - low) ** 2 / 12) < 5 * var_se, column
    for column, p in ((G.GRAY, 0.2), (G.FLIP, 0.5)):
        se = math.sqrt(p * (1 - p) / n)
        assert abs(ours[:, column].mean() - p) < 5 * se and abs(theirs[:, column].mean() - p) < 5 * se, column
    # the op order: a uniform permutation of 4 (24 outcomes), chi-square with 23 degrees of freedom
    counts = Counter(tuple(int(v) for v in row[G.ORDER:]) for row in ours)
    assert set(counts) == set(permutations(range(4)))
    expected = n / 24
    chi2 = sum((counts[p] - expected) ** 2 / expected for p in permutations(range(4)))
    assert chi2 < 60, chi2  # P(chi2_23 > 60) ~ 4e-5


def test_parameters_are_independent_across_the_images_of_a_batch():
    """Neighbours in a batch: correlations of the factors ~ 0 (|r| < 5 / sqrt(n)), joint
    frequencies of the flags = products of the marginals, and not one repeated draw."""
    n = 6000
    ours = _loader_draws(n).double()
    first, second = ours[0::2], ours[1::2]
    pairs = len(first)
    for column in (G.BRIGHTNESS, G.CONTRAST, G.SATURATION, G.HUE, G.GRAY, G.FLIP, G.ORDER):
        r = torch.corrcoef(torch.stack([first[:, column], second[:, column]]))[0, 1]
        assert abs(r) < 5 / math.sqrt(pairs), (column, float(r))
    both_grey = float(((first[:, G.GRAY] > 0) & (second[:, G.GRAY] > 0)).double().mean())
    assert abs(both_grey - 0.04) < 5 * math.sqrt(0.04 * 0.96 / pairs)
    assert len({tuple(row.tolist()) for row in ours}) == n


# ----------------------------------------------------------------------------- (c) distributions
def test_output_distribution_matches_the_pil_pipeline_on_one_image():
    """Many augmentations of one image, cached path vs PIL path with DIFFERENT seeds: per-channel
    mean and std of the outputs, and the pixel-wise mean image, agree within sampling error. (With
    the same seeds the outputs are identical: tested above.)"""
    n, size = 1500, 16
    image = _images(size=size)[3]  # the gradient: every channel varies
    train, _ = build_transforms(size)
    with isolated_rng(7):
        pil = torch.stack([train(image) for _ in range(n)]).double()
    draw = G.AugmentParams(train)
    with isolated_rng(8):
        params = torch.stack([draw.draw() for _ in range(n)])
    ours = G.augment_batch(_batch([image] * n).to(torch.uint8), params).double()
    for stat in (lambda t: t.mean(dim=(2, 3)), lambda t: t.std(dim=(2, 3))):
        a, b = stat(ours), stat(pil)  # (n, 3) per-image channel statistics
        se = torch.sqrt((a.var(0) + b.var(0)) / n)
        assert bool((torch.abs(a.mean(0) - b.mean(0)) < 5 * se).all()), (a.mean(0), b.mean(0), se)
    se = torch.sqrt((ours.var(0) + pil.var(0)) / n)  # pixel-wise (3, H, W); pixels are correlated
    z = torch.abs(ours.mean(0) - pil.mean(0)) / se.clamp(min=1e-12)  # (one draw moves them all), so
    assert float(z.max()) < 5.5, float(z.max())  # only the largest of 768 z-scores is bounded
