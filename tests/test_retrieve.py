"""python -m dmlrs.retrieve end to end on a generated archive, with tiny trained checkpoints.

Two checkpoints are trained by the entry scripts (SNCA-CE: float embeddings; CDNE: 16-bit
codes) for one step. A one-step model gives nearly the same embedding to every image in eval
mode (cosine > 0.9999: its batch-norm running statistics are barely updated), so the fixture
re-estimates them on the archive images before the tests use it; everything else in the
checkpoints is what the trainer wrote.
"""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dmlrs.data.images import load_rgb
from dmlrs.data.transforms import build_transforms
from dmlrs.engine.checkpoint import load_checkpoint, save_checkpoint
from dmlrs.models import build_model
from dmlrs.retrieve import cli as retrieve_cli
from dmlrs.retrieve.index import load_index
from dmlrs.retrieve.model import Encoder, load_encoder
from dmlrs.retrieve.rank import rank
from dmlrs.visualize import GalleryLayout
from tests.engine.scripts import FAST, run_script, tiny_folder

CLASSES = ["class_0", "class_1", "class_2"]
IMAGE_SIZE = 32


def _grid_image(rng: np.random.Generator) -> Image.Image:
    """A 24 x 24 image of 4 x 4 random colour blocks: images differ in colour and layout."""
    return Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((24, 24), Image.NEAREST)


def make_archive(root: Path, per_class: int = 5, seed: int = 0) -> Path:
    """``<root>/class_{0,1,2}/img_i.png``, an ``other/deeper/x.JPG`` outside the classes, and
    files that are not archive images (a text file, a hidden image)."""
    rng = np.random.default_rng(seed)
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            _grid_image(rng).save(root / name / f"img_{i}.png")
    (root / "other" / "deeper").mkdir(parents=True)
    _grid_image(rng).save(root / "other" / "deeper" / "x.JPG", format="JPEG")
    (root / "notes.txt").write_text("not an image")
    _grid_image(rng).save(root / ".hidden.png")
    return root


