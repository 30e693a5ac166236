"""ClassBalancedBatchSampler: C x K composition, determinism per (seed, epoch), coverage, errors."""

from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from dmlrs.data.samplers import ClassBalancedBatchSampler
from dmlrs.errors import DmlrsError


def balanced_labels(classes=6, per_class=10):
    return [c for c in range(classes) for _ in range(per_class)]


def epoch_batches(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


def assert_c_by_k(batch, labels, c, k):
    """Exactly C distinct classes, K images each, laid out as contiguous class blocks."""
    assert len(batch) == c * k
    blocks = [[labels[i] for i in batch[b * k:(b + 1) * k]] for b in range(c)]
    assert all(len(set(block)) == 1 for block in blocks)
    assert len({block[0] for block in blocks}) == c


@pytest.mark.parametrize("c,k", [(2, 3), (3, 5), (6, 1), (1, 4)])
def test_every_batch_is_c_classes_by_k_images(c, k):
    labels = balanced_labels() + [7] * 13 + [9] * 4  # two extra classes of odd sizes
    sampler = ClassBalancedBatchSampler(labels, c, k, seed=3)
    for epoch in range(3):
        batches = epoch_batches(sampler, epoch)
        assert len(batches) == len(sampler)
        for batch in batches:
            assert_c_by_k(batch, labels, c, k)
            # Classes of at least K images never repeat an image inside a batch (class 9 is smaller).
            large = [i for i in batch if labels[i] != 9]
            assert len(set(large)) == len(large)


def test_default_length_is_about_one_pass():
    labels = balanced_labels(classes=6, per_class=10)
    assert len(ClassBalancedBatchSampler(labels, 3, 5)) == len(labels) // 15
    uneven = [0] * 7 + [1] * 7 + [2] * 7  # chunks of 5: two per class (last one topped up)
    assert len(ClassBalancedBatchSampler(uneven, 3, 5)) == 2
    assert len(ClassBalancedBatchSampler(labels, 3, 5, num_batches=17)) == 17
    assert len(list(ClassBalancedBatchSampler(labels, 3, 5, num_batches=17))) == 17


def test_same_seed_and_epoch_give_the_same_batches():
    labels = balanced_labels()
    first = ClassBalancedBatchSampler(labels, 3, 4, seed=11)
    second = ClassBalancedBatchSampler(labels, 3, 4, seed=11)
    assert epoch_batches(first, 5) == epoch_batches(second, 5)
    # Going back to an epoch (resume) reproduces it exactly.
    epoch_two = epoch_batches(first, 2)
    epoch_batches(first, 3)
    assert epoch_batches(first, 2) == epoch_two


def test_different_epochs_and_seeds_differ():
    labels = balanced_labels()
    sampler = ClassBalancedBatchSampler(labels, 3, 4, seed=0)
    assert epoch_batches(sampler, 0) != epoch_batches(sampler, 1)
    other_seed = ClassBalancedBatchSampler(labels, 3, 4, seed=1)
    assert epoch_batches(sampler, 0) != epoch_batches(other_seed, 0)


@pytest.mark.parametrize("classes,per_class,c,k", [(6, 10, 3, 5), (5, 12, 2, 4), (7, 9, 3, 4), (4, 6, 4, 3)])
def test_balanced_epoch_covers_every_image(classes, per_class, c, k):
    labels = balanced_labels(classes, per_class)
    sampler = ClassBalancedBatchSampler(labels, c, k, seed=classes)
    for epoch in range(4):
        seen = {i for batch in epoch_batches(sampler, epoch) for i in batch}
        assert seen == set(range(len(labels)))


def test_unbalanced_epoch_covers_every_image():
    labels = [c for c, size in enumerate([22, 30, 42, 25, 37]) for _ in range(size)]
    sampler = ClassBalancedBatchSampler(labels, 2, 5, seed=4)
    for epoch in range(4):
        batches = epoch_batches(sampler, epoch)
        assert all(len({labels[i] for i in batch}) == 2 for batch in batches)
        assert {i for batch in batches for i in batch} == set(range(len(labels)))


def test_one_dominant_class_still_gives_c_by_k_batches():
    labels = [0] * 3000 + [1] * 3 + [2] * 6
    sampler = ClassBalancedBatchSampler(labels, 2, 5, seed=0)
    batches = list(sampler)
    assert len(batches) == (600 + 1 + 2 + 1) // 2
    for batch in batches:
        assert_c_by_k(batch, labels, 2, 5)
    assert sum(labels[batch[0]] == 0 or labels[batch[5]] == 0 for batch in batches) == len(batches)


def test_class_smaller_than_k_is_sampled_with_replacement():
    labels = balanced_labels(classes=3, per_class=8) + [5, 5]  # class 5 has two images, K = 4
    small = {24, 25}
    sampler = ClassBalancedBatchSampler(labels, 4, 4, num_batches=6, seed=2)
    batches = epoch_batches(sampler, 0)
    for batch in batches:
        assert_c_by_k(batch, labels, 4, 4)  # C = all four classes, so class 5 is in every batch
        drawn = [i for i in batch if labels[i] == 5]
        assert len(drawn) == 4 and set(drawn) == small  # both images, plus repeats


def test_unlabelled_entries_are_never_sampled():
    labels = balanced_labels(classes=4, per_class=6)
    labels[3] = labels[10] = labels[20] = -1
    sampler = ClassBalancedBatchSampler(labels, 2, 3, num_batches=40, seed=0)
    drawn = Counter(i for batch in sampler for i in batch)
    assert not {3, 10, 20} & set(drawn)
    assert len(drawn) == len(labels) - 3


def test_accepts_tensor_labels_and_feeds_a_dataloader():
    labels = torch.tensor(balanced_labels(classes=4, per_class=5))
    dataset = TensorDataset(torch.randn(len(labels), 2), labels)
    loader = DataLoader(dataset, batch_sampler=ClassBalancedBatchSampler(labels, 2, 3, seed=0))
    shapes = [(x.shape, y.shape) for x, y in loader]
    assert len(shapes) == len(loader.batch_sampler)
    assert all(xs == (6, 2) and ys == (6,) for xs, ys in shapes)


@pytest.mark.parametrize(
    "args,kwargs,flag",
    [
        ((balanced_labels(classes=4), 5, 2), {}, "--classes-per-batch"),
        ((balanced_labels(classes=4), 0, 2), {}, "--classes-per-batch"),
        ((balanced_labels(classes=4), 2, 0), {}, "--images-per-class"),
        ((balanced_labels(classes=4), 2, 2), {"num_batches": 0}, "number of batches"),
        ((balanced_labels(classes=4), 2, 2), {"seed": -1}, "--seed"),
        (([-1, -1, -1], 1, 2), {}, "no labelled images"),
    ],
)
def test_impossible_settings_raise_dmlrs_error(args, kwargs, flag):
    with pytest.raises(DmlrsError, match=flag):
        ClassBalancedBatchSampler(*args, **kwargs)


def test_too_many_classes_message_names_the_available_count():
    with pytest.raises(DmlrsError, match="larger than the 3 classes"):
        ClassBalancedBatchSampler([0, 1, 2, -1], 4, 2)
