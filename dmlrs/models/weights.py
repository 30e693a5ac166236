"""Initial weights for an ``EmbeddingModel``: ``--weights imagenet | none | PATH``.

* ``"none"``: keep the random initialisation.
* ``"imagenet"``: torchvision's ImageNet-1k weights (``IMAGENET1K_V1`` for every backbone: the
  original release the papers used), fetched through torchvision's weights API like the original
  scripts' ``pretrained=True``: read from the torch hub cache,
  ``torch.hub.get_dir()/checkpoints/<file name of the weights URL>`` (``$TORCH_HOME/hub/...``),
  and downloaded there (with torchvision's progress bar and SHA-256 prefix check) when absent.
  A failed download (offline, HTTP error, truncated file, hash mismatch) raises one
  ``DmlrsError`` with the reason, the exact cache path, the URL and the alternatives; a cached
  file that cannot be read raises one naming that file (delete it to download it again).
* ``PATH``: either a torchvision state dict (keys like ``conv1.weight``; the ImageNet classifier
  ``fc.*`` / ``classifier.*`` is ignored; loads into the backbone), or a dmlrs checkpoint (a dict
  whose ``"model"`` entry is an ``EmbeddingModel`` state dict; loads into the whole model), or a
  bare ``EmbeddingModel`` state dict (keys ``backbone.*``). A ``module.`` prefix (from
  ``DataParallel``/DDP) is stripped.

Every file is read with ``torch.load(path, map_location="cpu", weights_only=True)`` (for the
ImageNet files this is passed explicitly: ``torch.hub.load_state_dict_from_url``, which
torchvision uses, defaults to ``weights_only=False``). Keys or shapes that do not match raise
``DmlrsError`` naming the file, what the file looks like (which backbone, which
``dim``/``num_classes``) and the first differing keys.
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from dmlrs.errors import DmlrsError
from dmlrs.models.backbones import BACKBONES, backbone_key_shapes, backbone_spec

# Buffers a state dict may lack without harm (old torchvision files predate them; BatchNorm
# fills them in itself).
OPTIONAL_KEY_SUFFIXES = ("num_batches_tracked",)
MAX_KEYS_SHOWN = 3


def imagenet_weights_path(backbone: str) -> Path:
    """Where the ImageNet weights of ``backbone`` are cached (and downloaded to): the torch hub
    checkpoint cache, ``torch.hub.get_dir()/checkpoints/<file name of the URL>``."""
    url = backbone_spec(backbone).imagenet_weights.url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def load_initial_weights(model: nn.Module, weights: str | Path | None) -> None:
    """Apply ``--weights`` (``"imagenet"``, ``"none"``/``None`` or a file path) to ``model``."""
    weights = "none" if weights is None else str(weights)
    if weights == "none":
        return
    if weights == "imagenet":
        _load_imagenet(model)
        return
    _load_file(model, Path(weights).expanduser())


def _load_imagenet(model: nn.Module) -> None:
    """torchvision's ImageNet weights: the hub cache, downloaded there first when absent."""
    backbone = model.backbone_name
    entry = backbone_spec(backbone).imagenet_weights
    path = imagenet_weights_path(backbone)
    try:
        # As torchvision's ``pretrained=True`` does (``check_hash=True``, progress bar), plus an
        # explicit weights_only=True: torch.hub's loader defaults to weights_only=False.
        content = entry.get_state_dict(model_dir=str(path.parent), file_name=path.name,
                                       progress=True, check_hash=True, map_location="cpu",
                                       weights_only=True)
    except Exception as exc:  # URLError/HTTPError/OSError, IncompleteRead, hash RuntimeError, ...
        reason = _brief(exc)
        if path.exists():  # the cached (or just downloaded) file is there but unreadable
            raise DmlrsError(
                f"--weights imagenet: cannot read the cached ImageNet weights for {backbone} at "
                f"{path} with torch.load(weights_only=True) ({reason}): the file is damaged or "
                f"incomplete. Delete it so it is downloaded again from {entry.url}, or pass "
                "--weights none (random init) or --weights PATH.") from exc
        raise DmlrsError(
            f"--weights imagenet: downloading the ImageNet weights for {backbone} failed "
            f"({reason}). Put the file from {entry.url} at exactly {path} (or set TORCH_HOME to "
            "a folder whose hub/checkpoints/ holds it), or pass --weights none (random init) or "
            "--weights PATH.") from exc
    if not isinstance(content, dict):
        raise DmlrsError(f"--weights imagenet: {path} holds a {type(content).__name__}, not a "
                         "state dict; delete it so it is downloaded again")
    _load_into_backbone(model, _strip_module_prefix(content), path)


