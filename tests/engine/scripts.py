"""Helpers to run the entry scripts in-process on tiny generated data."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from dmlrs.data.fixtures import write_image_folder

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = ("SNCA_CE", "SNCA_CE_MC", "MNCE_BNM", "CDNE", "tRNSL", "SRL")

#: tiny, fast settings shared by the smoke tests (CPU, 32 px images, a few steps)
FAST = ["--img-size", "32", "--model", "resnet18", "--dim", "16", "-b", "8", "--num_workers", "0",
        "--weights", "none", "--no-progress", "--no-tensorboard", "--no-pictures", "--device", "cpu"]


def load_script(name: str):
    """Import ``train_<name>/main.py`` as a module (its ``__main__`` block does not run)."""
    path = REPO / f"train_{name}" / "main.py"
    spec = importlib.util.spec_from_file_location(f"train_{name}_main", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name: str, argv: list[str]) -> int:
    return load_script(name).main(argv)


def tiny_folder(root: Path, classes: int = 4, per_class: int = 10) -> Path:
    names = {f"class_{c}": per_class for c in range(classes)}
    return write_image_folder(root / "scenes", names, size=24, ext=".png")


def only_run_dir(out: Path) -> Path:
    runs = sorted(p.parent for p in out.glob("*/*/*/config.json"))
    assert len(runs) == 1, runs
    return runs[0]


def read_json(path: Path):
    return json.loads(Path(path).read_text())
