"""knn_predict / knn_accuracy must reproduce scikit-learn's KNeighborsClassifier predictions."""
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from dmlrs.errors import DmlrsError
from dmlrs.metrics.knn import knn_accuracy, knn_predict


def sklearn_predict(train, train_labels, test, k, weights):
    classifier = KNeighborsClassifier(n_neighbors=k, weights=weights).fit(train.numpy(), train_labels.numpy())
    return torch.from_numpy(classifier.predict(test.numpy()))


def random_split(seed, num_train=120, num_test=60, dim=6, num_classes=5):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (num_train,), generator=generator) * 3 + 2  # labels 2, 5, 8, ...
    train = torch.randn(num_train, dim, generator=generator) + labels.unsqueeze(1) * 0.1
    test = torch.randn(num_test, dim, generator=generator)
    return train, labels, test, generator


@pytest.mark.parametrize("weights", ["distance", "uniform"])
@pytest.mark.parametrize("k,chunk_size", [(1, 1024), (3, 7), (10, 1024), (10, 1)])
def test_predictions_match_sklearn(weights, k, chunk_size):
    train, labels, test, _ = random_split(seed=k * 10 + chunk_size)
    ours = knn_predict(train, labels, test, k=k, weights=weights, chunk_size=chunk_size)
    assert ours.dtype == torch.int64
    assert torch.equal(ours, sklearn_predict(train, labels, test, k, weights))


@pytest.mark.parametrize("weights", ["distance", "uniform"])
def test_exact_duplicates_use_only_zero_distance_neighbours_like_sklearn(weights):
    train, labels, test, _ = random_split(seed=5)
    # a train point repeated 3 times with labels 2, 2, 5, and test points equal to train points
    train[10:13] = train[9]
    labels[9:13] = torch.tensor([5, 2, 2, 5])
    test[:20] = train[:20]
    ours = knn_predict(train, labels, test, k=10, weights=weights, chunk_size=8)
    assert torch.equal(ours, sklearn_predict(train, labels, test, 10, weights))
    if weights == "distance":
        expected = labels[:20].clone()  # a test point equal to train point i: only i votes...
        expected[9:13] = 2  # ...except the four duplicates (labels 5, 2, 2, 5): 2-2 tie, smaller label wins
        assert torch.equal(ours[:20], expected)


@pytest.mark.parametrize("weights", ["distance", "uniform"])
def test_k_larger_than_training_set_uses_all_training_points(weights):
    train, labels, test, _ = random_split(seed=6, num_train=8)
    ours = knn_predict(train, labels, test, k=50, weights=weights)
    assert torch.equal(ours, sklearn_predict(train, labels, test, 8, weights))


def test_accuracy_is_fraction_of_correct_sklearn_predictions():
    train, labels, test, generator = random_split(seed=7)
    test_labels = labels[torch.randint(0, 120, (60,), generator=generator)]
    expected = float((sklearn_predict(train, labels, test, 10, "distance") == test_labels).double().mean())
    accuracy = knn_accuracy(train, labels, test, test_labels, chunk_size=16)
    assert type(accuracy) is float and accuracy == pytest.approx(expected, abs=1e-12)
    assert knn_accuracy(train, labels, train, labels, k=1) == 1.0  # each point is its own neighbour


def test_bad_arguments_are_named():
    train, labels, test, _ = random_split(seed=8)
    with pytest.raises(DmlrsError, match="weights"):
        knn_predict(train, labels, test, weights="gaussian")
    with pytest.raises(DmlrsError, match="k must be"):
        knn_predict(train, labels, test, k=0)
    with pytest.raises(DmlrsError, match="width"):
        knn_predict(train, labels, test[:, :3])
    with pytest.raises(DmlrsError, match="test_labels"):
        knn_accuracy(train, labels, test, labels)
