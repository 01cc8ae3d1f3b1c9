"""Fixtures shared by several test files (pytest finds them by name)."""

from __future__ import annotations

import numpy as np
import pytest
import torch


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
