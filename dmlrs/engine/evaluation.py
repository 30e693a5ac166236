"""Validation and the final test-split report.

Embeddings are always extracted fresh, with the model in eval mode on un-augmented images
(never read from stale memory-bank slots). ``extract(..., seed=...)`` also embeds augmented
datasets (the t-RNSL refresh) with each image augmented under its own draw seed (see
``dmlrs.engine.loaders``), so the result does not depend on the number of loader workers.
Nothing here changes the training state or consumes the global RNGs: validation can be killed
and replayed at any point.

- Validation: kNN accuracy (k = 10, distance-weighted, train split as gallery) and mAP of the
  validation split against the train split; for hashing methods also ``hamming_P@20``, the
  original CDNE selection score: Hamming precision@20 of the binarised validation codes
  (bit = code > 0) against the train split's codes, averaged over all validation queries, ties
  broken by gallery index (:func:`dmlrs.metrics.hamming.hamming_precision_at`).
  ``--select-metric`` picks the best checkpoint by one of these (checked at construction with
  :func:`dmlrs.engine.config.check_select_metric`).
- Test report (with the best checkpoint): retrieval of the test split against the train split
  (mAP, mAP@R, P@k, R@k, per-class AP), leave-one-out retrieval within the test split, kNN
  accuracy (with clean training labels too when label noise is on) and, for hashing methods,
  Hamming-space retrieval of binarised codes.
- Metrics run on the evaluation device (the GPU when there is one: the extracted embeddings
  are moved there), in query chunks whose memory is bounded by the chunk size and linear in
  the gallery size (see ``dmlrs.metrics.retrieval``); on the CPU nothing is moved.
"""
from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm

from dmlrs.data.gpu_augment import finish_images
from dmlrs.engine import distributed, faults
from dmlrs.engine.config import HAMMING_SELECT_K, HAMMING_SELECT_METRIC, check_select_metric
from dmlrs.engine.device import autocast
from dmlrs.engine.loaders import eval_loader
from dmlrs.methods.base import Method
from dmlrs.metrics import hamming_metrics, hamming_precision_at, knn_accuracy, retrieval_metrics
from dmlrs.metrics.retrieval import default_ks


