"""Overtraining metrics: small functions over a checkpoint's N samples of one prompt.

    from burnlab.analysis.metrics import mean_saturation, colourfulness
    mean_saturation(images)        # images: uint8 [N, H, W, 3]

Each docstring says what is measured and its range. Images are uint8 RGB arrays
[N, H, W, 3]; features are float arrays [N, D] from a feature extractor (the toy probe, or
CLIP image features). burnlab/analysis/measure.py applies them over a run's testing plan.
"""

from __future__ import annotations

import numpy as np

from burnlab.analysis.defaults import NEAR_COPY_DISTANCE
from burnlab.analysis.images import resize

COMPARE_SIZE = (64, 64)  # pixel-space distances compare images at this size (speed, fairness)
HISTOGRAM_BINS = 8
HIGH_FREQUENCY_CUTOFF = 0.5  # fraction of the Nyquist frequency: detail finer than a 4-pixel period
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])  # Rec. 601
# Luma energy below this is rounding left by removing a flat image's mean, not content: one
# pixel one uint8 level off already has ~2e-7.
FLAT_ENERGY = 1e-12


def unit_rgb(images: np.ndarray) -> np.ndarray:
    return np.asarray(images, dtype=np.float64) / 255.0


def mean_saturation(images: np.ndarray) -> float:
    """Mean HSV saturation, (max - min) / max of each pixel's RGB (0 for black), over all pixels
    of all images. Range [0, 1]: 0 for greys, 1 for fully saturated colours."""
    rgb = unit_rgb(images)
    brightest, darkest = rgb.max(axis=-1), rgb.min(axis=-1)
    saturation = np.divide(brightest - darkest, brightest, out=np.zeros_like(brightest), where=brightest > 0)
    return float(saturation.mean())


def colourfulness(images: np.ndarray) -> float:
    """Hasler & Süsstrunk (2003) colourfulness, sigma_rgyb + 0.3 * mu_rgyb over the opponent
    channels rg = R - G and yb = (R + G) / 2 - B (0-255 scale), averaged over images.
    Range [0, ~298]: 0 for greys; ~15 'slightly', ~60 'quite', >100 'extremely' colourful; the
    largest value of two-colour images, ~297.6, is 36% pure green beside 64% pure magenta."""
    rgb = np.asarray(images, dtype=np.float64)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    rg, yb = red - green, 0.5 * (red + green) - blue
    axes = (1, 2)
    spread = np.sqrt(rg.std(axis=axes) ** 2 + yb.std(axis=axes) ** 2)
    mean = np.sqrt(rg.mean(axis=axes) ** 2 + yb.mean(axis=axes) ** 2)
    return float((spread + 0.3 * mean).mean())


def rms_contrast(images: np.ndarray) -> float:
    """RMS contrast: the standard deviation of each image's luma (Rec. 601 weights, 0-1 scale),
    averaged over images. Range [0, 0.5]: 0 for a flat image, 0.5 for half black, half white."""
    luma = unit_rgb(images) @ LUMA_WEIGHTS
    return float(luma.std(axis=(1, 2)).mean())


def dct_basis(size: int) -> np.ndarray:
    """The orthonormal DCT-II matrix [size, size]: row k is the cosine of k / (2 * size) cycles
    per pixel."""
    frequency, pixel = np.arange(size)[:, None], np.arange(size)[None, :]
    basis = np.cos(np.pi * (2 * pixel + 1) * frequency / (2 * size)) * np.sqrt(2 / size)
    basis[0] /= np.sqrt(2)
    return basis


def high_frequency_shares(images: np.ndarray, cutoff: float = HIGH_FREQUENCY_CUTOFF) -> np.ndarray:
    """Per image, the share of its luma's energy (Rec. 601, mean removed) at radial spatial
    frequencies above `cutoff` x the Nyquist frequency: fine texture, grain, speckle. The
    spectrum is the orthonormal 2-D DCT, which mirrors the image at its borders, so the border
    is not read as an edge (a smooth gradient stays smooth). Range [0, 1]: 0 for a flat or smooth
    image, ~0.80 for white noise at the default cutoff (the share of DCT frequencies above it:
    1 - pi/16 on a large image, 0.796 at 64x64), ~1 for a one-pixel checkerboard. A share of
    energy, so a contrast change alone leaves it
    unchanged. Returns an array [N]."""
    luma = unit_rgb(images) @ LUMA_WEIGHTS
    _, height, width = luma.shape
    luma = luma - luma.mean(axis=(1, 2), keepdims=True)
    power = (dct_basis(height) @ luma @ dct_basis(width).T) ** 2
    # DCT frequency k / (2 * size) cycles per pixel, over the Nyquist frequency's 0.5
    radial = np.hypot(np.arange(height)[:, None] / height, np.arange(width)[None, :] / width)
    total = power.sum(axis=(1, 2))
    high = power[:, radial > cutoff].sum(axis=1)
    return np.divide(high, total, out=np.zeros_like(total), where=total > FLAT_ENERGY)


