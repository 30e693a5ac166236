"""The papers' colour augmentation as batched tensor ops on the training device, with PIL's semantics.

The reference (``--input-pipeline pil``, :func:`dmlrs.data.transforms.build_transforms`) runs per
image in the loader processes::

    Resize((s, s)) -> RandomGrayscale(0.2) -> ColorJitter(0.4, 0.4, 0.4, 0.4) -> RandomHorizontalFlip()
    -> ToTensor() -> Normalize(ImageNet)

The cached pipeline (``--input-pipeline cached``) splits it in two:

1. **In the dataset** (``__getitem__``, under the per-draw seed of ``dmlrs.engine.loaders``):
   the cached, already resized uint8 image ``(3, s, s)`` plus its augmentation *parameters*,
   drawn by :class:`AugmentParams` with exactly the torch calls of torchvision's transforms,
   in their order: ``torch.rand(1) < 0.2`` (grayscale), ``ColorJitter.get_params`` (a uniform
   permutation of the four colour ops, then brightness, contrast and saturation factors
   ~ U[0.6, 1.4] and a hue factor ~ U[-0.4, 0.4]), ``torch.rand(1) < 0.5`` (flip). Every image
   of a batch has its own independent draw, and the same seed draws the same parameters as the
   reference pipeline would for that image.
2. **On the device** (:func:`finish_images`, called by the engine after moving a batch): the
   ops are applied to the whole uint8 batch, each image with its own parameters and op order.

Semantics (PIL's, as torchvision's PIL path applies them; values are kept as integer-valued
floats in 0..255, exactly as PIL keeps uint8, then ``/255`` and normalised like ``ToTensor`` +
``Normalize``):

- luminance ``L = (19595 R + 38470 G + 7471 B + 2**15) >> 16`` (PIL's ``convert("L")``; exact
  in float32: every intermediate is a multiple of 2**-16 below 256);
- grayscale: every channel := ``L``;
- brightness ``f``: ``floor(f * x)`` clipped to 255 (``ImageEnhance.Brightness``: a blend with black);
- contrast ``f``: ``m + f * (x - m)`` truncated and clipped to [0, 255] with ``m = int(mean(L) + 0.5)``
  (``ImageEnhance.Contrast``: a blend with a grey image at the rounded mean luminance);
- saturation ``f``: ``L + f * (x - L)`` truncated and clipped (``ImageEnhance.Color``: a blend
  with the luminance image);
- every blend is computed as PIL's ``ImagingBlend`` does, ``in1 + alpha * (in2 - in1)`` in float32
  then truncated and clipped (the clamp is skipped where no factor exceeds 1: provably in range);
- hue ``h``: PIL converts to HSV with uint8 H and S, adds ``int(255 h)`` to H modulo 256 and
  converts back (rounding). Here a direct sector computation, no rgb -> hsv -> rgb: a hue shift
  keeps max ``v`` and min of (r, g, b) and only moves where the middle value sits, so each output
  channel is ``round(v * F)`` with ``F`` = 1 (the channel holding the max in the shifted sector),
  PIL's ``1 - S/255`` (the min) or PIL's ``q``/``t`` factor (the middle one), read from small
  tables indexed by PIL's own uint8 H (a table over (hue numerator, chroma), filled by PIL, so
  even PIL's float rounding of exact multiples of 1/255 is reproduced) and S
  (``floor(255 chroma / v)``, exact in float32). Bit-identical to PIL on all 2**24 colours
  (``tests/data/test_pipeline_ops.py``); only arithmetic and int32 gathers, as ``where``,
  comparisons and ``remainder`` are several times slower on a CPU;
- flip commutes with every other op (they are per pixel, or use the image mean), so it is done
  first, on the uint8 pixels; saturation and hue leave a grey image unchanged, so grey images
  skip them.

So, with the same parameters, :func:`augment_batch` returns **bit-identical** tensors to the PIL
reference pipeline on the same resized pixels, and since the parameters are drawn with
torchvision's own calls from the same per-draw seeds, a run with ``--input-pipeline cached``
gives the same metrics as one with ``pil`` (``tests/data/test_pipeline_e2e.py``).

Work plan (:class:`AugmentPlan`): the parameters arrive on the CPU with the batch, so everything
data-dependent (which images share an op order, which are grey or flipped, whether a clamp is
needed) is decided on the CPU where the batch is loaded, and finishing it reads no value back:
no host-device sync. On a CPU device the images are processed in small groups that share one op
order (:data:`CPU_CHUNK` images, reusing one :class:`Workspace`: the working set stays in cache
and no large temporary is allocated); on an accelerator, slot by slot over the whole batch, each
op applied to the images that have it in that slot (a few hundred kernels per batch, no sync).
Where the training device is the CPU, the loader workers run it (``dmlrs.engine.loaders``).
"""
from __future__ import annotations

