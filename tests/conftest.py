"""Fixtures shared by several test files (pytest finds them by name)."""

from __future__ import annotations

import os

# Under pytest-xdist (`make test`: one worker per core) every worker, and every process a test starts,
# computes on one thread: two workers of two OpenMP/BLAS threads each on two cores spent their time
# waiting for each other's threads. Set before numpy, torch and FAISS read them.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture
def one_thread():
    """torch on one thread: tiny convolutions are dominated by thread start-up on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def caffe_weights():
    """CaffeNet up to conv5 (2.3M weights: the cheap network for the many small conversion cases)."""
    from convert_reference import caffe_ref_backbone

    return caffe_ref_backbone(np.random.default_rng(10), with_fc=False)[:-2]
