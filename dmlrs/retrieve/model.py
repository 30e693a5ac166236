"""Load a trained dmlrs checkpoint as an image encoder for archive search.

A checkpoint written by the trainer describes itself (``Trainer.state_dict``): ``model_spec``
(``build_model`` arguments), ``method_name``, ``hashing``, ``classes``, ``image_size``, and the
weights in ``model``. Older checkpoints lack those keys; they are then read from the run folder
the checkpoint sits in (``<run>/checkpoints/best.pt`` -> ``<run>/config.json`` and
``<run>/split.json``), rebuilding the model as the training script did (see ``train_*/main.py``).

Encoding (as the evaluation does): ``Resize((s, s)) -> ToTensor -> Normalize(ImageNet)`` with
``s`` the checkpoint's image size, the model in eval mode. Float models give unit-norm
embeddings ``model.embed(images)``; hashing models (CDNE) give the codes
``model(images)["features"]``, binarised as ``1[h > 0]`` (the convention of
:mod:`dmlrs.metrics.hamming`) and packed 8 bits per byte with ``numpy.packbits``.
"""
from __future__ import annotations

import hashlib
import json
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dmlrs.cli_checks import effective_image_size
from dmlrs.data.transforms import build_transforms
from dmlrs.engine.checkpoint import load_checkpoint
from dmlrs.errors import DmlrsError
from dmlrs.models import build_model

FLOAT, HAMMING = "cosine", "hamming"
#: what to do when --checkpoint is a readable file but not a training checkpoint
CHECKPOINT_HINT = "pass a checkpoints/best.pt or last.pt written by a train_*/main.py script"
#: how each training script builds its model from its flags (train_*/main.py): extra build_model
#: arguments beyond --model/--dim; the class head's size is read from the weights
_SCRIPT_MODELS = {
    "SNCA_CE": {}, "SNCA_CE_MC": {}, "tRNSL": {}, "SRL": {},
    "MNCE_BNM": {"standardize": True},
    "CDNE": {"hashing": True},  # head from --code-activation
}
_CDNE_HEADS = {"none": "embedding", "tanh": "hash"}


@dataclass
class Encoder:
    """A trained model ready to encode images; ``kind`` is ``"cosine"`` or ``"hamming"``."""

    model: torch.nn.Module
    kind: str
    image_size: int
    classes: list[str] | None
    method_name: str
    identity: str  # changes whenever the weights or the preprocessing do
    checkpoint: Path

    def __post_init__(self) -> None:
        self.transform = build_transforms(self.image_size)[1]
        self.model.eval()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> np.ndarray:
        """``(B, 3, s, s)`` preprocessed images -> ``(B, D)`` float32 unit-norm embeddings, or
        ``(B, ceil(bits / 8))`` uint8 packed codes for a hashing model."""
        images = images.to(self.device)
        if self.kind == FLOAT:
            return self.model.embed(images).float().cpu().numpy()
        codes = self.model(images)["features"].float()
        if torch.isnan(codes).any():
            raise DmlrsError(f"{self.checkpoint}: the model gives NaN codes; the checkpoint is damaged")
        bits = (codes > 0).cpu().numpy()  # exact 0 -> bit 0, as dmlrs.metrics.hamming binarises
        return np.packbits(bits, axis=1)


def load_encoder(path: str | Path, device: torch.device) -> Encoder:
    """Rebuild the model of the checkpoint at ``path`` on ``device`` (see the module doc)."""
    path = Path(path)
    if not path.is_file():
        raise DmlrsError(f"--checkpoint {path}: file not found; pass a checkpoint of a training run "
                         "(runs/<method>/<dataset>/<time>/checkpoints/best.pt)")
    state = load_checkpoint(path, hint=CHECKPOINT_HINT)
    weights = state.get("model")
    if not isinstance(weights, dict) or not all(torch.is_tensor(v) for v in weights.values()):
        raise DmlrsError(f"{path}: its 'model' entry is not a state dict of tensors; the file is damaged or "
                         "not a dmlrs checkpoint")
    if "model_spec" in state:
        spec, hashing = dict(state["model_spec"]), bool(state.get("hashing", False))
        method_name = str(state.get("method_name", "?"))
        classes = state.get("classes")
        image_size = int(state["image_size"])
    else:
        spec, hashing, method_name, classes, image_size = _spec_from_run_folder(path, weights)
    try:
        model = build_model(spec.pop("backbone"), spec.pop("dim"), weights="none", **spec)
        model.load_state_dict(weights)
    except (DmlrsError, KeyError, TypeError, RuntimeError) as exc:
        raise DmlrsError(f"{path}: the weights do not fit the model it describes ({str(exc).splitlines()[0]}); "
                         "the file is damaged or was written by another dmlrs version") from exc
    return Encoder(model.to(device), HAMMING if hashing else FLOAT, image_size,
                   None if classes is None else [str(c) for c in classes], method_name,
                   _identity(weights, hashing, image_size), path)


def _spec_from_run_folder(path: Path, weights: dict) -> tuple[dict, bool, str, list | None, int]:
    """``(build_model kwargs, hashing, method name, classes, image size)`` of an older checkpoint,
    from ``<run>/config.json`` (and the classes from ``<run>/split.json``)."""
    run_dir = path.resolve().parent.parent
    config_path = run_dir / "config.json"

    def old_checkpoint(why: str) -> DmlrsError:
        return DmlrsError(f"{path} predates self-describing checkpoints and its run's config.json ({config_path}) "
                          f"{why}; use the checkpoint inside its run folder (<run>/checkpoints/)")

    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        method_name, args = config["method"], config["args"]
        backbone, dim = args["model"], args["dim"]
    except FileNotFoundError as exc:
        raise old_checkpoint("is missing") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise old_checkpoint("cannot be read") from exc
    if method_name not in _SCRIPT_MODELS:
        raise old_checkpoint(f"names an unknown method {method_name!r}")
    extra = dict(_SCRIPT_MODELS[method_name])
    hashing = extra.pop("hashing", False)
    if hashing:
        extra["head"] = _CDNE_HEADS.get(args.get("code_activation", "none"), "embedding")
    classifier = weights.get("classifier.fc.weight")
    spec = {"backbone": backbone, "dim": dim, **extra,
            "num_classes": None if classifier is None else int(classifier.shape[0])}
    image_size = effective_image_size(Namespace(img_size=args.get("img_size"), dataset=args.get("dataset", "")))
    return spec, hashing, method_name, _classes_from_split(run_dir / "split.json"), image_size


def _classes_from_split(split_path: Path) -> list | None:
    try:
        classes = json.loads(split_path.read_text(encoding="utf-8")).get("classes")
    except (OSError, ValueError, AttributeError):
        return None
    return classes if isinstance(classes, list) else None


def _identity(weights: dict, hashing: bool, image_size: int) -> str:
    """SHA-256 of the weights (names, shapes, dtypes, bytes) and of how images are encoded, so an
    index built with one model is never reused with another (a copy of the same file is)."""
    digest = hashlib.sha256(f"{'hamming' if hashing else 'cosine'}|{image_size}".encode())
    for name in sorted(weights):
        tensor = weights[name].detach().cpu().contiguous()
        digest.update(f"|{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