from typing import Sequence

import torch

from dmlrs.data.transforms import IMAGENET_MEAN, IMAGENET_STD

#: columns of a parameter row (float32 tensor of PARAM_COUNT values per image)
GRAY, FLIP, BRIGHTNESS, CONTRAST, SATURATION, HUE, ORDER = 0, 1, 2, 3, 4, 5, 6
PARAM_COUNT = ORDER + 4
#: colour op ids in the order columns (torchvision's ``fn_idx`` numbering)
OP_BRIGHTNESS, OP_CONTRAST, OP_SATURATION, OP_HUE = 0, 1, 2, 3
OP_NAMES = ("brightness", "contrast", "saturation", "hue")
#: ops that leave a grey image (r = g = b) unchanged, exactly: saturation (L of a grey pixel is its
#: value, so the blend is the identity) and hue (chroma 0: PIL gives back v, v, v)
_IDENTITY_ON_GREY = (OP_SATURATION, OP_HUE)
#: images processed together on a CPU device (a 256 px float chunk of 4 is 3 MB: cache-resident)
CPU_CHUNK = 4
#: the key of a batch entry holding the parameters of ``batch["image"]``
PARAMS_KEY = "augment"
#: attribute under which the loader attaches a batch's parameters to its image tensor (so that an
#: image tensor taken out of its batch, e.g. the unlabelled stream's, keeps them)
PARAMS_ATTRIBUTE = "dmlrs_augment"

_L_WEIGHTS = (19595.0, 38470.0, 7471.0)  # PIL's ITU-R 601-2 luma in 16-bit fixed point
_L_SCALED = tuple(w / 65536.0 for w in _L_WEIGHTS)  # exact (powers of two)


class AugmentParams:
    """The cached pipeline's training "transform": ``image -> {"image": image, "augment": params}``.

    ``params`` is a float32 tensor of :data:`PARAM_COUNT` values (columns ``GRAY`` ... ``ORDER``),
    drawn from the torch RNG exactly as ``RandomGrayscale(p)``, ``ColorJitter`` and
    ``RandomHorizontalFlip(p)`` of the reference ``train`` transform draw theirs (same calls,
    same order), so a seeded draw gives the reference pipeline's parameters. Picklable.
    """

    def __init__(self, reference=None, *, grayscale_p: float = 0.2, brightness=(0.6, 1.4),
                 contrast=(0.6, 1.4), saturation=(0.6, 1.4), hue=(-0.4, 0.4), flip_p: float = 0.5):
        if reference is not None:  # the reference Compose: take its own settings
            from torchvision import transforms as T

            kinds = {type(t): t for t in reference.transforms}
            grayscale_p = kinds[T.RandomGrayscale].p
            jitter = kinds[T.ColorJitter]
            brightness, contrast, saturation, hue = jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue
            flip_p = kinds[T.RandomHorizontalFlip].p
        self.grayscale_p, self.flip_p = float(grayscale_p), float(flip_p)
        self.ranges = tuple(None if r is None else [float(r[0]), float(r[1])]
                            for r in (brightness, contrast, saturation, hue))
        if any(r is None for r in self.ranges):
            raise ValueError("AugmentParams needs all four ColorJitter ranges")

    def draw(self) -> torch.Tensor:
        """One image's parameters from the current torch RNG (torchvision's calls, in order)."""
        from torchvision.transforms import ColorJitter

        gray = bool(torch.rand(1) < self.grayscale_p)  # RandomGrayscale.forward
        order, b, c, s, h = ColorJitter.get_params(*self.ranges)  # ColorJitter.forward
        flip = bool(torch.rand(1) < self.flip_p)  # RandomHorizontalFlip.forward
        return torch.tensor([gray, flip, b, c, s, h, *order.tolist()], dtype=torch.float32)

    def __call__(self, image: torch.Tensor) -> dict:
        return {"image": image, PARAMS_KEY: self.draw()}

    def __repr__(self) -> str:
        return (f"AugmentParams(grayscale_p={self.grayscale_p}, ranges={self.ranges}, flip_p={self.flip_p})")


