"""Suite-wide settings: CPU only, one thread per test process, no network, and a private dmlrs
cache (decoded images, verification results) instead of the user's ~/.cache/dmlrs."""
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
_CACHE = tempfile.TemporaryDirectory(prefix="dmlrs-test-cache-")
os.environ["DMLRS_CACHE"] = _CACHE.name  # inherited by the scripts' subprocesses too

import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="module")
def _module_folders_removed_once_the_module_passes(request, tmp_path_factory):
    """Remove what a module's fixtures made with ``tmp_path_factory.mktemp`` when none of its tests
    failed (pytest's retention policy covers only ``tmp_path``); a failing module keeps them to look at."""
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    failures_before = request.session.testsfailed
    yield
    if request.session.testsfailed == failures_before:
        for path in set(base.iterdir()) - before:
            shutil.rmtree(path, ignore_errors=True)
