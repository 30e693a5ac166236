"""The evaluator computes its metrics on the evaluation device: nothing moves on the CPU (results
bit-identical to calling the metrics directly), everything moves to the GPU when there is one."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dmlrs.data import build_data
from dmlrs.engine.evaluation import Evaluator
from dmlrs.methods.base import Method
from dmlrs.metrics import hamming_metrics, knn_accuracy, retrieval_metrics


class TinyHashing(Method):
    """A linear layer on the per-channel image means, with codes."""

    name = "TinyHashing"
    hashing = True

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.model = nn.Linear(3, 16)

    def features(self, images):
        return self.model(images.mean(dim=(2, 3)))

    def training_step(self, batch):
        return {"loss": self.features(batch["image"]).pow(2).mean()}

    def embed(self, images):
        return F.normalize(self.features(images), dim=1)

    def codes(self, images):
        return self.features(images)


@pytest.fixture(scope="module")
def data():
    return build_data("demo", img_size=16)


def evaluator(data, device):
    method = TinyHashing().to(device)
    return Evaluator(method, data, torch.device(device), batch_size=32, num_workers=0, progress=False)


def test_cpu_report_equals_the_metrics_called_directly(data):
    ev = evaluator(data, "cpu")
    report = ev.test_report()
    gallery, gallery_labels, _ = ev.extract(data.train_eval)
    query, query_labels, _ = ev.extract(data.test)
    expected = retrieval_metrics(query, query_labels, gallery, gallery_labels)
    expected.pop("AP_per_class")
    assert report["retrieval"] == expected
    assert report["knn_acc"] == knn_accuracy(gallery, gallery_labels, query, query_labels, k=10)
    codes_g, _, _ = ev.extract(data.train_eval, ev.method.codes)
    codes_q, _, _ = ev.extract(data.test, ev.method.codes)
    assert report["hamming"] == hamming_metrics(codes_q, query_labels, codes_g, gallery_labels)
    tensors = (gallery, query_labels)
    assert all(a is b for a, b in zip(ev._on_metric_device(*tensors), tensors))  # nothing copied on the CPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_report_matches_the_cpu_report(data):
    cpu, gpu = evaluator(data, "cpu"), evaluator(data, "cuda")
    gpu.method.load_state_dict(cpu.method.state_dict())
    moved = gpu._on_metric_device(torch.zeros(3), torch.zeros(2, dtype=torch.long))
    assert all(t.device.type == "cuda" for t in moved)
    cpu_report, gpu_report = cpu.test_report(), gpu.test_report()
    assert gpu_report.keys() == cpu_report.keys()
    assert gpu_report["retrieval"]["mAP"] == pytest.approx(cpu_report["retrieval"]["mAP"], abs=1e-3)
    assert gpu_report["hamming"]["mAP"] == pytest.approx(cpu_report["hamming"]["mAP"], abs=1e-3)
    assert gpu_report["knn_acc"] == pytest.approx(cpu_report["knn_acc"], abs=0.02)
    scores = gpu.validate()
    assert scores.keys() == cpu.validate().keys()