class Evaluator:
    def __init__(self, method: Method, data, device: torch.device, *, batch_size: int,
                 num_workers: int, amp: bool = False, channels_last: bool = False, knn_k: int = 10,
                 progress: bool = True, select_metric: str | None = None):
        """``select_metric``: the score the caller will select checkpoints by; when given it is
        checked against the method now (``hamming_P@20`` needs a hashing method)."""
        if select_metric is not None:
            check_select_metric(select_metric, method.hashing, getattr(method, "name", None))
        self.method, self.data, self.device = method, data, device
        self.batch_size, self.num_workers = batch_size, num_workers
        self.amp, self.channels_last, self.knn_k, self.progress = amp, channels_last, knn_k, progress

    @torch.no_grad()
    def extract(self, dataset, encode: Callable[[torch.Tensor], torch.Tensor] | None = None,
                desc: str = "embedding", seed: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(outputs (N, d) float32 on CPU, labels (N,), indices (N,))`` in dataset order.
        ``seed``: load image ``i`` under the draw seed of ``(seed, refresh stream, i)`` (for
        datasets with random augmentation)."""
        (outputs,), labels, indices = self.extract_many(dataset, (encode or self.method.embed,), desc=desc,
                                                        seed=seed)
        return outputs, labels, indices

    @torch.no_grad()
    def extract_many(self, dataset, encoders, desc: str = "embedding", seed: int | None = None
                     ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Like :meth:`extract` with several encoders in ONE pass over the data (each image is
        loaded once): ``([outputs of each encoder], labels, indices)``. Images are finished on the
        device by :func:`dmlrs.data.gpu_augment.finish_images`: with the cached input pipeline a
        uint8 batch is normalised there, or augmented when it carries augmentation parameters
        (a training split drawn with ``seed``, e.g. the t-RNSL refresh).

        Distributed training: a collective call. Rank r embeds batches r, r + W, ... of the pass
        (the batches and draw seeds of a single process, so the same embeddings) and every rank
        gets all outputs in dataset order (:func:`dmlrs.engine.distributed.gather_shards`): each
        rank embeds 1/W of the images and receives N x d values per encoder."""

        was_training = self.method.training
        self.method.eval()
        outputs = [[] for _ in encoders]
        labels, indices = [], []
        shard = (distributed.rank(), distributed.world_size()) if distributed.is_distributed() else None
        loader = eval_loader(dataset, self.batch_size, num_workers=self.num_workers,
                             pin_memory=self.device.type == "cuda", seed=seed, shard=shard)
        try:
            for batch in tqdm(loader, desc=desc, leave=False, disable=not self.progress):
                images = finish_images(batch["image"], self.device, batch.get("augment"))
                if self.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with autocast(self.device, self.amp):
                    for parts, encode in zip(outputs, encoders):
                        parts.append(encode(images).float().cpu())
                labels.append(batch["label"])
                indices.append(batch["index"])
        finally:
            self.method.train(was_training)
        if shard is None:
            return [torch.cat(parts) for parts in outputs], torch.cat(labels), torch.cat(indices)
        full, rest = divmod(len(dataset), self.batch_size)
        sizes = [self.batch_size] * full + ([rest] if rest else [])  # rows of every batch of the pass

        def gathered(parts: list[torch.Tensor]) -> torch.Tensor:
            return distributed.gather_shards(torch.cat(parts) if parts else None, sizes)

        return [gathered(parts) for parts in outputs], gathered(labels), gathered(indices)

    def validate(self) -> dict[str, float]:
        """``knn_acc`` and ``mAP`` (embeddings), plus ``hamming_P@20`` (codes) for hashing methods."""
        encoders = (self.method.embed, self.method.codes) if self.method.hashing else (self.method.embed,)
        (gallery, *gallery_codes), gallery_labels, _ = self.extract_many(self.data.train_eval, encoders,
                                                                         desc="embed train")
        faults.reached("validate")  # test-only: a kill in the middle of validation
        (query, *query_codes), query_labels, _ = self.extract_many(self.data.val, encoders, desc="embed val")
        gallery, gallery_labels, query, query_labels = self._on_metric_device(gallery, gallery_labels, query,
                                                                              query_labels)
        scores = {
            "knn_acc": knn_accuracy(gallery, gallery_labels, query, query_labels, k=self.knn_k),
            "mAP": retrieval_metrics(query, query_labels, gallery, gallery_labels, ks=())["mAP"],
        }
        if self.method.hashing:
            query_code, gallery_code = self._on_metric_device(query_codes[0], gallery_codes[0])
            scores[HAMMING_SELECT_METRIC] = hamming_precision_at(query_code, query_labels, gallery_code,
                                                                 gallery_labels, k=HAMMING_SELECT_K)
        return scores

    def test_report(self) -> dict:
        """The test split's report (module docstring); metrics on the evaluation device.

        The extracted embeddings stay on ``self.test_embeddings`` (CPU tensors, dataset order:
        ``query``/``query_labels`` of the test split, ``gallery``/``gallery_labels`` of the train
        split) for the run's pictures (:mod:`dmlrs.visualize.run_pictures`).

        P@k / R@k are reported for the default cut-offs plus the method's ``report_ks`` (its
        paper's), in both retrieval reports, for the k below the number of items a query ranks."""
        data = self.data
        gallery, gallery_labels, _ = self.extract(data.train_eval, desc="embed train")
        query, query_labels, _ = self.extract(data.test, desc="embed test")
        self.test_embeddings = {"query": query, "query_labels": query_labels, "gallery": gallery,
                                "gallery_labels": gallery_labels}
        gallery, gallery_labels, query, query_labels = self._on_metric_device(gallery, gallery_labels, query,
                                                                              query_labels)
        extra = self.method.report_ks
        retrieval = retrieval_metrics(query, query_labels, gallery, gallery_labels,
                                      ks=default_ks(gallery.shape[0], extra=extra))
        per_class = retrieval.pop("AP_per_class")
        report = {
            "knn_acc": knn_accuracy(gallery, gallery_labels, query, query_labels, k=self.knn_k),
            "retrieval": retrieval,
            "retrieval_leave_one_out": _without_per_class(
                retrieval_metrics(query, query_labels, ks=default_ks(query.shape[0] - 1, extra=extra))),
            "AP_per_class": {data.classes[int(label)]: value for label, value in sorted(per_class.items())},
        }
        if data.noise is not None:
            (clean,) = self._on_metric_device(data.train_clean_labels)
            report["knn_acc_clean_gallery"] = knn_accuracy(gallery, clean, query, query_labels, k=self.knn_k)
        if self.method.hashing:
            gallery_codes, _, _ = self.extract(data.train_eval, self.method.codes, desc="codes train")
            query_codes, _, _ = self.extract(data.test, self.method.codes, desc="codes test")
            query_codes, gallery_codes = self._on_metric_device(query_codes, gallery_codes)
            report["hamming"] = hamming_metrics(query_codes, query_labels, gallery_codes, gallery_labels)
        return report

    def _on_metric_device(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Move extracted embeddings/labels to the evaluation device when it is a GPU, so the
        metrics run there (their memory is bounded by the chunk size: see ``dmlrs.metrics``).
        On the CPU they stay as they are: the results are bit-identical to computing there."""
        if self.device.type == "cpu":
            return tensors
        return tuple(tensor.to(self.device) for tensor in tensors)


def _without_per_class(metrics: dict) -> dict:
    metrics.pop("AP_per_class", None)
    return metrics