def high_frequency_ratios(
    images: np.ndarray, reference: np.ndarray, cutoff: float = HIGH_FREQUENCY_CUTOFF
) -> np.ndarray | None:
    """Per sample, its high-frequency share (high_frequency_shares) over the mean share of the
    `reference` samples (the base checkpoint's samples of the same prompt); their mean is
    high_frequency_ratio. None when the reference has no energy above the cutoff."""
    reference_share = high_frequency_shares(reference, cutoff).mean()
    if reference_share <= 0:
        return None
    return high_frequency_shares(images, cutoff) / reference_share


def high_frequency_ratio(
    images: np.ndarray, reference: np.ndarray, cutoff: float = HIGH_FREQUENCY_CUTOFF
) -> float | None:
    """Texture artifacts: the samples' mean high-frequency share over the base checkpoint's
    (`reference`) mean share for the same prompt. Range [0, inf): 1 = as much fine texture as
    the base, 2 = twice the share of energy above the cutoff, < 1 = smoother; None when the
    reference has no energy above the cutoff."""
    ratios = high_frequency_ratios(images, reference, cutoff)
    return None if ratios is None else float(ratios.mean())


def colour_histogram(images: np.ndarray, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """Joint RGB histogram of all pixels of all images, `bins` per channel, summing to 1."""
    quantized = (np.asarray(images, dtype=np.int64) * bins) // 256
    cells = (quantized[..., 0] * bins + quantized[..., 1]) * bins + quantized[..., 2]
    counts = np.bincount(cells.ravel(), minlength=bins**3).astype(np.float64)
    return counts / counts.sum()


def histogram_distance(images: np.ndarray, reference: np.ndarray) -> float:
    """Hellinger distance between the pooled colour histograms of `images` and `reference`
    (the base checkpoint's samples of the same prompt). Range [0, 1]: 0 for the same colour
    distribution, 1 for colours that never overlap."""
    overlap = np.sqrt(colour_histogram(images) * colour_histogram(reference)).sum()
    return float(np.sqrt(max(0.0, 1.0 - overlap)))


def comparable_pixels(images: np.ndarray) -> np.ndarray:
    """Images as float vectors [N, 64*64*3] in 0-1, resized to COMPARE_SIZE."""
    return np.stack([resize(image, COMPARE_SIZE) for image in images]).reshape(len(images), -1) / 255.0


def rms_distances(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """[N, M] root-mean-square distances between the rows of two [N, D] and [M, D] arrays."""
    squared = (first**2).sum(1)[:, None] + (second**2).sum(1)[None, :] - 2 * first @ second.T
    return np.sqrt(np.clip(squared, 0, None) / first.shape[1])


def mean_pairwise(distances: np.ndarray) -> float:
    """Mean of the off-diagonal entries of a square distance matrix (0 for a single sample)."""
    count = distances.shape[0]
    if count < 2:
        return 0.0
    return float((distances.sum() - np.trace(distances)) / (count * (count - 1)))


def pixel_variability(images: np.ndarray) -> float:
    """Diversity of N samples: mean pairwise RMS pixel distance (0-1 scale, at 64x64).
    Range [0, 1]: 0 when all N samples are identical (diversity collapse)."""
    pixels = comparable_pixels(images)
    return mean_pairwise(rms_distances(pixels, pixels))


def unit_rows(features: np.ndarray) -> np.ndarray:
    """Each feature row scaled to length 1 (a zero row stays zero)."""
    features = np.asarray(features, dtype=np.float64)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def cosine_distances(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """[N, M] cosine distances 1 - cos(a, b) between feature rows; range [0, 2]."""
    return np.clip(1.0 - unit_rows(first) @ unit_rows(second).T, 0.0, 2.0)


def feature_variability(features: np.ndarray) -> float:
    """Diversity of N samples in a feature space: mean pairwise cosine distance of their
    features. Range [0, 2] (in practice [0, 1]): 0 when all N samples look the same."""
    return mean_pairwise(cosine_distances(features, features))


def centroid_distances(features: np.ndarray, reference_features: np.ndarray) -> np.ndarray:
    """Per sample, the cosine distance of its features to the centroid of the style dataset's
    unit-normalised features (each training image weighs the same, whatever its feature norm);
    their mean is centroid_distance. Returns an array [N] in [0, 2]."""
    centroid = unit_rows(reference_features).mean(axis=0, keepdims=True)
    return cosine_distances(features, centroid)[:, 0]


def centroid_distance(features: np.ndarray, reference_features: np.ndarray) -> float:
    """Style proximity: mean cosine distance of each sample's features to the centroid of the
    style dataset's unit-normalised features. Range [0, 2]: lower = closer to the trained style;
    falling on a prompt without the activation phrase is style bleed."""
    return float(centroid_distances(features, reference_features).mean())


def nearest_training_distances(images: np.ndarray, training_pixels: np.ndarray) -> np.ndarray:
    """Per sample, the RMS pixel distance (0-1 scale, at 64x64) to the nearest training image;
    `training_pixels` from comparable_pixels(training images). Range [0, 1]: 0 = an exact copy."""
    return rms_distances(comparable_pixels(images), training_pixels).min(axis=1)


def standardized(pixels: np.ndarray) -> np.ndarray:
    """Each row minus its mean, over its standard deviation (a flat row stays all zeros)."""
    centred = pixels - pixels.mean(axis=1, keepdims=True)
    spread = centred.std(axis=1, keepdims=True)
    return np.divide(centred, spread, out=np.zeros_like(centred), where=spread > 0)


def mirrored(pixels: np.ndarray) -> np.ndarray:
    """comparable_pixels rows of left-right mirrored images."""
    grid = pixels.reshape(len(pixels), COMPARE_SIZE[1], COMPARE_SIZE[0], 3)
    return grid[:, :, ::-1].reshape(len(pixels), -1)


def copy_distances(images: np.ndarray, training_pixels: np.ndarray) -> np.ndarray:
    """Per sample, the RMS distance between its standardized pixels (at 64x64, zero mean, unit
    variance) and those of the nearest training image or its mirror image: a copy stays a copy
    when it is brightened, its contrast changed or mirrored (the training flips images).
    `training_pixels` from comparable_pixels(training images). Range [0, 2]: 0 = a copy up to
    brightness, contrast and mirroring; sqrt(2) = uncorrelated; d^2 = 2 (1 - correlation)."""
    references = standardized(np.concatenate([training_pixels, mirrored(training_pixels)]))
    return rms_distances(standardized(comparable_pixels(images)), references).min(axis=1)


def near_copy_fraction(distances: np.ndarray, threshold: float = NEAR_COPY_DISTANCE) -> float:
    """Memorisation: the fraction of samples whose copy_distances are under `threshold`.
    Range [0, 1]: 0 = no sample is a near-copy."""
    return float((np.asarray(distances) < threshold).mean())


def subject_accuracy(predictions: dict[str, list], expects: list[dict[str, str]]) -> float | None:
    """Prompt adherence on the toy world: the fraction of samples for which the toy probe's
    prediction matches every label its prompt expects (e.g. subject 'person', identity 'ada')
    that the probe predicts; samples expecting nothing the probe predicts are left out.
    Range [0, 1]: 1 = every sample shows what was asked; None when no sample expects anything."""
    hits = [
        all(predictions[key][number] == value for key, value in keys)
        for number, expect in enumerate(expects)
        if (keys := [(key, value) for key, value in expect.items() if key in predictions])
    ]
    return float(np.mean(hits)) if hits else None


def clip_score(image_features: np.ndarray, text_features: np.ndarray) -> float:
    """CLIP score (Hessel et al. 2021) as torchmetrics' CLIPScore computes it: 100 * max(mean
    over samples of cos(image, text), 0) -- the mean first, then the clamp at 0, so a sample
    below 0 pulls the score down instead of counting as 0. Row n of `text_features` is the
    prompt of sample n. Range [0, 100]."""
    similarity = (unit_rows(image_features) * unit_rows(text_features)).sum(axis=1)
    return float(100.0 * max(similarity.mean(), 0.0))