def _calibrate_batch_norm(model: torch.nn.Module, images: torch.Tensor) -> None:
    """Re-estimate every batch-norm layer's running statistics on ``images`` (one pass)."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        model(images)
    model.eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """``{"float": best.pt of SNCA_CE, "hamming": best.pt of CDNE}``, batch norm calibrated."""
    work = tmp_path_factory.mktemp("train")
    scenes = tiny_folder(work, classes=3, per_class=10)
    calibration = make_archive(work / "calibration", per_class=8, seed=99)
    transform = build_transforms(IMAGE_SIZE)[1]
    images = torch.stack([transform(load_rgb(p)) for p in sorted(calibration.rglob("*.png"))
                          if not p.name.startswith(".")])
    found = {}
    for kind, name, extra in (("float", "SNCA_CE", []), ("hamming", "CDNE", ["--dim", "16"])):
        out = work / name
        argv = ["--dataset", str(scenes), "--epochs", "1", "--steps-per-epoch", "1", "--out", str(out), *FAST, *extra]
        assert run_script(name, argv) == 0
        path = next(out.rglob("checkpoints/best.pt"))
        state = load_checkpoint(path)
        spec = dict(state["model_spec"])
        model = build_model(spec.pop("backbone"), spec.pop("dim"), **spec)
        model.load_state_dict(state["model"])
        _calibrate_batch_norm(model, images)
        state["model"] = model.state_dict()
        save_checkpoint(state, path)
        found[kind] = path
    return found


@pytest.fixture
def archive(tmp_path):
    return make_archive(tmp_path / "archive")


def search(checkpoint, archive, out, *queries, extra=()):
    """Run the command in-process (CPU, no loader processes, no bar); returns its exit status."""
    argv = ["--checkpoint", str(checkpoint), "--archive", str(archive), "--query", *map(str, queries),
            "--out", str(out), "--workers", "0", "--no-progress", "--device", "cpu", *extra]
    return retrieve_cli.main(argv)


def archive_paths(archive: Path) -> list[str]:
    return sorted(p.relative_to(archive).as_posix() for p in archive.rglob("*")
                  if p.suffix.lower() in (".png", ".jpg") and not p.name.startswith("."))


# ----------------------------------------------------------------------------- float64 references
def reference_vectors(checkpoint: Path, files: list[Path], hashing: bool) -> list:
    """Per image, one at a time, in float64: the unit-norm embedding, or the list of code bits."""
    state = load_checkpoint(checkpoint)
    spec = dict(state["model_spec"])
    model = build_model(spec.pop("backbone"), spec.pop("dim"), **spec).double().eval()
    model.load_state_dict(state["model"])
    transform = build_transforms(state["image_size"])[1]
    vectors = []
    with torch.no_grad():
        for path in files:
            features = model(transform(load_rgb(path)).double().unsqueeze(0))["features"][0]
            if hashing:
                vectors.append([int(v > 0) for v in features.tolist()])
            else:
                norm = sum(v * v for v in features.tolist()) ** 0.5
                vectors.append([v / norm for v in features.tolist()])
    return vectors


def reference_ranking(query: list, archive: list, hashing: bool) -> list[tuple[float, int]]:
    """(score, archive index) for every archive item, best first, ties by archive index."""
    if hashing:
        scores = [sum(a != b for a, b in zip(query, item)) for item in archive]
        return sorted(((s, i) for i, s in enumerate(scores)), key=lambda t: (t[0], t[1]))
    scores = [sum(a * b for a, b in zip(query, item)) for item in archive]
    return sorted(((s, i) for i, s in enumerate(scores)), key=lambda t: (-t[0], t[1]))


def assert_matches_reference(results: list[dict], reference: list[tuple[float, int]], paths: list[str],
                             tolerance: float) -> None:
    """Same scores rank by rank; same items wherever the reference's scores are not within
    ``tolerance`` of a neighbour (near-ties may swap between float32 and float64)."""
    reference_score = {paths[i]: s for s, i in reference}
    for rank, result in enumerate(results):
        assert result["rank"] == rank + 1
        assert abs(result["score"] - reference[rank][0]) <= tolerance
        assert abs(reference_score[result["path"]] - reference[rank][0]) <= tolerance
        neighbours = [reference[j][0] for j in (rank - 1, rank + 1) if 0 <= j < len(reference)]
        if all(abs(n - reference[rank][0]) > tolerance for n in neighbours):
            assert result["path"] == paths[reference[rank][1]]


# ----------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("kind", ["float", "hamming"])
def test_search_ranks_like_a_float64_reference_and_writes_its_files(kind, checkpoints, archive, tmp_path, capsys):
    hashing = kind == "hamming"
    out = tmp_path / "out"
    query_in_archive = archive / "class_1" / "img_2.png"
    query_outside = make_archive(tmp_path / "queries", per_class=1, seed=7) / "class_2" / "img_0.png"
    assert search(checkpoints[kind], archive, out, query_in_archive, query_outside, extra=["--topk", "8"]) == 0
    printed = capsys.readouterr().out
    assert "index: 16 images (0 reused, 16 embedded, 0 removed)" in printed
    assert f"query: {query_in_archive}" in printed and "class_1/img_2.png" in printed

    paths = archive_paths(archive)
    index = load_index(out / "index.pt")
    assert index.paths == paths  # hidden file and notes.txt left out; archive order = sorted paths
    assert index.vectors.dtype == (np.uint8 if hashing else np.float32)
    assert index.vectors.shape == (16, 2 if hashing else 16)

    report = json.loads((out / "retrieval.json").read_text())
    archive_ref = reference_vectors(checkpoints[kind], [archive / p for p in paths], hashing)
    queries_ref = reference_vectors(checkpoints[kind], [query_in_archive, query_outside], hashing)
    for entry, query_ref in zip(report["queries"], queries_ref):
        assert len(entry["results"]) == 8
        assert_matches_reference(entry["results"], reference_ranking(query_ref, archive_ref, hashing), paths,
                                 tolerance=0 if hashing else 1e-5)
    top = report["queries"][0]["results"][0]
    assert top["score"] == pytest.approx(0 if hashing else 1.0, abs=1e-5)
    if not hashing:  # float: the query itself; hashing: it is among the distance-0 items
        assert top["path"] == "class_1/img_2.png"
    else:
        assert "class_1/img_2.png" in [r["path"] for r in report["queries"][0]["results"] if r["score"] == 0]
    # correctness only where the query's folder is a checkpoint class: both queries' are
    assert report["queries"][0]["class"] == "class_1"
    assert all(r["correct"] == (r["class"] == "class_1") for r in report["queries"][0]["results"])

    with Image.open(out / "gallery.png") as picture:
        assert picture.format == "PNG"
        picture.load()
        # 2 queries x (query + 8 results), two caption lines each ("query"/"#r class", class/score), a title
        assert picture.size == GalleryLayout(thumb_size=112, columns=9, rows=2, caption_lines=2, font_size=12,
                                             has_title=True).size


def test_query_outside_the_checkpoint_classes_has_no_correctness(checkpoints, archive, tmp_path, capsys):
    out = tmp_path / "out"
    query = archive / "other" / "deeper" / "x.JPG"
    assert search(checkpoints["float"], archive, out, query, extra=["--topk", "3"]) == 0
    capsys.readouterr()
    entry = json.loads((out / "retrieval.json").read_text())["queries"][0]
    assert entry["class"] is None and [r["correct"] for r in entry["results"]] == [None] * 3
    assert entry["results"][0]["path"] == "other/deeper/x.JPG"
    with Image.open(out / "gallery.png") as picture:
        assert picture.size == GalleryLayout(thumb_size=112, columns=4, rows=1, caption_lines=2, font_size=12,
                                             has_title=True).size


# ----------------------------------------------------------------------------- incremental refresh
def _count_encoded(monkeypatch) -> list[int]:
    """Record the number of images of every model call."""
    calls = []
    original = Encoder.encode

    def counting(self, images):
        calls.append(int(images.shape[0]))
        return original(self, images)

    monkeypatch.setattr(Encoder, "encode", counting)
    return calls


def test_a_second_run_embeds_only_new_and_changed_files(checkpoints, archive, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    query = archive / "class_0" / "img_0.png"
    assert search(checkpoints["float"], archive, out, query) == 0
    first = load_index(out / "index.pt")
    calls = _count_encoded(monkeypatch)

    assert search(checkpoints["float"], archive, out, query) == 0  # nothing changed
    assert "index: 16 images (16 reused, 0 embedded, 0 removed)" in capsys.readouterr().out
    assert calls == [1]  # only the query went through the model
    written = (out / "index.pt").stat().st_mtime_ns

    touched, modified = archive / "class_0" / "img_1.png", archive / "class_1" / "img_0.png"
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same bytes, newer time
    shutil.copyfile(archive / "class_2" / "img_4.png", modified)  # other content
    _grid_image(np.random.default_rng(5)).save(archive / "class_2" / "new.png")
    (archive / "class_1" / "img_3.png").unlink()
    calls.clear()
    assert search(checkpoints["float"], archive, out, query) == 0
    assert "index: 16 images (13 reused, 3 embedded, 1 removed)" in capsys.readouterr().out
    assert sum(calls) == 3 + 1  # the touched, modified and new files, then the query
    refreshed = load_index(out / "index.pt")
    assert refreshed.paths == archive_paths(archive) and (out / "index.pt").stat().st_mtime_ns != written

    # the same vectors as an index built from scratch; unchanged files kept their old rows exactly
    assert search(checkpoints["float"], archive, tmp_path / "fresh", query) == 0
    fresh = load_index(tmp_path / "fresh" / "index.pt")
    np.testing.assert_allclose(refreshed.vectors, fresh.vectors, atol=1e-5)
    old_rows = dict(zip(first.paths, first.vectors))
    for path, row in zip(refreshed.paths, refreshed.vectors):
        if path not in ("class_0/img_1.png", "class_1/img_0.png", "class_2/new.png"):
            assert np.array_equal(row, old_rows[path])
    assert refreshed.vectors[refreshed.paths.index("class_1/img_0.png")] == pytest.approx(
        refreshed.vectors[refreshed.paths.index("class_2/img_4.png")], abs=1e-5)


def test_another_checkpoint_rebuilds_the_index(checkpoints, archive, tmp_path, capsys):
    out = tmp_path / "out"
    assert search(checkpoints["float"], archive, out, archive / "class_0" / "img_0.png") == 0
    assert search(checkpoints["hamming"], archive, out, archive / "class_0" / "img_0.png") == 0
    printed = capsys.readouterr().out
    assert "was built with another checkpoint; rebuilding it" in printed
    assert printed.count("(0 reused, 16 embedded, 0 removed)") == 2
    assert load_index(out / "index.pt").vectors.dtype == np.uint8


def test_unreadable_images_are_skipped_listed_and_not_retried(checkpoints, archive, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    broken = archive / "class_2" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    query = archive / "class_0" / "img_0.png"
    assert search(checkpoints["float"], archive, out, query) == 0
    printed = capsys.readouterr().out
    skipped = [line for line in printed.splitlines() if line.startswith("skipped:")]
    assert len(skipped) == 1 and str(broken) in skipped[0]
    assert "16 images (0 reused, 16 embedded, 0 removed), 1 unreadable skipped" in printed
    assert "class_2/broken.png" in load_index(out / "index.pt").unreadable

    calls = _count_encoded(monkeypatch)
    assert search(checkpoints["float"], archive, out, query) == 0  # known bad, unchanged: not decoded again
    assert calls == [1] and f"skipped: {broken}" in capsys.readouterr().out

    _grid_image(np.random.default_rng(3)).save(broken)  # repaired: embedded
    assert search(checkpoints["float"], archive, out, query) == 0
    printed = capsys.readouterr().out
    assert "17 images (16 reused, 1 embedded, 0 removed)" in printed and "skipped:" not in printed


# ----------------------------------------------------------------------------- errors
def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if line.startswith("error:") or "Traceback" in line]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_input_is_one_error_line(checkpoints, archive, tmp_path, capsys):
    good = checkpoints["float"]
    query = archive / "class_0" / "img_0.png"
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("no images")
    assert search(good, empty, tmp_path / "o", query) == 2
    assert "holds no images" in _one_error_line(capsys)
    assert search(good, tmp_path / "missing", tmp_path / "o", query) == 2
    assert "folder not found" in _one_error_line(capsys)
    assert search(good, archive, tmp_path / "o", tmp_path / "nope.png") == 2
    assert "--query" in _one_error_line(capsys)
    (tmp_path / "bad.png").write_text("text")
    assert search(good, archive, tmp_path / "o", tmp_path / "bad.png") == 2
    assert "cannot be read" in _one_error_line(capsys)
    assert search(good, archive, archive, query) == 2
    assert "archive folder itself" in _one_error_line(capsys)
    assert search(good, archive, tmp_path / "o", query, extra=["--topk", "0"]) == 2
    assert "--topk" in _one_error_line(capsys)

    assert search(tmp_path / "none.pt", archive, tmp_path / "o", query) == 2
    assert "--checkpoint" in _one_error_line(capsys)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": torch.zeros(2)}, foreign)
    text = tmp_path / "text.pt"
    text.write_text("hello")
    for path in (foreign, text):
        assert search(path, archive, tmp_path / "o", query) == 2
        assert "not a dmlrs" in _one_error_line(capsys)
    assert not (tmp_path / "o" / "index.pt").exists()


def test_an_archive_of_only_unreadable_images_is_an_error(checkpoints, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"nope")
    query = make_archive(tmp_path / "q", per_class=1) / "class_0" / "img_0.png"
    assert search(checkpoints["float"], bad, tmp_path / "o", query) == 2
    captured = capsys.readouterr()
    assert f"skipped: {bad / 'a.png'}" in captured.out and "none of the 1 images" in captured.err


# ----------------------------------------------------------------------------- older checkpoints
@pytest.mark.parametrize("kind", ["float", "hamming"])
def test_older_checkpoints_are_rebuilt_from_their_run_folder(kind, checkpoints, tmp_path):
    state = load_checkpoint(checkpoints[kind])
    for key in ("model_spec", "method_name", "hashing", "classes", "image_size"):
        del state[key]
    old = checkpoints[kind].parent / f"old_{kind}.pt"
    save_checkpoint(state, old)
    new_encoder = load_encoder(checkpoints[kind], torch.device("cpu"))
    old_encoder = load_encoder(old, torch.device("cpu"))
    assert (old_encoder.kind, old_encoder.image_size, old_encoder.classes) == \
        (new_encoder.kind, IMAGE_SIZE, CLASSES)
    assert old_encoder.identity == new_encoder.identity  # same weights, same encoding: the index is reused
    images = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert np.array_equal(old_encoder.encode(images), new_encoder.encode(images))

    moved = tmp_path / "moved.pt"
    shutil.copyfile(old, moved)
    with pytest.raises(Exception, match="predates self-describing checkpoints.*config.json.*missing"):
        load_encoder(moved, torch.device("cpu"))


# ----------------------------------------------------------------------------- ranking backends
def _random_case(kind: str, seed: int, n: int = 300, q: int = 7):
    rng = np.random.default_rng(seed)
    if kind == "cosine":
        x = rng.standard_normal((n + q, 12)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        x[5] = x[40]  # an exact tie
        return x[n:], x[:n]
    bits = rng.integers(0, 2, (n + q, 12)).astype(bool)  # 12 bits: many ties
    return np.packbits(bits, axis=1)[n:], np.packbits(bits, axis=1)[:n]


@pytest.mark.parametrize("kind", ["cosine", "hamming"])
def test_torch_ranking_equals_an_explicit_loop_with_ties_by_archive_order(kind):
    queries, archive = _random_case(kind, 0)
    scores, indices = rank(queries, archive, 25, kind=kind, backend="torch")
    for qi in range(len(queries)):
        if kind == "cosine":
            ref = [(-float(np.dot(queries[qi].astype(np.float64), archive[i].astype(np.float64))), i)
                   for i in range(len(archive))]
        else:
            q_bits = np.unpackbits(queries[qi])
            ref = [(int((q_bits != np.unpackbits(archive[i])).sum()), i) for i in range(len(archive))]
        ref.sort()
        if kind == "hamming":
            assert indices[qi].tolist() == [i for _, i in ref[:25]]
            assert scores[qi].tolist() == [s for s, _ in ref[:25]]
        else:
            np.testing.assert_allclose(scores[qi], [-s for s, _ in ref[:25]], atol=1e-6)
            assert indices[qi].tolist() == [i for _, i in ref[:25]]


@pytest.mark.parametrize("kind", ["cosine", "hamming"])
def test_faiss_and_torch_rank_identically_ties_at_the_cut_aside(kind, checkpoints, tmp_path, capsys):
    import faiss  # noqa: F401  (the optional extra dmlrs[faiss]; requirements.txt installs it for the tests)
    cases = [_random_case(kind, seed) for seed in (1, 2)]
    # and the vectors of a generated archive encoded by a trained checkpoint
    out = tmp_path / "out"
    archive = make_archive(tmp_path / "archive", per_class=12)
    checkpoint = checkpoints["float" if kind == "cosine" else "hamming"]
    assert search(checkpoint, archive, out, archive / "class_0" / "img_0.png", extra=["--backend", "faiss"]) == 0
    assert "(ranking: faiss)" in capsys.readouterr().out
    index = load_index(out / "index.pt")
    cases.append((index.vectors[::5], index.vectors))
    for queries, gallery in cases:
        for k in (1, 10, len(gallery)):
            t_scores, t_indices = rank(queries, gallery, k, kind=kind, backend="torch")
            f_scores, f_indices = rank(queries, gallery, k, kind=kind, backend="faiss")
            if kind == "hamming":
                assert np.array_equal(t_scores, f_scores)
            else:
                np.testing.assert_allclose(t_scores, f_scores, atol=1e-5)
            for row in range(len(queries)):
                last = t_scores[row, -1]
                near_cut = np.abs(t_scores[row] - last) <= (0 if kind == "hamming" else 1e-5)
                assert t_indices[row][~near_cut].tolist() == f_indices[row][~near_cut].tolist()


def test_without_faiss_auto_ranks_with_torch_and_faiss_is_refused(monkeypatch):
    import sys

    from dmlrs.errors import DmlrsError
    from dmlrs.retrieve.rank import resolve_backend

    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss raises ImportError
    assert resolve_backend("auto") == "torch"
    with pytest.raises(DmlrsError, match="faiss is not installed"):
        resolve_backend("faiss")


def test_an_output_folder_inside_the_archive_is_not_indexed(checkpoints, archive, capsys):
    out = archive / "results"
    for _ in range(2):
        assert search(checkpoints["float"], archive, out, archive / "class_0" / "img_0.png") == 0
    printed = capsys.readouterr().out
    assert "index: 16 images (16 reused, 0 embedded, 0 removed)" in printed  # gallery.png was not added
    assert (out / "gallery.png").is_file()


# ----------------------------------------------------------------------------- interrupted indexing
def _stop_on_call(monkeypatch, call: int, stop) -> list[int]:
    """Make model call number ``call`` run ``stop()`` (which raises) instead; records the images
    of every call that went through."""
    calls = []
    original = Encoder.encode

    def encode(self, images):
        if len(calls) + 1 == call:
            calls.append(0)
            stop()
        calls.append(int(images.shape[0]))
        return original(self, images)

    monkeypatch.setattr(Encoder, "encode", encode)
    return calls


def _raise_keyboard_interrupt():
    raise KeyboardInterrupt


def _send_sigterm():
    import signal

    os.kill(os.getpid(), signal.SIGTERM)  # the command's handler raises KeyboardInterrupt here


def _assert_same_index(index, fresh) -> None:
    assert index.paths == fresh.paths and index.files == fresh.files
    assert sorted(index.unreadable) == sorted(fresh.unreadable)
    np.testing.assert_allclose(index.vectors, fresh.vectors, atol=1e-5)


@pytest.mark.parametrize("stop, workers", [(_raise_keyboard_interrupt, "0"), (_send_sigterm, "1")],
                         ids=["ctrl-c", "sigterm-with-loader-process"])
def test_an_interrupted_first_indexing_keeps_its_work_and_the_next_run_continues(
        stop, workers, checkpoints, archive, tmp_path, capsys, monkeypatch):
    import signal

    out, query = tmp_path / "out", archive / "class_0" / "img_0.png"
    broken = archive / "class_0" / "broken.png"  # sorted before img_*: done in the first batch
    broken.write_bytes(b"not an image")
    handler = signal.getsignal(signal.SIGTERM)
    calls = _stop_on_call(monkeypatch, 3, stop)
    extra = ["--batch-size", "2", "--save-every", "0", "--workers", workers]
    assert search(checkpoints["float"], archive, out, query, extra=extra) == 130
    assert signal.getsignal(signal.SIGTERM) is handler  # restored
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("interrupted: saved ") and "run the same command again" in err[0]
    # batches of 2: {broken, img_0}, {img_1, img_2}, then the 3rd model call stopped the run
    assert "with 3 of the 17 archive images (4 done in this run)" in err[0] and "remaining 13" in err[0]
    partial = load_index(out / "index.pt")
    assert partial.paths == ["class_0/img_0.png", "class_0/img_1.png", "class_0/img_2.png"]
    assert list(partial.unreadable) == ["class_0/broken.png"]
    assert calls == [1, 2, 0]

    calls = _count_encoded(monkeypatch)
    assert search(checkpoints["float"], archive, out, query, extra=extra) == 0
    assert "index: 16 images (3 reused, 13 embedded, 0 removed), 1 unreadable skipped" in capsys.readouterr().out
    assert sum(calls) == 13 + 1  # the missing images, then the query; the broken file is not retried
    assert search(checkpoints["float"], archive, tmp_path / "fresh", query) == 0
    _assert_same_index(load_index(out / "index.pt"), load_index(tmp_path / "fresh" / "index.pt"))


def test_a_killed_indexing_keeps_what_the_last_periodic_write_saved(checkpoints, archive, tmp_path, capsys,
                                                                     monkeypatch):
    """A crash that runs no cleanup (as ``kill -9``) keeps the index of the last periodic write."""
    out, query = tmp_path / "out", archive / "class_0" / "img_0.png"

    def crash():
        raise SystemExit("killed")  # not a KeyboardInterrupt: nothing is saved on the way out

    _stop_on_call(monkeypatch, 6, crash)
    with pytest.raises(SystemExit):  # writes after 4 and 8 images (--save-every 4); the 6th call dies
        search(checkpoints["float"], archive, out, query, extra=["--batch-size", "2", "--save-every", "4"])
    assert len(load_index(out / "index.pt").files) == 8
    assert not list(out.glob(".index.pt.*"))  # no temporary file left behind

    calls = _count_encoded(monkeypatch)
    assert search(checkpoints["float"], archive, out, query, extra=["--batch-size", "2"]) == 0
    assert "index: 16 images (8 reused, 8 embedded, 0 removed)" in capsys.readouterr().out
    assert sum(calls) == 8 + 1
    assert search(checkpoints["float"], archive, tmp_path / "fresh", query) == 0
    _assert_same_index(load_index(out / "index.pt"), load_index(tmp_path / "fresh" / "index.pt"))


def test_save_schedule_counts_images_and_time_and_grows_with_the_index():
    from dmlrs.retrieve.schedule import SaveSchedule

    now = [0.0]
    schedule = SaveSchedule(every_images=100, every_seconds=60, clock=lambda: now[0])
    assert not schedule.due(99, 99) and schedule.due(1, 100)  # 100 images since the start
    schedule.write(lambda: None)
    assert not schedule.due(150, 5_000) and schedule.due(350, 5_000)  # a tenth of a 5,000-row index: 500
    schedule.write(lambda: None)
    now[0] = 59.9
    assert not schedule.due(1, 5_001)
    now[0] = 60.0
    assert schedule.due(0, 5_001)  # 60 s since the last write

    def slow_write():
        now[0] += 10.0  # a write that takes 10 s: the next one no sooner than 100 s later

    schedule.write(slow_write)
    assert schedule.writes == 3
    now[0] += 99.0
    assert not schedule.due(1, 5_002)
    now[0] += 1.0
    assert schedule.due(0, 5_002)
    never = SaveSchedule(every_images=0, clock=lambda: now[0])
    now[0] += 10**6
    assert not never.due(10**6, 1)


def test_a_file_that_is_not_a_training_checkpoint_gets_advice_for_the_search(checkpoints, archive, tmp_path,
                                                                              capsys):
    from dmlrs.engine.checkpoint import TRAINING_HINT
    from dmlrs.errors import DmlrsError

    foreign = tmp_path / "weights.pt"
    torch.save({"state_dict": torch.zeros(2)}, foreign)
    with pytest.raises(DmlrsError) as training:  # the training scripts' default advice
        load_checkpoint(foreign)
    assert str(training.value).endswith(f"; {TRAINING_HINT}.") and "--weights PATH" in str(training.value)
    with pytest.raises(DmlrsError) as plain:
        load_checkpoint(foreign, hint=None)
    assert str(plain.value).endswith("(no 'method'/'epoch' entries).")

    assert search(foreign, archive, tmp_path / "o", archive / "class_0" / "img_0.png") == 2
    line = _one_error_line(capsys)
    assert line == (f"error: {foreign} is not a dmlrs training checkpoint (no 'method'/'epoch' entries); "
                    "pass a checkpoints/best.pt or last.pt written by a train_*/main.py script.")


def test_linked_folders_are_followed_once_and_a_link_loop_ends(tmp_path):
    from dmlrs.retrieve.archive import list_archive

    real = tmp_path / "real" / "forest"
    real.mkdir(parents=True)
    for n in range(2):
        Image.new("RGB", (8, 8), (n, 0, 0)).save(real / f"f{n}.png")
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / "forest").symlink_to(real, target_is_directory=True)  # an archive assembled from links
    (real / "loop").symlink_to(archive, target_is_directory=True)  # and a link back up
    Image.new("RGB", (8, 8)).save(archive / "top.png")
    assert [f.relpath for f in list_archive(archive)] == ["forest/f0.png", "forest/f1.png", "top.png"]
