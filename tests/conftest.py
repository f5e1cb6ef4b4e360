"""Shared test set-up: hypothesis profiles and the `gpu` / `mpi` markers' skipping."""
import os
import shutil

import pytest
from hypothesis import HealthCheck, settings

# CI (CI=true): few examples, no deadline (2 shared cores make timings noisy), derandomized so runs repeat.
settings.register_profile("ci", max_examples=15, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=30, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def pytest_collection_modifyitems(config, items):
    from autograd.backend import cuda_available

    has_gpu = cuda_available()
    has_mpi = shutil.which("mpiexec") is not None
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        has_mpi = False
    skip_gpu = pytest.mark.skip(reason="needs CuPy and an NVIDIA GPU")
    skip_mpi = pytest.mark.skip(reason="needs mpi4py and mpiexec")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)
        if "mpi" in item.keywords and not has_mpi:
            item.add_marker(skip_mpi)
