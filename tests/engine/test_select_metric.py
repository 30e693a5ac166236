"""``--select-metric hamming_P@20``: CDNE's checkpoint selection by Hamming precision@20 on the
validation split, checked against a slow reference, plus the selection rule and the errors."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dmlrs.data import build_data
from dmlrs.engine.config import SELECT_METRICS, TrainConfig, check_select_metric
from dmlrs.engine.evaluation import Evaluator
from dmlrs.engine.trainer import Trainer
from dmlrs.errors import DmlrsError
from dmlrs.methods.base import Method

METRIC = "hamming_P@20"


class TinyMethod(Method):
    """A linear layer on the per-channel image means. Its codes are rounded to integers, so many
    are exactly 0 (also -0.0) and, with 8 bits, many items share a code (Hamming ties)."""

    name = "TinyPlain"

    def __init__(self, num_bits: int = 8, scale: float = 2.0, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.model = nn.Linear(3, num_bits)
        self.scale = scale

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.mean(dim=(2, 3)))  # (B, 3, H, W) -> (B, 3) -> (B, num_bits)

    def training_step(self, batch: dict) -> dict:
        return {"loss": self.features(batch["image"]).pow(2).mean()}

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.features(images), dim=1)


class TinyHashing(TinyMethod):
    name = "TinyHashing"
    hashing = True

    def codes(self, images: torch.Tensor) -> torch.Tensor:
        return torch.round(self.features(images) * self.scale)


@pytest.fixture(scope="module")
def data():
    return build_data("demo", img_size=16)


def evaluator_for(method, data, **kwargs):
    return Evaluator(method, data, torch.device("cpu"), batch_size=32, num_workers=0, progress=False, **kwargs)


@torch.no_grad()
def codes_and_labels(method, dataset):
    """Codes of every item, computed here (not by the Evaluator): eval mode, one stacked batch."""
    method.eval()
    items = [dataset[i] for i in range(len(dataset))]
    codes = method.codes(torch.stack([item["image"] for item in items]))
    return codes.double().tolist(), [int(item["label"]) for item in items]


def reference_precision_at(query, query_labels, gallery, gallery_labels, k=20, *,
                           bit=lambda value: value > 0, tie=lambda g: g):
    """Explicit loops in float64: bits = bit(code) (the original: code > 0), gallery ranked by
    (Hamming distance, tie(gallery index)); P@k = hits in the first k / k, mean over ALL queries."""
    gallery_bits = [[bit(v) for v in code] for code in gallery]
    total = 0.0
    for q, code in enumerate(query):
        bits = [bit(v) for v in code]
        distance = [sum(1 for a, b in zip(bits, g) if a != b) for g in gallery_bits]
        order = sorted(range(len(gallery)), key=lambda g: (distance[g], tie(g)))
        total += sum(1 for g in order[:k] if gallery_labels[g] == query_labels[q]) / k
    return total / len(query)


def test_validate_matches_slow_reference_with_ties_and_exact_zeros(data):
    method = TinyHashing()
    scores = evaluator_for(method, data, select_metric=METRIC).validate()
    assert set(scores) == {"knn_acc", "mAP", METRIC}

    gallery, gallery_labels = codes_and_labels(method, data.train_eval)
    query, query_labels = codes_and_labels(method, data.val)
    expected = reference_precision_at(query, query_labels, gallery, gallery_labels)
    assert scores[METRIC] == pytest.approx(expected, abs=1e-12)

    # the data really exercises both rules: exact zeros (some -0.0) and tied Hamming distances
    flat = torch.tensor(gallery + query)
    assert (flat == 0).float().mean() > 0.2 and bool(((flat == 0) & flat.signbit()).any())
    assert len({tuple(v > 0 for v in code) for code in gallery}) < len(gallery) // 10
    # ... so a different zero rule or tie-break gives a different score
    as_positive = reference_precision_at(query, query_labels, gallery, gallery_labels, bit=lambda v: v >= 0)
    reversed_ties = reference_precision_at(query, query_labels, gallery, gallery_labels, tie=lambda g: -g)
    assert as_positive != pytest.approx(expected, abs=1e-9)
    assert reversed_ties != pytest.approx(expected, abs=1e-9)


def test_validate_of_a_plain_method_has_no_hamming_score(data):
    scores = evaluator_for(TinyMethod(), data, select_metric="mAP").validate()
    assert set(scores) == {"knn_acc", "mAP"}


def trainer_for(method, data, tmp_path, select_metric, epochs=4):
    config = TrainConfig(epochs=epochs, batch_size=16, steps_per_epoch=1, lr=0.01, device="cpu", num_workers=0,
                         select_metric=select_metric, progress=False)
    return Trainer(method, data, config, tmp_path / "run", tensorboard=False)


def test_selection_by_hamming_precision_keeps_the_first_epoch_with_the_highest_value(data, tmp_path, capsys):
    trainer = trainer_for(TinyHashing(), data, tmp_path, METRIC, epochs=5)
    # knn_acc and mAP peak elsewhere; hamming_P@20 peaks at epochs 2 and 3 (a tie: strict > keeps epoch 2)
    script = iter([(0.3, 0.9), (0.6, 0.1), (0.6, 0.2), (0.5, 0.95), (0.2, 0.99)])
    saved = []

    def validate():
        hamming, other = next(script)
        return {"knn_acc": other, "mAP": other, METRIC: hamming}

    trainer.evaluator.validate = validate
    original_save = trainer.save
    trainer.save = lambda name: saved.append((name, trainer.epoch)) or original_save(name)
    assert trainer.fit()
    assert (trainer.best_epoch, trainer.best_score) == (2, 0.6)
    assert [epoch for name, epoch in saved if name == "best"] == [1, 2]
    assert torch.load(trainer.checkpoint_dir / "best.pt", weights_only=False)["epoch"] == 2
    assert "val hamming_P@20 60.00% (best hamming_P@20 60.00% at epoch 2)" in capsys.readouterr().out


def test_real_validation_logs_the_hamming_score_and_selects_by_it(data, tmp_path):
    trainer = trainer_for(TinyHashing(), data, tmp_path, METRIC, epochs=3)
    assert trainer.fit()
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    values = [line["val"][METRIC] for line in lines]
    assert all(0.0 <= value <= 1.0 for value in values)
    assert trainer.best_epoch == values.index(max(values)) + 1 and trainer.best_score == max(values)


def test_hamming_metric_is_a_select_metric_choice():
    assert METRIC in SELECT_METRICS
    assert check_select_metric(METRIC, True) == METRIC
    for metric in ("knn_acc", "mAP"):
        assert check_select_metric(metric, False) == check_select_metric(metric, True) == metric


def test_hamming_metric_for_a_non_hashing_method_is_a_clear_error(data, tmp_path):
    with pytest.raises(DmlrsError, match=r"--select-metric hamming_P@20 only applies to hashing methods \(CDNE\)"):
        check_select_metric(METRIC, False)
    with pytest.raises(DmlrsError, match="--select-metric .*TinyPlain is not a hashing method"):
        check_select_metric(METRIC, False, "TinyPlain")
    with pytest.raises(DmlrsError, match="--select-metric .*hashing methods"):
        evaluator_for(TinyMethod(), data, select_metric=METRIC)
    with pytest.raises(DmlrsError, match="--select-metric .*hashing methods"):
        trainer_for(TinyMethod(), data, tmp_path, METRIC)
    with pytest.raises(DmlrsError, match="--select-metric 'recall' is not a validation score"):
        trainer_for(TinyHashing(), data, tmp_path, "recall")
