"""Suite-wide settings: CPU only, one thread per test process, no network, and a private dmlrs
cache (decoded images, verification results) instead of the user's ~/.cache/dmlrs."""
import os
import tempfile

os.environ.setdefault("OMP_NUM_THREADS", "1")
_CACHE = tempfile.TemporaryDirectory(prefix="dmlrs-test-cache-")
os.environ["DMLRS_CACHE"] = _CACHE.name  # inherited by the scripts' subprocesses too

import torch  # noqa: E402

torch.set_num_threads(1)
