"""The pictures every training script makes at the end of a run, after ``test_metrics.json``.

Into ``<run>/pictures/``:

* ``retrieval_gallery.png``  a few test queries (spread over the classes), each followed by its
  top-8 in the train gallery, green/red borders for the same/another class, class names; borders
  and captions use the true classes (under label noise the train split's clean labels)
* ``embedding_tsne.png``     t-SNE map of the test embeddings coloured by class (at most 2,000
  points, a seeded subset; the title says so)
* ``ap_per_class.png``       the report's per-class AP, sorted, with the mAP
* ``precision_recall.png``   interpolated precision-recall curve of the test queries against the
  train gallery (:mod:`dmlrs.visualize.curves`)
* ``trnsl_pruning.png``      t-RNSL under label noise: kept fraction and clean fraction of the kept
  samples at each refresh, from ``metrics.jsonl`` (:mod:`dmlrs.visualize.pruning`)

With TensorBoard on (the default; ``--no-tensorboard`` turns it off) the same PNGs go to
``<run>/tb`` as images under ``pictures/``, and the test embeddings (the t-SNE subset) to the
embedding projector with thumbnails. Hashing methods are pictured with their float embeddings.

Nothing here can lose a run's results: the report is written before, and a picture that cannot
be made becomes one ``warning:`` line (the others are still made).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

PICTURES_DIR = "pictures"
GALLERY_THUMB = 112


@dataclass
class PictureResult:
    """What :func:`make_run_pictures` did: files written and one line per failure."""

    written: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def attempt(self, name: str, make: Callable[[], object]):
        """Run ``make()``; a failure becomes a warning naming ``name`` (returns None then)."""
        try:
            result = make()
        except Exception as exc:  # noqa: BLE001 - a picture must never stop the run
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            self.warnings.append(f"warning: could not make {name} ({reason})")
            return None
        first = result[0] if isinstance(result, tuple) and result else result
        if isinstance(first, Path):
            self.written.append(first)
        return result


def make_run_pictures(run_dir: str | Path, *, data, embeddings: dict, report: dict, method=None,
                      tensorboard: bool = True, global_step: int = 0, seed: int = 0, progress: bool = False,
                      max_points: int = 2000, title: str = "") -> PictureResult:
    """Write the pictures of one run (module docstring).

    ``data``: the run's ``DataBundle``; ``embeddings``: ``Evaluator.test_embeddings`` (test
    ``query``/``query_labels``, train ``gallery``/``gallery_labels``, CPU, dataset order);
    ``report``: the test report; ``method``: the trained method (t-RNSL's refresh epochs);
    ``seed``: query choice and subsampling; ``title``: prefix of the figure titles.
    """
    from dmlrs.visualize.curves import plot_ap_per_class, plot_precision_recall, precision_recall_curve
    from dmlrs.visualize.embedding_map import embedding_map, subsample
    from dmlrs.visualize.retrieval_examples import retrieval_gallery
    from dmlrs.visualize.thumbnails import load_thumbnail

    result = PictureResult()
    folder = Path(run_dir) / PICTURES_DIR
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        result.warnings.append(f"warning: could not make the pictures: cannot create {folder} ({exc.strerror or exc})")
        return result
    query, query_labels = embeddings["query"], embeddings["query_labels"]
    gallery, gallery_labels = embeddings["gallery"], embeddings["gallery_labels"]
    classes = list(data.classes)
    prefix = f"{title}: " if title else ""
    mean_ap = (report.get("retrieval") or {}).get("mAP")

    true_gallery_labels = gallery_labels
    clean = getattr(data, "train_clean_labels", None)
    if clean is not None and len(clean) == len(gallery_labels):
        true_gallery_labels = clean
    result.attempt("retrieval_gallery.png", lambda: retrieval_gallery(
        query, query_labels, gallery, true_gallery_labels, class_names=classes,
        query_image=lambda i: load_thumbnail(data.test, i, GALLERY_THUMB),
        gallery_image=lambda j: load_thumbnail(data.train_eval, j, GALLERY_THUMB),
        path=folder / "retrieval_gallery.png", seed=seed, thumb_size=GALLERY_THUMB,
        title=f"{prefix}test queries and their top 8 in the train gallery (green: same class)"))
    result.attempt("embedding_tsne.png", lambda: embedding_map(
        query.numpy(), query_labels.numpy(), classes, folder / "embedding_tsne.png",
        title=f"{prefix}t-SNE of the test embeddings", max_points=max_points, seed=seed))
    if report.get("AP_per_class"):
        result.attempt("ap_per_class.png", lambda: plot_ap_per_class(
            report["AP_per_class"], folder / "ap_per_class.png", mean_ap=mean_ap,
            title=f"{prefix}AP per class (test queries vs train gallery)"))
    result.attempt("precision_recall.png", lambda: plot_precision_recall(
        *precision_recall_curve(query, query_labels, gallery, gallery_labels), folder / "precision_recall.png",
        mean_ap=mean_ap, title=f"{prefix}precision-recall (test queries vs train gallery)"))
    _pruning_picture(Path(run_dir), folder, method, prefix, result)
    if tensorboard:
        chosen = subsample(len(query), max_points, seed)
        result.attempt("TensorBoard pictures and projector", lambda: _to_tensorboard(
            Path(run_dir) / "tb", result.written, data, query.numpy()[chosen], query_labels.numpy()[chosen],
            chosen, classes, global_step, progress))
    return result


def _pruning_picture(run_dir: Path, folder: Path, method, prefix: str, result: PictureResult) -> None:
    """``trnsl_pruning.png`` when the method has pruning rounds and metrics.jsonl logs them."""
    from dmlrs.visualize.pruning import CLEAN, plot_pruning, pruning_rounds, read_metrics

    is_refresh = getattr(method, "is_prune_epoch", None)
    metrics = run_dir / "metrics.jsonl"
    if is_refresh is None or not metrics.is_file():
        return
    rows = result.attempt("trnsl_pruning.png", lambda: read_metrics(metrics)) or []
    refresh_epochs = [row["epoch"] for row in rows  # metrics.jsonl counts epochs from 1, the hook from 0
                      if isinstance(row.get("epoch"), int) and is_refresh(row["epoch"] - 1)]
    if not any(CLEAN in row for row in rows) or not pruning_rounds(rows, refresh_epochs):
        return  # no label noise, or no refresh within the run
    result.attempt("trnsl_pruning.png", lambda: plot_pruning(
        rows, refresh_epochs, folder / "trnsl_pruning.png",
        title=f"{prefix}pruning rounds: kept samples and their clean labels"))


def _to_tensorboard(log_dir: Path, pictures: list[Path], data, vectors: np.ndarray, labels: np.ndarray,
                    items: np.ndarray, classes: list[str], global_step: int, progress: bool) -> None:
    """The PNGs as images under ``pictures/<name>``, and the projector with thumbnails."""
    from torch.utils.tensorboard import SummaryWriter

    from dmlrs.visualize.figures import read_png
    from dmlrs.visualize.projector import PROJECTOR_THUMB, add_projector
    from dmlrs.visualize.thumbnails import load_thumbnails

    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        for path in pictures:
            writer.add_image(f"pictures/{path.stem}", read_png(path), global_step, dataformats="HWC")
        thumbnails = load_thumbnails(data.test, items.tolist(), PROJECTOR_THUMB, progress=progress,
                                     desc="projector thumbnails")
        add_projector(writer, vectors, labels, classes, thumbnails, global_step=global_step)
    finally:
        writer.close()


def pictures_after_report(trainer, run_dir: str | Path, report: dict) -> PictureResult:
    """Make the run's pictures from a trainer whose evaluator just wrote ``report``; print where
    they went and one line per picture that failed. Never raises."""
    start = time.perf_counter()
    try:
        embeddings = trainer.evaluator.test_embeddings
        config = trainer.config
        result = make_run_pictures(run_dir, data=trainer.data, embeddings=embeddings, report=report,
                                   method=trainer.method, tensorboard=trainer.tensorboard,
                                   global_step=trainer.epoch, seed=config.seed, progress=config.progress,
                                   title=f"{getattr(trainer.method, 'name', 'run')} on {trainer.data.name}")
    except Exception as exc:  # noqa: BLE001 - the report is written; pictures are a bonus
        result = PictureResult(warnings=[f"warning: could not make the pictures ({type(exc).__name__}: {exc})"])
    for line in result.warnings:
        print(line, flush=True)
    if result.written:
        print(f"pictures: {len(result.written)} in {Path(run_dir) / PICTURES_DIR} "
              f"({time.perf_counter() - start:.1f} s)", flush=True)
    return result
