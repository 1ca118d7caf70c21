"""Shared test setup: GPU tests skip cleanly without CUDA; hub access is off for every test; the Arrow copies
`datasets` makes of data files go to a temporary folder (this session's, its processes' too), not the user's cache."""

import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# pytest-xdist's workers set COLUMNS=80 (and LINES): tables and text fit COLUMNS, so output would depend on how the
# tests were started. A test that wants a width sets it.
for name in ("COLUMNS", "LINES"):
    os.environ.pop(name, None)
if "HF_DATASETS_CACHE" not in os.environ:
    os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="tamer-tests-datasets-")
    atexit.register(shutil.rmtree, os.environ["HF_DATASETS_CACHE"], True)


def pytest_collection_modifyitems(config, items):
    for item in items:  # `pytest -m "not slow"`: everything but the tests that start real training processes
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.slow)
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine: pytest -m gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
