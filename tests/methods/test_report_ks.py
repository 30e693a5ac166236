"""A method's ``report_ks`` (its paper's cut-offs) join the default P@k / R@k of the test report,
under the same "only k below the number of ranked items" rule; SRL reports its paper's R@25/40/..."""
import torch

from dmlrs.engine.evaluation import Evaluator
from dmlrs.methods.base import Method
from dmlrs.methods.srl import SRL
from dmlrs.metrics import retrieval_metrics
from dmlrs.metrics.retrieval import DEFAULT_KS, default_ks
from tests.engine.scripts import FAST, only_run_dir, read_json, run_script

SRL_KS = (25, 40, 100, 130, 160, 180)


def cutoffs(report, prefix):
    """The k of the ``<prefix>k`` keys, in key order (test_metrics.json sorts keys as strings)."""
    return [int(key[len(prefix):]) for key in report if key.startswith(prefix) and key[len(prefix):].isdigit()]


def slow_recall_at(query, query_labels, gallery, gallery_labels, k):
    """R@k by explicit loops in float64: rank each query's gallery by cosine similarity (ties by
    index), count its relevant items in the top k, divide by all its relevant items."""
    recalls = []
    for q in range(query.shape[0]):
        scores = [float(torch.nn.functional.cosine_similarity(query[q].double(), g.double(), dim=0))
                  for g in gallery]
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        relevant = [int(gallery_labels[i]) == int(query_labels[q]) for i in order]
        if sum(relevant):
            recalls.append(sum(relevant[:k]) / sum(relevant))
    return sum(recalls) / len(recalls)


def test_methods_declare_no_extra_cutoffs_by_default_and_srl_its_papers():
    assert Method.report_ks == ()
    assert SRL.report_ks == SRL_KS


def test_extra_cutoffs_are_merged_sorted_and_cut_at_the_ranked_items():
    assert default_ks(420, extra=SRL_KS) == (1, 5, 10, 25, 40, 50, 100, 130, 160, 180)
    assert default_ks(150, extra=SRL_KS) == (1, 5, 10, 25, 40, 50, 100, 130)  # 160, 180 >= 150 ranked
    assert default_ks(5000, extra=(3, 50)) == (1, 3, 5, 10, 50, 100, 1000)  # no repeated 50
    assert default_ks(420, extra=()) == default_ks(420)


def test_recall_at_an_extra_cutoff_matches_a_slow_loop():
    generator = torch.Generator().manual_seed(3)
    query, gallery = torch.randn(12, 6, generator=generator), torch.randn(60, 6, generator=generator)
    query_labels, gallery_labels = torch.arange(12) % 3, torch.arange(60) % 3
    report = retrieval_metrics(query, query_labels, gallery, gallery_labels, ks=default_ks(60, extra=(25, 40)))
    assert cutoffs(report, "R@") == [1, 5, 10, 25, 40, 50]
    for k in (25, 40):
        assert abs(report[f"R@{k}"] - slow_recall_at(query, query_labels, gallery, gallery_labels, k)) < 1e-6


def test_srl_demo_run_reports_the_papers_cutoffs(tmp_path, monkeypatch):
    embeddings = {}
    original = Evaluator.test_report

    def keep_embeddings(self):  # the report's own embeddings, to recompute it with explicit ks
        report = original(self)
        embeddings.update(self.test_embeddings)
        return report

    monkeypatch.setattr(Evaluator, "test_report", keep_embeddings)
    argv = ["--dataset", "demo", "--epochs", "1", "--steps-per-epoch", "1", "--out", str(tmp_path), *FAST,
            "--classes-per-batch", "2", "--images-per-class", "4"]
    assert run_script("SRL", argv) == 0
    report = read_json(only_run_dir(tmp_path) / "test_metrics.json")
    retrieval = report["retrieval"]
    assert embeddings["gallery"].shape[0] == 420  # the demo's training split: every SRL k is below it
    expected_ks = sorted({*DEFAULT_KS, *SRL_KS} - {1000})
    assert sorted(cutoffs(retrieval, "R@")) == sorted(cutoffs(retrieval, "P@")) == expected_ks
    explicit = retrieval_metrics(embeddings["query"], embeddings["query_labels"], embeddings["gallery"],
                                 embeddings["gallery_labels"], ks=expected_ks)
    explicit.pop("AP_per_class")
    assert retrieval == explicit
    # leave-one-out within the test split: the same rule against its Q - 1 ranked items
    ranked = embeddings["query"].shape[0] - 1
    loo = report["retrieval_leave_one_out"]
    assert sorted(cutoffs(loo, "R@")) == [k for k in expected_ks if k < ranked]
