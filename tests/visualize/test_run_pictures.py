"""make_run_pictures on tiny demo data: every PNG, TensorBoard images and projector, thumbnails
from either input pipeline, failures as warnings, the t-RNSL pruning plot."""
import json

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dmlrs.data import build_data
from dmlrs.metrics import retrieval_metrics
from dmlrs.visualize import curves, pruning
from dmlrs.visualize.run_pictures import PICTURES_DIR, make_run_pictures, pictures_after_report
from dmlrs.visualize.thumbnails import PLACEHOLDER_GREY, load_thumbnail, load_thumbnails, to_uint8_rgb
from tests.visualize.pictures import assert_png

PICTURES = ("retrieval_gallery.png", "embedding_tsne.png", "ap_per_class.png", "precision_recall.png")


@pytest.fixture(scope="module")
def data():
    return build_data("demo", img_size=16, input_pipeline="cached")


def embeddings_of(data, seed=0):
    """Class-dependent random embeddings of the test (query) and train (gallery) splits."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(data.num_classes, 8, generator=generator)
    query_labels = torch.tensor(data.test.labels)
    gallery_labels = data.train_labels
    return {"query": centres[query_labels] + torch.randn(len(query_labels), 8, generator=generator),
            "query_labels": query_labels,
            "gallery": centres[gallery_labels] + torch.randn(len(gallery_labels), 8, generator=generator),
            "gallery_labels": gallery_labels}


def report_of(data, embeddings):
    retrieval = retrieval_metrics(embeddings["query"], embeddings["query_labels"], embeddings["gallery"],
                                  embeddings["gallery_labels"])
    per_class = retrieval.pop("AP_per_class")
    return {"retrieval": retrieval, "AP_per_class": {data.classes[k]: v for k, v in sorted(per_class.items())}}


def test_every_picture_and_tensorboard(tmp_path, data):
    embeddings = embeddings_of(data)
    result = make_run_pictures(tmp_path, data=data, embeddings=embeddings, report=report_of(data, embeddings),
                               tensorboard=True, global_step=3, max_points=50, seed=5)
    assert result.warnings == []
    assert sorted(p.name for p in result.written) == sorted(PICTURES)
    for name in PICTURES:
        assert_png(tmp_path / PICTURES_DIR / name)
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert sorted(events.Tags()["images"]) == sorted(f"pictures/{name[:-4]}" for name in PICTURES)
    image = events.Images("pictures/retrieval_gallery")[0]
    assert image.step == 3 and image.width >= 200
    config = (tmp_path / "tb" / "projector_config.pbtxt").read_text()
    assert "sprite" in config and "metadata_path" in config
    folder = tmp_path / "tb" / "00003" / "test_embeddings"
    metadata = (folder / "metadata.tsv").read_text().split("\n")
    assert len([line for line in metadata if line]) == 50  # the t-SNE subset, with class names
    assert set(line for line in metadata if line) <= set(data.classes)
    assert (folder / "sprite.png").is_file() and (folder / "tensors.tsv").is_file()


def test_no_tensorboard_writes_no_events(tmp_path, data):
    embeddings = embeddings_of(data)
    result = make_run_pictures(tmp_path, data=data, embeddings=embeddings, report=report_of(data, embeddings),
                               tensorboard=False)
    assert len(result.written) == 4 and not (tmp_path / "tb").exists()


def test_a_failing_picture_is_one_warning_and_the_others_are_made(tmp_path, data, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no room\non the canvas")

    monkeypatch.setattr(curves, "plot_ap_per_class", broken)
    embeddings = embeddings_of(data)
    result = make_run_pictures(tmp_path, data=data, embeddings=embeddings, report=report_of(data, embeddings),
                               tensorboard=False)
    assert result.warnings == ["warning: could not make ap_per_class.png (RuntimeError: no room on the canvas)"]
    assert sorted(p.name for p in result.written) == sorted(set(PICTURES) - {"ap_per_class.png"})


def test_pictures_after_report_never_raises(tmp_path, capsys):
    class Broken:  # a trainer whose evaluator kept no embeddings
        evaluator = object()

    result = pictures_after_report(Broken(), tmp_path, {})
    assert len(result.warnings) == 1 and result.written == []
    assert capsys.readouterr().out.startswith("warning: could not make the pictures (AttributeError")


def test_thumbnails_are_the_unaugmented_images_of_either_pipeline(data):
    pil = build_data("demo", img_size=16, input_pipeline="pil")
    cached = load_thumbnails(data.test, [0, 5, 9], 16)
    assert cached.dtype == np.uint8 and cached.shape == (3, 16, 16, 3)
    np.testing.assert_array_equal(cached, load_thumbnails(pil.test, [0, 5, 9], 16))
    np.testing.assert_array_equal(cached[1], np.asarray(pil.test.loader(pil.test.path(5)).convert("RGB")))
    assert load_thumbnail(data.train_eval, 2, 40).shape == (40, 40, 3)


def test_unreadable_image_becomes_a_grey_placeholder():
    class Unreadable:
        image_size = 12

        def path(self, i):
            return f"missing/{i}.png"

        def loader(self, path):
            raise OSError("gone")

    tile = load_thumbnail(Unreadable(), 0)
    assert tile.shape == (12, 12, 3) and (tile == PLACEHOLDER_GREY).all()


def test_to_uint8_rgb_layouts():
    chw = torch.arange(2 * 3 * 4, dtype=torch.uint8).reshape(3, 2, 4)
    np.testing.assert_array_equal(to_uint8_rgb(chw), chw.permute(1, 2, 0).numpy())
    grey = np.full((5, 6), 7, dtype=np.uint8)
    assert to_uint8_rgb(grey).shape == (5, 6, 3)
    assert to_uint8_rgb(np.full((2, 2, 3), 300.4)).max() == 255


def test_pruning_plot_from_metrics_jsonl(tmp_path):
    rows = [{"epoch": 1, "kept_fraction": 1.0, "kept_clean_fraction": 0.5},
            {"epoch": 2, "kept_fraction": 0.4, "kept_clean_fraction": 0.8},
            {"epoch": 3, "kept_fraction": 0.4, "kept_clean_fraction": 0.8},
            {"epoch": 4, "kept_fraction": 0.6, "kept_clean_fraction": 0.75}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows) + '{"epoch": 5, "kep')
    read = pruning.read_metrics(tmp_path / "metrics.jsonl")
    assert read == rows  # the torn last line is skipped
    assert [row["epoch"] for row in pruning.pruning_rounds(read, [2, 4, 9])] == [2, 4]
    assert_png(pruning.plot_pruning(read, [2, 4], tmp_path / "pruning.png"))
    with pytest.raises(ValueError, match="no pruning round"):
        pruning.plot_pruning(read, [7], tmp_path / "none.png")
