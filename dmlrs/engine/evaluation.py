"""Validation and the final test-split report.

Embeddings are always extracted fresh, with the model in eval mode on un-augmented images
(never read from stale memory-bank slots).

- Validation: kNN accuracy (k = 10, distance-weighted, train split as gallery) and mAP of the
  validation split against the train split. ``--select-metric`` picks the best checkpoint.
- Test report (with the best checkpoint): retrieval of the test split against the train split
  (mAP, mAP@R, P@k, R@k, per-class AP), leave-one-out retrieval within the test split, kNN
  accuracy (with clean training labels too when label noise is on) and, for hashing methods,
  Hamming-space retrieval of binarised codes.
"""
from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm

from dmlrs.engine.device import autocast
from dmlrs.engine.loaders import eval_loader
from dmlrs.methods.base import Method
from dmlrs.metrics import hamming_metrics, knn_accuracy, retrieval_metrics


class Evaluator:
    def __init__(self, method: Method, data, device: torch.device, *, batch_size: int,
                 num_workers: int, amp: bool = False, channels_last: bool = False, knn_k: int = 10,
                 progress: bool = True):
        self.method, self.data, self.device = method, data, device
        self.batch_size, self.num_workers = batch_size, num_workers
        self.amp, self.channels_last, self.knn_k, self.progress = amp, channels_last, knn_k, progress

    @torch.no_grad()
    def extract(self, dataset, encode: Callable[[torch.Tensor], torch.Tensor] | None = None,
                desc: str = "embedding") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(outputs (N, d) float32 on CPU, labels (N,), indices (N,))`` in dataset order."""
        encode = encode or self.method.embed
        was_training = self.method.training
        self.method.eval()
        outputs, labels, indices = [], [], []
        loader = eval_loader(dataset, self.batch_size, num_workers=self.num_workers,
                             pin_memory=self.device.type == "cuda")
        try:
            for batch in tqdm(loader, desc=desc, leave=False, disable=not self.progress):
                images = batch["image"].to(self.device, non_blocking=True)
                if self.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with autocast(self.device, self.amp):
                    outputs.append(encode(images).float().cpu())
                labels.append(batch["label"])
                indices.append(batch["index"])
        finally:
            self.method.train(was_training)
        return torch.cat(outputs), torch.cat(labels), torch.cat(indices)

    def validate(self) -> dict[str, float]:
        gallery, gallery_labels, _ = self.extract(self.data.train_eval, desc="embed train")
        query, query_labels, _ = self.extract(self.data.val, desc="embed val")
        return {
            "knn_acc": knn_accuracy(gallery, gallery_labels, query, query_labels, k=self.knn_k),
            "mAP": retrieval_metrics(query, query_labels, gallery, gallery_labels, ks=())["mAP"],
        }

    def test_report(self) -> dict:
        data = self.data
        gallery, gallery_labels, _ = self.extract(data.train_eval, desc="embed train")
        query, query_labels, _ = self.extract(data.test, desc="embed test")
        retrieval = retrieval_metrics(query, query_labels, gallery, gallery_labels)
        per_class = retrieval.pop("AP_per_class")
        report = {
            "knn_acc": knn_accuracy(gallery, gallery_labels, query, query_labels, k=self.knn_k),
            "retrieval": retrieval,
            "retrieval_leave_one_out": _without_per_class(retrieval_metrics(query, query_labels)),
            "AP_per_class": {data.classes[int(label)]: value for label, value in sorted(per_class.items())},
        }
        if data.noise is not None:
            clean = data.train_clean_labels
            report["knn_acc_clean_gallery"] = knn_accuracy(gallery, clean, query, query_labels, k=self.knn_k)
        if self.method.hashing:
            gallery_codes, _, _ = self.extract(data.train_eval, self.method.codes, desc="codes train")
            query_codes, _, _ = self.extract(data.test, self.method.codes, desc="codes test")
            report["hamming"] = hamming_metrics(query_codes, query_labels, gallery_codes, gallery_labels)
        return report


def _without_per_class(metrics: dict) -> dict:
    metrics.pop("AP_per_class", None)
    return metrics
