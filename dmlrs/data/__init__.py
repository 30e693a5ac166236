"""Data: dataset specs, folder scanning, splits + manifests, label noise, transforms, demo data.

Entry point for training code: :func:`build_data` -> :class:`DataBundle`.
Command line check of a dataset folder: ``python -m dmlrs.data --dataset AID --data ROOT``.
"""
from dmlrs.data.build import DataBundle, build_data, describe_data
from dmlrs.data.dataset import SceneDataset
from dmlrs.data.demo import DEMO_CLASSES, DemoImageLoader, demo_samples, render_demo_image
from dmlrs.data.images import load_rgb
from dmlrs.data.noise import NOISE_TYPES, apply_label_noise, transition_matrix
from dmlrs.data.scan import SceneIndex, scan_dataset
from dmlrs.data.specs import DATASET_SPECS, DatasetSpec, get_spec
from dmlrs.data.splits import (add_semi_supervised, check_manifest_matches, load_manifest, make_manifest,
                               manifest_hash, save_manifest, split_counts, stratified_split)
from dmlrs.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms

__all__ = [
    "DATASET_SPECS", "DEMO_CLASSES", "DataBundle", "DatasetSpec", "DemoImageLoader", "IMAGENET_MEAN",
    "IMAGENET_STD", "NOISE_TYPES", "SceneDataset", "SceneIndex", "add_semi_supervised", "apply_label_noise",
    "build_data", "build_transforms", "check_manifest_matches", "demo_samples", "describe_data", "get_spec",
    "load_manifest", "load_rgb", "make_manifest", "manifest_hash", "render_demo_image", "save_manifest",
    "scan_dataset", "split_counts", "stratified_split", "transition_matrix",
]