# --------------------------------------------------------------------------- single ops
# Each op works in place on ``x``: (n, 3, H, W) float32 holding integers in 0..255, with one
# factor per image (``f``: (n,) float32 tensor on x's device). ``ws``: an optional
# :class:`Workspace` whose buffers replace the temporaries (on a CPU every fresh large tensor
# costs page faults; the CPU schedule reuses one workspace).

class Workspace:
    """Reusable scratch planes ``(n, 1, H, W)`` (float32 or int32) for the ops, per shape."""

    def __init__(self):
        self._buffers: dict = {}

    def image(self, shape, n: int, device) -> torch.Tensor:
        """A reusable (n, *shape) float32 buffer (the chunk being augmented)."""
        key = ("image", tuple(shape), device)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.shape[0] < n:
            buffer = self._buffers[key] = torch.empty((max(n, CPU_CHUNK), *shape), dtype=torch.float32, device=device)
        return buffer[:n]

    def plane(self, slot: int, like: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        n, _, h, w = like.shape
        key = (slot, h, w, dtype, like.device)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.shape[0] < n:
            buffer = self._buffers[key] = torch.empty((max(n, CPU_CHUNK), 1, h, w), dtype=dtype, device=like.device)
        return buffer[:n]


def _scratch(ws: Workspace | None, slot: int, like: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    if ws is None:
        n, _, h, w = like.shape
        return torch.empty((n, 1, h, w), dtype=dtype, device=like.device)
    return ws.plane(slot, like, dtype)


def _per_image(f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return f.to(device=x.device, dtype=torch.float32).view(-1, 1, 1, 1)


def luminance(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """PIL's ``convert("L")`` of integer-valued RGB: (n, 3, H, W) -> (n, 1, H, W), exact.

    ``(19595 R + 38470 G + 7471 B + 2**15) >> 16`` computed as ``floor(R w_r + G w_g + B w_b + 0.5)``
    with ``w = weight / 2**16``: every product and partial sum is a multiple of 2**-16 below 256,
    exactly representable in float32, so this is the integer formula exactly."""
    red = x[:, 0:1]
    lum = torch.mul(red, _L_SCALED[0], out=out) if out is not None else torch.mul(red, _L_SCALED[0])
    lum.add_(x[:, 1:2], alpha=_L_SCALED[1]).add_(x[:, 2:3], alpha=_L_SCALED[2])
    return lum.add_(0.5).floor_()


def grayscale_(x: torch.Tensor, *, ws: Workspace | None = None) -> torch.Tensor:
    """``F.rgb_to_grayscale(img, 3)`` of PIL: each channel := L."""
    x.copy_(luminance(x, _scratch(ws, 0, x)).expand_as(x))
    return x


def _blend_(x: torch.Tensor, ref, f: torch.Tensor, clip: bool) -> torch.Tensor:
    """PIL's ``Image.blend(ref, x, f)``: ``ref + f * (x - ref)`` in float32, truncated, clipped to
    [0, 255]. ``clip=False`` skips the clamp: exact when no factor exceeds 1 (an interpolation
    between two values in range stays in range)."""
    if ref is None:  # blend with black: 0 + f * (x - 0)
        x.mul_(f)
    else:
        x.sub_(ref).mul_(f).add_(ref)
    x.floor_()
    return x.clamp_(0.0, 255.0) if clip else x


def adjust_brightness_(x: torch.Tensor, f: torch.Tensor, *, clip: bool = True, ws: Workspace | None = None
                       ) -> torch.Tensor:
    """``F.adjust_brightness`` of PIL (``ImageEnhance.Brightness``: a blend with black)."""
    f = _per_image(f, x)
    x.mul_(f).floor_()
    return x.clamp_(max=255.0) if clip else x


def adjust_contrast_(x: torch.Tensor, f: torch.Tensor, *, clip: bool = True, ws: Workspace | None = None
                     ) -> torch.Tensor:
    """``F.adjust_contrast`` of PIL (``ImageEnhance.Contrast``: grey = int(mean(L) + 0.5))."""
    f = _per_image(f, x)
    lum = luminance(x, _scratch(ws, 0, x))
    count = lum.shape[-1] * lum.shape[-2]
    mean = lum.sum(dim=(1, 2, 3), dtype=torch.float64).div_(count).add_(0.5).floor_()  # exact, as ImageStat
    return _blend_(x, mean.to(torch.float32).view(-1, 1, 1, 1), f, clip)


def adjust_saturation_(x: torch.Tensor, f: torch.Tensor, *, clip: bool = True, ws: Workspace | None = None
                       ) -> torch.Tensor:
    """``F.adjust_saturation`` of PIL (``ImageEnhance.Color``: a blend with the L image)."""
    f = _per_image(f, x)
    return _blend_(x, luminance(x, _scratch(ws, 0, x)), f, clip)


def hue_shift_steps(hue_factor: torch.Tensor) -> torch.Tensor:
    """PIL's uint8 H shift of torchvision: ``np.int32(h * 255).astype(np.uint8)`` (float64 math)."""
    return torch.remainder(torch.trunc(hue_factor.to(torch.float64) * 255.0), 256.0).to(torch.float32)


def _pil_hue_tables() -> tuple[torch.Tensor, torch.Tensor]:
    """Exact tables of PIL's RGB <-> HSV round trip (``libImaging/Convert.c``), built once.

    * ``H[n + 1532 C]`` (float32): 256 x PIL's uint8 H of a colour with chroma ``C = max - min``
      and hue numerator ``n`` (``h6 = n / C``: ``g - b`` | ``2C + b - r`` | ``4C + r - g`` when r |
      g | b is the max, PIL's precedence; ``-C <= n <= 5C`` so ``n + 1532 C`` is unique). PIL's
      float/double arithmetic depends on (n, C) only and rounds some exact multiples of 1/255
      down; the table is filled by PIL itself, from the colours whose min is 0 (every (n, C)
      occurs among them).
    * ``F[c, H * 256 + S]`` (float32, H in 0..511: rows 256..511 repeat 0..255, so a shifted H
      needs no modulo): channel ``c``'s output is ``round(v * F)``, with ``F`` 1 for
      the channel that holds the max in H's sector, ``1 - fs`` (PIL's ``p``) for the one that holds
      the min, and PIL's ``q`` factor ``1 - fs * f`` (odd sectors) or ``t`` factor
      ``1 - fs * (1 - f)`` (even) for the middle one; ``i``, ``f``, ``fs`` computed as PIL does
      (float/double). ``floor(v * F + 0.5)`` in float32 equals PIL's double ``round`` for every
      v, H, S (checked exhaustively by the tests).
    """
    import numpy as np
    from PIL import Image

    levels = np.arange(256)
    a, b = np.meshgrid(levels, levels, indexing="ij")
    zero = np.zeros_like(a)
    rgb = np.concatenate([np.stack(p, -1).reshape(-1, 3) for p in
                          ((a, b, zero), (a, zero, b), (zero, a, b))]).astype(np.int64)
    pil_h = np.asarray(Image.fromarray(rgb.astype(np.uint8).reshape(1, -1, 3)).convert("HSV"))[0, :, 0]
    r, g, bl = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    v = rgb.max(1)
    chroma = v - rgb.min(1)
    n = np.where(r == v, g - bl, np.where(g == v, 2 * chroma + bl - r, 4 * chroma + r - g))
    keep = chroma > 0
    h_table = np.zeros(1537 * 255 + 1, dtype=np.float32)
    h_table[(n + 1532 * chroma)[keep]] = 256.0 * pil_h[keep]

    h8 = levels.astype(np.float64)[:, None]  # uint8 H (rows) x uint8 S (columns)
    s8 = levels.astype(np.float64)[None, :]
    position = h8 * 6.0 / 255.0
    sector = np.floor(position)  # 0..6; 6 acts as 0
    f = (position - sector).astype(np.float32)
    fs = (s8 / 255.0).astype(np.float32)
    q_factor = 1.0 - (fs * f).astype(np.float64)  # float * float in C: a float product
    t_factor = 1.0 - fs.astype(np.float64) * (1.0 - f.astype(np.float64))
    p_factor = np.broadcast_to(1.0 - fs.astype(np.float64), (256, 256))
    sector = sector.astype(np.int64) % 6 + np.zeros((256, 256), dtype=np.int64)
    middle = np.where(sector % 2 == 1, q_factor, t_factor)
    top = ((sector + 1) % 6) // 2  # channel holding v: R for sectors 5, 0; G for 1, 2; B for 3, 4
    bottom = ((sector + 4) % 6) // 2  # channel holding p: R for 2, 3; G for 4, 5; B for 0, 1
    factors = np.stack([np.where(top == c, 1.0, np.where(bottom == c, p_factor, middle)) for c in range(3)])
    factors = np.concatenate([factors, factors], axis=1)  # H + shift in 0..510: no modulo 256
    return torch.from_numpy(h_table), torch.from_numpy(factors.reshape(3, -1).astype(np.float32))


_HUE_TABLES: dict = {}


def _hue_tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    key = str(device)
    if key not in _HUE_TABLES:
        if "cpu" not in _HUE_TABLES:
            _HUE_TABLES["cpu"] = _pil_hue_tables()
        _HUE_TABLES[key] = tuple(t.to(device) for t in _HUE_TABLES["cpu"])
    return _HUE_TABLES[key]


def adjust_hue_(x: torch.Tensor, hue_factor: torch.Tensor, *, clip: bool = True, ws: Workspace | None = None
                ) -> torch.Tensor:
    """``F.adjust_hue`` of PIL by a direct sector computation, bit-exact (module doc).

    A hue shift keeps max ``v`` and min of (r, g, b); PIL's HSV round trip then gives each
    channel ``round(v * F)``, ``F`` read off PIL's uint8 H (shifted) and S (:func:`_pil_hue_tables`).
    Only arithmetic and int32 gathers: comparisons, ``where`` and ``remainder`` are several times
    slower on a CPU. (``clip`` is accepted for a uniform signature; the result is always in range.)
    """
    h_table, factor_tables = _hue_tables(x.device)
    steps = _per_image(hue_shift_steps(hue_factor), x).mul(256.0)  # (n, 1, 1, 1): 256 x the uint8 step
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    v = torch.maximum(r, g, out=_scratch(ws, 1, x))
    torch.maximum(v, b, out=v)
    chroma = torch.minimum(r, g, out=_scratch(ws, 2, x))
    torch.sub(v, torch.minimum(chroma, b, out=chroma), out=chroma)
    # hue numerator n (h6 = n / chroma) with PIL's precedence r, g, b: g - b when r is the max,
    # else 2C + b - r when g is, else 4C + r - g. With not_c = min(v - c, 1) (0 where c is the max):
    # n = n_r + not_r (m - n_r), m = n_g + not_g (n_b - n_g)
    not_r = torch.sub(v, r, out=_scratch(ws, 3, x)).clamp_(max=1.0)
    not_g = torch.sub(v, g, out=_scratch(ws, 4, x)).clamp_(max=1.0)
    temp = torch.sub(r, g, out=_scratch(ws, 5, x)).add_(chroma, alpha=4.0)  # n_b
    m = torch.sub(b, r, out=_scratch(ws, 6, x)).add_(chroma, alpha=2.0)  # n_g
    m.addcmul_(temp.sub_(m), not_g)
    n = torch.sub(g, b, out=not_g)  # n_r
    n.addcmul_(m.sub_(n), not_r)
    index = _scratch(ws, 7, x, torch.int32)
    index.copy_(n.add_(chroma, alpha=1532.0))
    h256 = torch.index_select(h_table, 0, index.view(-1), out=m.view(-1)).view(m.shape)  # 256 x PIL's uint8 H
    chroma.mul_(255.0).div_(torch.clamp(v, min=1.0, out=temp)).floor_()  # PIL's uint8 S = trunc(255 C / v), exact
    # row (H + step) (the tables repeat every 256 rows: numpy's uint8 wrap-around), column S
    index.copy_(h256.add_(chroma).add_(steps))
    factor = temp.view(-1)
    for channel in range(3):
        torch.index_select(factor_tables[channel], 0, index.view(-1), out=factor)
        torch.floor(temp.mul_(v).add_(0.5), out=x[:, channel:channel + 1])
    return x


_OPS = (adjust_brightness_, adjust_contrast_, adjust_saturation_, adjust_hue_)
_FACTOR_COLUMN = (BRIGHTNESS, CONTRAST, SATURATION, HUE)


def apply_op_(x: torch.Tensor, op: int, factors: torch.Tensor) -> torch.Tensor:
    """Colour op ``op`` (``OP_*``) with one factor per image, in place."""
    return _OPS[op](x, factors)


# --------------------------------------------------------------------------- normalisation
def _mean_std(device) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.as_tensor(IMAGENET_MEAN, dtype=torch.float32, device=device).view(-1, 1, 1)
    std = torch.as_tensor(IMAGENET_STD, dtype=torch.float32, device=device).view(-1, 1, 1)
    return mean, std


def normalize_(x: torch.Tensor) -> torch.Tensor:
    """``ToTensor`` (``/ 255``) then ``Normalize(ImageNet)`` of integer-valued floats, in place,
    with torchvision's own op sequence (``div(255)``, ``sub_(mean)``, ``div_(std)``): bit-equal."""
    mean, std = _mean_std(x.device)
    return x.div_(255.0).sub_(mean).div_(std)


# --------------------------------------------------------------------------- the batch
class AugmentPlan:
    """What :func:`augment_batch` does to a batch, decided on the CPU from its parameters.

    Made where the batch is loaded (the loaders attach it to the image tensor, see
    :func:`attach_params`), so that finishing the batch on the device reads no value back: no
    host-device sync. Two equivalent schedules:

    * ``chunks`` (CPU device): images sorted by (op order, gray, flip) and cut into chunks of at
      most ``chunk`` images sharing one op order; per chunk ``(start, stop, ops, gray runs, flip
      runs, clip flags)``, runs relative to the chunk, positions into ``order``;
    * ``slots`` (accelerators): per slot and op the images that have that op there, as spans of
      ``slot_index``; ``flip`` / ``gray`` spans of the same tensor.

    ``clip`` flags: whether a blend can leave [0, 255] (a factor above 1); when no factor of a
    group is above 1 the clamp is skipped (the result is provably in range).
    """

    def __init__(self, params: torch.Tensor, chunk: int = None):
        params = params.detach()
        if params.dim() != 2 or params.shape[1] != PARAM_COUNT:
            raise ValueError(f"expected parameters (N, {PARAM_COUNT}), got {tuple(params.shape)}")
        self.params = params.to("cpu", torch.float32).contiguous()
        values = self.params.tolist()
        n = len(values)
        chunk = chunk or CPU_CHUNK
        orders = [tuple(int(v) for v in row[ORDER:]) for row in values]
        gray = [row[GRAY] > 0.5 for row in values]
        flip = [row[FLIP] > 0.5 for row in values]
        for row_order in set(orders):
            if sorted(row_order) != [0, 1, 2, 3]:
                raise ValueError(f"op order {row_order} is not a permutation of 0..3")
        # CPU schedule
        ranked = sorted(range(n), key=lambda i: (orders[i], gray[i], flip[i]))  # grey ones last in a chunk
        self.positions = ranked
        self.order = torch.tensor(ranked, dtype=torch.int64)
        self.chunks = []
        start = 0
        while start < n:
            stop = start + 1
            while stop < n and stop - start < chunk and orders[ranked[stop]] == orders[ranked[start]]:
                stop += 1
            members = ranked[start:stop]
            clip = tuple(max(values[i][_FACTOR_COLUMN[op]] for i in members) > 1.0 for op in range(3)) + (True,)
            self.chunks.append((start, stop, orders[members[0]], _runs([gray[i] for i in members]),
                                _runs([flip[i] for i in members]), clip))
            start = stop
        # accelerator schedule: one index tensor, spans into it
        pieces, self.slots = [], []
        at = 0

        def add(members):
            nonlocal at
            pieces.extend(members)
            at += len(members)
            return at - len(members), at

        self.flip = add([i for i in range(n) if flip[i]])
        self.gray = add([i for i in range(n) if gray[i]])
        for slot in range(4):
            for op in range(4):
                members = [i for i in range(n) if orders[i][slot] == op
                           and not (gray[i] and op in _IDENTITY_ON_GREY)]
                if members:
                    clip = op == OP_HUE or max(values[i][_FACTOR_COLUMN[op]] for i in members) > 1.0
                    self.slots.append((op, *add(members), clip))
        self.slot_index = torch.tensor(pieces, dtype=torch.int64)

    def __len__(self) -> int:
        return self.params.shape[0]

    def pin_memory(self) -> "AugmentPlan":
        """Page-lock the tensors a device copy reads (the loaders do it when pinning batches)."""
        self.params, self.order = self.params.pin_memory(), self.order.pin_memory()
        self.slot_index = self.slot_index.pin_memory()
        return self


def _runs(flags: Sequence[bool]) -> list[tuple[int, int]]:
    """(start, stop) of the runs of True in ``flags``."""
    runs, start = [], None
    for i, flag in enumerate(list(flags) + [False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append((start, i))
            start = None
    return runs


def _batch_shape(images) -> tuple[tuple[int, ...], torch.device]:
    """(N, 3, H, W) and device of a uint8 batch: a tensor, or a list of (3, H, W) tensors (the
    samples of a batch, not stacked: the CPU schedule reads them one by one)."""
    if torch.is_tensor(images):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected a uint8 batch (N, 3, H, W), got {tuple(images.shape)} {images.dtype}")
        return tuple(images.shape), images.device
    if not images:
        raise ValueError("an empty list of images (pass an empty (0, 3, H, W) tensor instead)")
    first = images[0]
    if any(t.dtype != torch.uint8 or t.shape != first.shape or t.shape[0] != 3 for t in images):
        raise ValueError("expected uint8 images (3, H, W) of one size")
    return (len(images), *first.shape), first.device


def _check(shape, plan: AugmentPlan) -> None:
    if len(plan) != shape[0]:
        raise ValueError(f"{len(plan)} parameter rows for {shape[0]} images")


def _apply(x: torch.Tensor, op: int, factors: torch.Tensor, clip: bool, ws: Workspace | None = None) -> None:
    _OPS[op](x, factors, clip=clip, ws=ws)


_WORKSPACES: dict = {}


def _workspace(device: torch.device) -> Workspace:
    """The CPU schedule's workspace of this process (kept: loader workers reuse it every batch)."""
    key = str(device)
    if key not in _WORKSPACES:
        _WORKSPACES[key] = Workspace()
    return _WORKSPACES[key]


def _by_order(images: torch.Tensor, plan: AugmentPlan, out: torch.Tensor) -> None:
    """CPU schedule: chunks of images sharing one op order, each processed start to end while it
    is in cache, then written to its rows of ``out``."""
    ws = _workspace(out.device)
    mean, std = _mean_std(out.device)
    positions = plan.positions
    for start, stop, ops, gray_runs, flip_runs, clip in plan.chunks:
        members = positions[start:stop]
        x = ws.image(out.shape[1:], len(members), out.device)
        flipped = {j for a, b in flip_runs for j in range(a, b)}
        for j, i in enumerate(members):  # uint8 -> float; flip commutes with every op: done here
            x[j].copy_(images[i].flip(-1) if j in flipped else images[i])
        for a, b in gray_runs:
            grayscale_(x[a:b], ws=ws)
        colour = gray_runs[0][0] if gray_runs else len(members)  # grey images: a suffix of the chunk
        rows = plan.params.index_select(0, plan.order[start:stop])
        for op in ops:
            if op in _IDENTITY_ON_GREY:
                if colour:
                    _apply(x[:colour], op, rows[:colour, _FACTOR_COLUMN[op]], clip[op], ws)
            else:
                _apply(x, op, rows[:, _FACTOR_COLUMN[op]], clip[op], ws)
        x.div_(255.0).sub_(mean)  # ToTensor + Normalize, the last op writing the output rows
        for j, i in enumerate(members):
            torch.div(x[j], std, out=out[i])


def _by_slot(images: torch.Tensor, plan: AugmentPlan, out: torch.Tensor) -> None:
    """Accelerator schedule: the whole batch, slot by slot; each op on the images that have it
    there (gathered, processed, scattered back)."""
    device = images.device
    index = plan.slot_index.to(device, non_blocking=True)
    params = plan.params.to(device, non_blocking=True)
    x = images.to(torch.float32)
    a, b = plan.flip
    if b > a:
        at = index[a:b]
        x.index_copy_(0, at, x.index_select(0, at).flip(-1))
    a, b = plan.gray
    if b > a:
        at = index[a:b]
        x.index_copy_(0, at, grayscale_(x.index_select(0, at)))
    for op, a, b, clip in plan.slots:
        at = index[a:b]
        sub = x.index_select(0, at)
        _apply(sub, op, params.index_select(0, at)[:, _FACTOR_COLUMN[op]], clip)
        x.index_copy_(0, at, sub)
    out.copy_(normalize_(x))


def _output(shape, device: torch.device) -> torch.Tensor:
    """A float32 batch; in a DataLoader worker, allocated in shared memory, as ``default_collate``
    does, so sending it to the main process copies nothing."""
    if device.type == "cpu" and torch.utils.data.get_worker_info() is not None:
        numel = 1
        for dim in shape:
            numel *= int(dim)
        storage = torch.UntypedStorage._new_shared(numel * 4)
        return torch.empty(0, dtype=torch.float32).set_(storage, 0, tuple(shape))
    return torch.empty(shape, dtype=torch.float32, device=device)


def eval_images(images) -> torch.Tensor:
    """The evaluation transform of a uint8 batch (N, 3, s, s) (or a list of (3, s, s)):
    ``ToTensor`` + ``Normalize``, with torchvision's own op sequence (bit-equal to the PIL
    evaluation transform)."""
    shape, device = _batch_shape(images)
    out = _output(shape, device)
    mean, std = _mean_std(device)
    if torch.is_tensor(images):
        out.copy_(images)
    else:
        for row, image in zip(out, images):
            row.copy_(image)
    torch.div(out.div_(255.0).sub_(mean), std, out=out)
    return out


def augment_batch(images: torch.Tensor, params, *, schedule: str | None = None) -> torch.Tensor:
    """Grayscale -> the four colour ops in each image's own order -> flip -> ``/255`` -> normalise.

    ``images``: uint8 (N, 3, H, W) on the working device (or, for the ``"order"`` schedule, a list
    of N (3, H, W) tensors); ``params``: the (N, PARAM_COUNT) parameters or their
    :class:`AugmentPlan`. ``schedule``: ``"order"`` (the CPU default) or ``"slot"`` (the
    accelerator default); both give the same values. Returns float32 (N, 3, H, W) on the images'
    device, bit-equal to the PIL reference with these parameters.
    """
    plan = params if isinstance(params, AugmentPlan) else AugmentPlan(params)
    shape, device = _batch_shape(images)
    _check(shape, plan)
    out = _output(shape, device)
    if len(plan) == 0:
        return out
    schedule = schedule or ("order" if device.type == "cpu" else "slot")
    if schedule == "slot" and not torch.is_tensor(images):
        images = torch.stack(list(images))
    if schedule == "order":
        _by_order(images, plan, out)
    elif schedule == "slot":
        _by_slot(images, plan, out)
    else:
        raise ValueError(f"schedule must be 'order' or 'slot', not {schedule!r}")
    return out


def finish_images(images: torch.Tensor, device: torch.device | str, params=None) -> torch.Tensor:
    """The one entry point of the engine: a loaded batch -> float normalised images on ``device``.

    * float images (the PIL reference pipeline): moved, untouched;
    * uint8 images with parameters (``params``: a tensor or an :class:`AugmentPlan`; by default
      the plan the loader attached to the tensor): augmented (:func:`augment_batch`) on ``device``;
    * uint8 images without parameters (evaluation): ``ToTensor`` + ``Normalize``, bit-equal to
      the PIL evaluation transform of the same cached pixels.
    """
    device = torch.device(device)
    attached = getattr(images, PARAMS_ATTRIBUTE, None)
    if images.dtype != torch.uint8:
        return images.to(device, non_blocking=True)
    moved = images.to(device, non_blocking=True)
    plan = attached if attached is not None else params  # the loader's plan is of these parameters
    if plan is None:
        return eval_images(moved)
    return augment_batch(moved, plan)


def finish_batch(batch: dict, device: torch.device | str, image_keys: Sequence[str] = ("image", "unlabelled")
                 ) -> dict:
    """A collated training batch on ``device``: tensors moved (``non_blocking``), images finished
    by :func:`finish_images` (``batch["augment"]`` are the parameters of ``batch["image"]``;
    other image entries carry theirs as an attribute), the parameter entry dropped."""
    params = batch.get(PARAMS_KEY)
    out = {}
    for key, value in batch.items():
        if key == PARAMS_KEY:
            continue
        if key in image_keys and torch.is_tensor(value):
            out[key] = finish_images(value, device, params if key == "image" else None)
        elif torch.is_tensor(value):
            out[key] = value.to(device, non_blocking=True)
        else:
            out[key] = value
    return out


def attach_params(batch: dict, pin_memory: bool = False) -> dict:
    """Plan the augmentation of a loaded batch (:class:`AugmentPlan`, from ``batch["augment"]``)
    and attach it to ``batch["image"]`` (attribute :data:`PARAMS_ATTRIBUTE`), so the image tensor
    alone says how to finish it and finishing reads no value. Called by the loaders in the main
    process; ``pin_memory``: page-lock the plan too."""
    params = batch.get(PARAMS_KEY) if isinstance(batch, dict) else None
    if params is not None and torch.is_tensor(batch.get("image")):
        plan = AugmentPlan(params)
        setattr(batch["image"], PARAMS_ATTRIBUTE, plan.pin_memory() if pin_memory else plan)
    return batch