def _load_file(model: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise DmlrsError(f"--weights {path}: file not found (give a torchvision state dict, a dmlrs "
                         "checkpoint, 'imagenet' or 'none')")
    content = _read_state_file(path, f"--weights {path}")
    if "model" in content and isinstance(content["model"], dict):
        state = content["model"]  # dmlrs checkpoint
        if not _is_tensor_dict(state):
            raise DmlrsError(f"--weights {path}: its 'model' entry is not a state dict of tensors")
        _load_into_model(model, _strip_module_prefix(state), path)
        return
    if not _is_tensor_dict(content):
        raise DmlrsError(f"--weights {path}: not a state dict (expected a dict of tensors or a "
                         f"dmlrs checkpoint with a 'model' entry; found keys {_first(content)})")
    state = _strip_module_prefix(content)
    if any(key.startswith("backbone.") for key in state):
        _load_into_model(model, state, path)
    else:
        _load_into_backbone(model, state, path)


def _read_state_file(path: Path, flag: str) -> dict:
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise DmlrsError(f"{flag}: cannot read {path} with torch.load(weights_only=True) "
                         f"({exc.__class__.__name__}): the file is damaged, is not a PyTorch file, or "
                         "holds pickled Python objects such as a whole nn.Module, which dmlrs refuses "
                         "to unpickle. Save it with torch.save(model.state_dict(), path) or pass a "
                         "dmlrs checkpoint.") from exc
    if not isinstance(content, dict):
        raise DmlrsError(f"{flag}: {path} holds a {type(content).__name__}, not a state dict "
                         "(save model.state_dict(), not the model or a tensor)")
    return content


def _load_into_backbone(model: nn.Module, state: dict, path: Path) -> None:
    """torchvision state dict -> ``model.backbone`` (ImageNet classifier keys dropped)."""
    prefix = backbone_spec(model.backbone_name).classifier_prefix
    state = {key: value for key, value in state.items() if not key.startswith(prefix)}
    problem = _mismatch(model.backbone, state)
    if problem:
        raise DmlrsError(f"--weights {path}: does not fit the {model.backbone_name} backbone; "
                         f"the file looks like {_describe_backbone_state(state)}. {problem}")
    model.backbone.load_state_dict(state, strict=False)  # completeness checked by _mismatch


def _load_into_model(model: nn.Module, state: dict, path: Path) -> None:
    """dmlrs ``EmbeddingModel`` state dict -> the whole model."""
    problem = _mismatch(model, state)
    if problem:
        raise DmlrsError(
            f"--weights {path}: this dmlrs model does not fit the one being built "
            f"({model.backbone_name}, dim {model.dim}, num_classes {model.num_classes}); the file "
            f"holds {_describe_model_state(state)}. {problem} Use matching --model/--dim, or "
            "load only a backbone from a torchvision state dict.")
    model.load_state_dict(state, strict=False)  # completeness checked by _mismatch


def _mismatch(module: nn.Module, state: dict) -> str:
    """Human-readable description of missing/unexpected keys and shape clashes ('' if none)."""
    expected = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    missing = [key for key in expected if key not in state and not key.endswith(OPTIONAL_KEY_SUFFIXES)]
    unexpected = [key for key in state if key not in expected]
    shapes = [f"{key} {tuple(state[key].shape)} vs {expected[key]}" for key in expected
              if key in state and tuple(state[key].shape) != expected[key]]
    parts = [f"{label} ({len(keys)}): {_first(keys)}" for label, keys in
             (("missing keys", missing), ("unexpected keys", unexpected),
              ("shape mismatches file vs model", shapes)) if keys]
    return "; ".join(parts) + "." if parts else ""


def _describe_backbone_state(state: dict) -> str:
    """Which known backbone a torchvision-style state dict belongs to, if any."""
    classifier_prefixes = tuple({spec.classifier_prefix for spec in BACKBONES.values()})
    shapes = {key: tuple(value.shape) for key, value in state.items()
              if not key.startswith(classifier_prefixes) and not key.endswith(OPTIONAL_KEY_SUFFIXES)}
    for name in BACKBONES:
        known = {key: shape for key, shape in backbone_key_shapes(name).items()
                 if not key.endswith(OPTIONAL_KEY_SUFFIXES)}
        if shapes == known:
            return f"a {name} state dict"
    return f"none of {', '.join(BACKBONES)} ({len(state)} keys, e.g. {_first(list(state))})"


def _describe_model_state(state: dict) -> str:
    trunk = {key[len("backbone."):]: value for key, value in state.items()
             if key.startswith("backbone.")}
    projection = state.get("projection.fc.weight")
    classifier = state.get("classifier.fc.weight")
    dim = projection.shape[0] if projection is not None else "?"
    classes = classifier.shape[0] if classifier is not None else None
    return f"{_describe_backbone_state(trunk)}, dim {dim}, num_classes {classes}"


def _is_tensor_dict(content: object) -> bool:
    return (isinstance(content, dict) and len(content) > 0
            and all(isinstance(key, str) and isinstance(value, torch.Tensor)
                    for key, value in content.items()))


def _strip_module_prefix(state: dict) -> dict:
    if state and all(key.startswith("module.") for key in state):
        return {key[len("module."):]: value for key, value in state.items()}
    return state


def _brief(exc: BaseException, limit: int = 200) -> str:
    """``ExcType: message`` on one line, cut to ``limit`` characters."""
    text = " ".join(f"{exc.__class__.__name__}: {exc}".split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _first(items) -> str:
    items = list(items)
    shown = ", ".join(str(item) for item in items[:MAX_KEYS_SHOWN])
    return shown + (", ..." if len(items) > MAX_KEYS_SHOWN else "")
