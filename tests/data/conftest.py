"""Data tests never touch the user's verification cache (~/.cache/dmlrs): each test gets its own."""
import pytest


@pytest.fixture(autouse=True)
def private_verification_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.mktemp("dmlrs_cache")
    monkeypatch.setenv("DMLRS_CACHE", str(cache))
    return cache
