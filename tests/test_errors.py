"""A DmlrsError raised in a DataLoader worker reaches the main process as one clean message."""
import pytest
from torch.utils.data import DataLoader, Dataset

from dmlrs.errors import DmlrsError


class Broken(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        raise DmlrsError(f"--flag X: item {index} cannot be made; do Y")


@pytest.mark.parametrize("workers", [0, 1])
def test_worker_error_keeps_its_type_and_one_line_message(workers):
    loader = DataLoader(Broken(), batch_size=2, num_workers=workers)
    with pytest.raises(DmlrsError) as error:
        next(iter(loader))
    assert str(error.value) == "--flag X: item 0 cannot be made; do Y"


def test_plain_messages_are_kept():
    assert str(DmlrsError("Caught nothing here")) == "Caught nothing here"
    assert str(DmlrsError()) == ""
