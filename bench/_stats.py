"""Figures every benchmark reports the same way."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def percentile(values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile (`share` in 0..1): a latency some request really had, the
    smallest one with at least `share` of the requests at or under it."""
    return float(np.percentile(values, share * 100, method="inverted_cdf"))
