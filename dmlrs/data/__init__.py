"""Data: dataset specs, folder scanning, splits + manifests, label noise, transforms, demo data.

Entry point for training code: :func:`build_data` -> :class:`DataBundle`.
Command line check of a dataset folder: ``python -m dmlrs.data --dataset AID --data ROOT``.

The names below are imported on first use (PEP 562), so that ``python -m dmlrs.data`` and the
torch-free modules (scan, splits, verify, ...) do not pay for importing torch and torchvision.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "build": ("DataBundle", "DataPlan", "INPUT_PIPELINES", "build_data", "describe_data", "prepare_data"),
    "dataset": ("SceneDataset",),
    "demo": ("DEMO_CLASSES", "DemoImageLoader", "demo_samples", "render_demo_image"),
    "gpu_augment": ("AugmentParams", "augment_batch", "finish_images"),
    "image_cache": ("ensure_image_cache",),
    "images": ("UnreadableImageError", "load_rgb"),
    "noise": ("NOISE_TYPES", "apply_label_noise", "transition_matrix"),
    "scan": ("CorruptImagesError", "SceneIndex", "scan_dataset"),
    "specs": ("DATASET_SPECS", "DatasetSpec", "get_spec"),
    "splits": ("add_semi_supervised", "check_manifest_matches", "load_manifest", "make_manifest", "manifest_hash",
               "save_manifest", "split_counts", "stratified_split"),
    "transforms": ("IMAGENET_MEAN", "IMAGENET_STD", "build_transforms"),
    "verify": ("check_images",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'dmlrs.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"dmlrs.data.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
