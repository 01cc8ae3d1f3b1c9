"""MATLAB's arithmetic where it differs from Python's and numpy's (a leaf every part may import)."""

from __future__ import annotations

import math

import numpy as np


def matlab_round(x):
    """MATLAB's ``round``: to the nearest integer, halves away from zero (Python and numpy round
    halves to even: round(2.5) = 2 there, 3 in MATLAB).

    Args:
        x: a number or an array.

    Returns:
        an int for a scalar; a float64 array of whole numbers for an array.
    """
    if np.ndim(x) == 0:
        return int(math.copysign(math.floor(abs(float(x)) + 0.5), float(x)))
    a = np.asarray(x, dtype=np.float64)
    return np.sign(a) * np.floor(np.abs(a) + 0.5)
