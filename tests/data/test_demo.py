"""Synthetic demo scenes: deterministic per (class, index) in any process, class structure that a
nearest-class-mean classifier on raw pixels finds far above chance, item paths, loader errors."""
import pickle
import subprocess
import sys

import numpy as np
import pytest

import dmlrs.data.demo as demo_module
from dmlrs.data.demo import DEMO_CLASSES, DemoImageLoader, demo_samples, render_demo_image
from dmlrs.errors import DmlrsError


def _pixels(image):
    return np.asarray(image, dtype=np.float64)


def test_classes_and_items():
    assert len(DEMO_CLASSES) == 10 and len(set(DEMO_CLASSES)) == 10
    assert "stripes_horizontal" in DEMO_CLASSES
    samples = demo_samples()
    assert len(samples) == 600 and len({p for p, _ in samples}) == 600
    assert samples[0] == ("demo/stripes_horizontal/0", 0)
    assert all(p.split("/")[1] == DEMO_CLASSES[label] for p, label in samples)
    assert len(demo_samples(per_class=3)) == 30


def test_images_are_deterministic_and_distinct():
    a = render_demo_image("rings", 5, 32)
    assert a.mode == "RGB" and a.size == (32, 32)
    assert np.array_equal(_pixels(a), _pixels(render_demo_image("rings", 5, 32)))
    assert not np.array_equal(_pixels(a), _pixels(render_demo_image("rings", 6, 32)))
    loader = pickle.loads(pickle.dumps(DemoImageLoader(32)))  # as sent to DataLoader workers
    assert np.array_equal(_pixels(loader("demo/rings/5")), _pixels(a))


def test_same_pixels_in_another_process():
    here = _pixels(render_demo_image("blobs_dense", 11, 24)).astype(np.uint8).tobytes()
    # load demo.py by file path so the fresh process skips the (slow) torch import of dmlrs.data
    code = ("import importlib.util, sys, numpy as np; "
            "spec = importlib.util.spec_from_file_location('demo_alone', sys.argv[1]); "
            "demo = importlib.util.module_from_spec(spec); spec.loader.exec_module(demo); "
            "sys.stdout.buffer.write(np.asarray(demo.render_demo_image('blobs_dense', 11, 24)).tobytes())")
    there = subprocess.run([sys.executable, "-c", code, demo_module.__file__], capture_output=True,
                           check=True).stdout
    assert there == here


def test_nearest_class_mean_on_raw_pixels_beats_chance_by_far():
    size, per_class, n_fit = 24, 30, 20
    x = np.stack([_pixels(render_demo_image(c, i, size)).ravel() / 255.0
                  for c in DEMO_CLASSES for i in range(per_class)])  # (10 * per_class, size * size * 3)
    y = np.repeat(np.arange(len(DEMO_CLASSES)), per_class)
    fit = np.tile(np.arange(per_class) < n_fit, len(DEMO_CLASSES))
    means = np.stack([x[fit & (y == c)].mean(axis=0) for c in range(len(DEMO_CLASSES))])  # (10, D)
    dist = ((x[~fit][:, None, :] - means[None, :, :]) ** 2).sum(axis=-1)  # (n_eval, 10)
    accuracy = (dist.argmin(axis=1) == y[~fit]).mean()
    assert accuracy > 0.4  # chance is 0.1
    # but not trivial: classes that share a palette are confused by raw-pixel means
    assert accuracy < 0.95


def test_bad_items_are_user_errors():
    with pytest.raises(DmlrsError, match="demo class"):
        render_demo_image("volcano", 0)
    with pytest.raises(DmlrsError, match="demo/<class>/<index>"):
        DemoImageLoader()("demo/rings/first")
