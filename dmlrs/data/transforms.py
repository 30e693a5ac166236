"""Image transforms of the papers (SNCA-CE, HR-S2DML, CDNE, t-RNSL, SRL training scripts).

train: Resize((s, s)) -> RandomGrayscale(p=0.2) -> ColorJitter(0.4, 0.4, 0.4, 0.4)
       -> RandomHorizontalFlip() -> ToTensor() -> Normalize(ImageNet mean, std)
eval:  Resize((s, s)) -> ToTensor() -> Normalize(ImageNet mean, std)
Output: float tensor (3, s, s).  The papers use s = 256.

These are the reference (``--input-pipeline pil``). The default ``--input-pipeline cached`` keeps
the ``Resize`` output in a decoded-image cache (:mod:`dmlrs.data.image_cache`) and applies the
rest as batched tensor ops on the training device (:mod:`dmlrs.data.gpu_augment`), with the same
parameters and bit-identical results.
"""
from __future__ import annotations

from torchvision import transforms as T

from dmlrs.errors import DmlrsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_transforms(img_size: int) -> tuple[T.Compose, T.Compose]:
    """Return ``(train_transform, eval_transform)`` for square images of side ``img_size``."""
    if not isinstance(img_size, int) or isinstance(img_size, bool) or img_size < 8:
        raise DmlrsError(f"--img-size {img_size!r} must be an integer >= 8")
    size = (img_size, img_size)
    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train = T.Compose([
        T.Resize(size),
        T.RandomGrayscale(p=0.2),
        T.ColorJitter(0.4, 0.4, 0.4, 0.4),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        normalize,
    ])
    evaluation = T.Compose([T.Resize(size), T.ToTensor(), normalize])
    return train, evaluation
