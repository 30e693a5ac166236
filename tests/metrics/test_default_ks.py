"""Default cut-offs: P@k / R@k only for k below the number of ranked gallery items; explicit ks as asked."""
import torch

from dmlrs.metrics import hamming_metrics, retrieval_metrics
from dmlrs.metrics.retrieval import DEFAULT_KS, default_ks


def data(num_query, num_gallery, seed=0):
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(num_query, 8, generator=generator)
    gallery = torch.randn(num_gallery, 8, generator=generator)
    return (query, torch.arange(num_query) % 3, gallery, torch.arange(num_gallery) % 3)


def cutoffs(report, prefix):
    return sorted(int(key[len(prefix):]) for key in report
                  if key.startswith(prefix) and key[len(prefix):].isdigit())  # not "P@H<=2"


def test_default_ks_keeps_only_cutoffs_below_the_ranked_items():
    assert default_ks(420) == (1, 5, 10, 50, 100)
    assert default_ks(100) == (1, 5, 10, 50)  # P@100 of a 100-item gallery is the class balance
    assert default_ks(101) == (1, 5, 10, 50, 100)
    assert default_ks(1) == ()
    assert default_ks(5000) == DEFAULT_KS


def test_retrieval_report_on_a_420_image_gallery_has_no_p_or_r_at_1000():
    query, query_labels, gallery, gallery_labels = data(30, 420)
    report = retrieval_metrics(query, query_labels, gallery, gallery_labels)
    assert cutoffs(report, "P@") == cutoffs(report, "R@") == [1, 5, 10, 50, 100]
    explicit = retrieval_metrics(query, query_labels, gallery, gallery_labels, ks=(1, 5, 10, 50, 100))
    assert report == explicit  # the kept values are exactly the explicit ones


def test_leave_one_out_counts_the_query_out_of_its_ranking():
    query, labels, _, _ = data(101, 1)
    assert cutoffs(retrieval_metrics(query, labels), "P@") == [1, 5, 10, 50]  # 100 ranked items
    query, labels, _, _ = data(102, 1)
    assert cutoffs(retrieval_metrics(query, labels), "P@") == [1, 5, 10, 50, 100]  # 101 ranked items


def test_explicitly_requested_cutoffs_are_all_computed():
    query, query_labels, gallery, gallery_labels = data(10, 20)
    report = retrieval_metrics(query, query_labels, gallery, gallery_labels, ks=(1, 1000))
    assert cutoffs(report, "P@") == [1, 1000]
    relevant = (query_labels.unsqueeze(1) == gallery_labels.unsqueeze(0)).sum(1).double()
    assert abs(report["P@1000"] - float((relevant / 1000).mean())) < 1e-12  # divides by k, as defined
    assert report["R@1000"] == 1.0


def test_hamming_report_drops_the_same_cutoffs():
    query, query_labels, gallery, gallery_labels = data(12, 60)
    report = hamming_metrics(query, query_labels, gallery, gallery_labels)
    assert cutoffs(report, "P@") == [1, 5, 10, 50]
    assert "mAP@100" in report  # the hashing papers' MAP@100 is not a P@k/R@k row
    explicit = hamming_metrics(query, query_labels, gallery, gallery_labels, ks=(1, 5, 10, 50))
    assert report == explicit
    assert cutoffs(hamming_metrics(query, query_labels, gallery, gallery_labels, ks=(1000,)), "P@") == [1000]
    loo = hamming_metrics(query, query_labels)  # 11 ranked items
    assert cutoffs(loo, "P@") == [1, 5, 10]
