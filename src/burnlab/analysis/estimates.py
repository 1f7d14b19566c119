"""Bootstrap intervals: each metric of a checkpoint's N samples recomputed on resamples of them.

    statistic = per_image_mean(values)               # values: float [N], NaN = not applicable
    estimate = bootstrap(statistic, count=9)          # Estimate(value, low, high, se)

A statistic maps a [B, N] array of image indices (B resamples of the N samples, drawn with
replacement) to B values, so a metric is recomputed on a thousand resamples in a few vectorised
numpy calls. The same fixed-seed resamples serve every metric of a table: intervals are
reproducible, and two checkpoints' intervals come from the same draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

RESAMPLES = 1000  # bootstrap resamples per estimate
LEVEL = 0.95  # the interval's coverage (percentile interval)
SEED = 0  # the resamples' seed: the same draws for every checkpoint and metric

Statistic = Callable[[np.ndarray], np.ndarray]  # int [B, N] image indices -> float [B]


@dataclass(frozen=True)
class Estimate:
    """A metric's value on all N samples, its bootstrap percentile interval and standard error."""

    value: float
    low: float
    high: float
    se: float


def per_image_mean(values: np.ndarray) -> Statistic:
    """The mean of per-image values; NaN entries (images the metric does not apply to) are left
    out, and a resample with none left gives NaN."""
    values = np.asarray(values, dtype=np.float64)

    def statistic(indices: np.ndarray) -> np.ndarray:
        picked = values[indices]
        counts = np.sum(~np.isnan(picked), axis=1)
        sums = np.nansum(picked, axis=1)
        return np.divide(sums, counts, out=np.full(len(indices), np.nan), where=counts > 0)

    return statistic


def clipped_mean(values: np.ndarray, scale: float) -> Statistic:
    """scale * max(mean, 0): a score averaged first, then clamped (as torchmetrics' CLIP score)."""
    mean = per_image_mean(values)
    return lambda indices: scale * np.maximum(mean(indices), 0.0)


def pairwise_mean(distances: np.ndarray) -> Statistic:
    """The mean distance over pairs of distinct samples (a sample drawn twice is not a pair with
    itself, so resampling does not invent zero distances); 0 when no such pair exists."""
    distances = np.asarray(distances, dtype=np.float64)

    def statistic(indices: np.ndarray) -> np.ndarray:
        distinct = indices[:, :, None] != indices[:, None, :]
        picked = distances[indices[:, :, None], indices[:, None, :]]
        counts = distinct.sum(axis=(1, 2))
        return np.divide((picked * distinct).sum(axis=(1, 2)), counts, out=np.zeros(len(indices)), where=counts > 0)

    return statistic


def pooled_hellinger(histograms: np.ndarray, reference: np.ndarray) -> Statistic:
    """Hellinger distance between the pooled histogram of the picked samples (rows of
    `histograms`: per-image bin counts) and a fixed reference distribution (sums to 1)."""
    histograms = np.asarray(histograms, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)

    def statistic(indices: np.ndarray) -> np.ndarray:
        pooled = histograms[indices].sum(axis=1)
        pooled /= pooled.sum(axis=1, keepdims=True)
        overlap = np.sqrt(pooled * reference[None, :]).sum(axis=1)
        return np.sqrt(np.clip(1.0 - overlap, 0.0, None))

    return statistic


def resamples(count: int, number: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """int [number, count]: `number` draws of `count` indices with replacement, fixed by `seed`."""
    return np.random.default_rng([seed, count]).integers(0, count, size=(number, count))


def bootstrap(statistic: Statistic, count: int, level: float = LEVEL) -> Estimate | None:
    """The statistic on all `count` samples with its percentile interval and bootstrap standard
    error; None when it is undefined on the samples themselves."""
    value = float(statistic(np.arange(count)[None, :])[0])
    if not np.isfinite(value):
        return None
    draws = statistic(resamples(count))
    draws = draws[np.isfinite(draws)]
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Estimate(value, float(low), float(high), float(draws.std()))
