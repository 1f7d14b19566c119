"""The metric table: every metric of burnlab/analysis/metrics.py for each branch, checkpoint and prompt
set of the testing plan, over the checkpoint's N samples.

    table = measure(refs, SampleImages(), load_instruments())
    table.rows[0]   # {"run", "branch", "index", "label", "prompt_set", "saturation", ...}

A metric that cannot be measured (no feature extractor, no training images, no probe, no CLIP)
is None in every row, and `table.notes` says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from burnlab.analysis import estimates, metrics
from burnlab.analysis.features import Instruments
from burnlab.analysis.images import SampleImages
from burnlab.analysis.run import BranchRef, SampleRow
from burnlab.analysis.training_images import dataset_folder, training_images

# Each metric with what it measures and its range (burnlab/analysis/metrics.py has the definitions).
METRICS = {
    "saturation": "mean HSV saturation, 0-1",
    "colourfulness": "Hasler-Süsstrunk colourfulness, 0-~298",
    "rms_contrast": "RMS contrast (std of luma), 0-0.5",
    "histogram_distance": "colour-histogram distance to the base checkpoint's samples (Hellinger), 0-1",
    "high_frequency_ratio": "share of luma energy above half Nyquist over the base checkpoint's, "
    "0-inf (1 = as base; texture artifacts raise it)",
    "variability_pixel": "mean pairwise RMS pixel distance among the N samples, 0-1",
    "variability_feature": "mean pairwise cosine distance of the samples' features, 0-2",
    "style_distance": "mean cosine distance to the style dataset's feature centroid, 0-2 (lower = more style)",
    "probe_style": "toy probe's style score, mean over samples",
    "adherence": "toy probe: fraction of samples showing what the prompt expects, 0-1",
    "clip_score": "CLIP score of sample vs prompt, 0-100",
    "nearest_training_distance": "mean RMS pixel distance to the nearest training image, 0-1",
    "near_copies": "fraction of samples that are near-copies of a training image or its mirror image "
    "(brightness and contrast aside), 0-1",
}


@dataclass
class MetricTable:
    rows: list[dict]
    feature_space: str
    notes: list[str] = field(default_factory=list)

    def series(self, run: str, branch: str, prompt_set: str, metric: str) -> list[float | None]:
        """A metric's values along a branch's testing plan, in checkpoint order."""
        return [row[metric] for row in self.branch_rows(run, branch, prompt_set)]

    def intervals(self, run: str, branch: str, prompt_set: str, metric: str) -> list[list[float] | None]:
        """The values' 95% bootstrap intervals [low, high] (None where not measured)."""
        return [row.get("interval", {}).get(metric) for row in self.branch_rows(run, branch, prompt_set)]

    def branch_rows(self, run: str, branch: str, prompt_set: str) -> list[dict]:
        rows = [row for row in self.rows if (row["run"], row["branch"], row["prompt_set"]) == (run, branch, prompt_set)]
        return sorted(rows, key=lambda row: row["index"])


@dataclass
class TrainingReference:
    """What samples are compared with: training pixels (memorisation), feature centroid (style)."""

    pixels: np.ndarray
    features: np.ndarray | None


class Measurer:
    def __init__(
        self, images: SampleImages, instruments: Instruments, near_copy_distance: float = metrics.NEAR_COPY_DISTANCE
    ):
        self.images = images
        self.instruments = instruments
        self.near_copy_distance = near_copy_distance
        self.references: dict[tuple[Path, tuple[int, int]], TrainingReference] = {}
        self.notes: list[str] = list(instruments.notes)

    def measure(self, refs: list[BranchRef]) -> MetricTable:
        rows = []
        for ref in refs:
            folder, why_not = dataset_folder(ref.run)
            if why_not:
                self.notes.append(f"Style distance and memorisation not measured for {why_not}.")
            for prompt_set in ref.run.prompt_sets():
                _, base_images = self.images.stack(
                    ref.run.samples_of(ref.branch.name, prompt_set, ref.branch.plan[0].index)
                )
                for checkpoint in ref.branch.plan:
                    samples = ref.run.samples_of(ref.branch.name, prompt_set, checkpoint.index)
                    rows.append(
                        {
                            "run": ref.run.name,
                            "branch": ref.branch.name,
                            "component": "+".join(ref.branch.component),
                            "index": checkpoint.index,
                            "label": checkpoint.label,
                            "study_epoch": checkpoint.study_epoch,
                            "prompt_set": prompt_set,
                            "activation": any(
                                row.activation for row in ref.run.samples_in(ref.branch.name, prompt_set)
                            ),
                            **self.checkpoint_metrics(samples, base_images, folder),
                        }
                    )
        return MetricTable(rows, self.instruments.feature_space, list(dict.fromkeys(self.notes)))

    def checkpoint_metrics(self, samples: list[SampleRow], base_images: np.ndarray | None, folder: Path | None) -> dict:
        """Every metric over the checkpoint's samples, with its bootstrap interval and standard
        error over those samples (`interval` and `se`, keyed by metric)."""
        values: dict = {"n_images": 0, **{name: None for name in METRICS}, "interval": {}, "se": {}}
        samples, images = self.images.stack(samples)
        if images is None:
            return values
        values["n_images"] = len(images)
        for name, statistic in self.statistics(samples, images, base_images, folder).items():
            found = estimates.bootstrap(statistic, len(images))
            if found is not None:
                values[name] = found.value
                values["interval"][name] = [found.low, found.high]
                values["se"][name] = found.se
        return values

    def statistics(
        self, samples: list[SampleRow], images: np.ndarray, base_images: np.ndarray | None, folder: Path | None
    ) -> dict[str, estimates.Statistic]:
        """Each measurable metric as a statistic over resampled image indices."""
        singles = [images[number : number + 1] for number in range(len(images))]
        pixels = metrics.comparable_pixels(images)
        found = {
            "saturation": estimates.per_image_mean([metrics.mean_saturation(one) for one in singles]),
            "colourfulness": estimates.per_image_mean([metrics.colourfulness(one) for one in singles]),
            "rms_contrast": estimates.per_image_mean([metrics.rms_contrast(one) for one in singles]),
            "variability_pixel": estimates.pairwise_mean(metrics.rms_distances(pixels, pixels)),
        }
        if base_images is not None:
            found["histogram_distance"] = estimates.pooled_hellinger(
                np.stack([metrics.colour_histogram(one) for one in singles]), metrics.colour_histogram(base_images)
            )
            ratios = metrics.high_frequency_ratios(images, base_images)
            if ratios is not None:
                found["high_frequency_ratio"] = estimates.per_image_mean(ratios)
        features = self.instruments.features(images) if self.instruments.features else None
        if features is not None:
            found["variability_feature"] = estimates.pairwise_mean(metrics.cosine_distances(features, features))
        reference = self.reference(folder, (images.shape[2], images.shape[1])) if folder else None
        if reference is not None:
            distances = metrics.nearest_training_distances(images, reference.pixels)
            found["nearest_training_distance"] = estimates.per_image_mean(distances)
            copies = metrics.copy_distances(images, reference.pixels) < self.near_copy_distance
            found["near_copies"] = estimates.per_image_mean(copies)
            if features is not None:
                found["style_distance"] = estimates.per_image_mean(
                    metrics.centroid_distances(features, reference.features)
                )
        probe = self.instruments.probe
        if probe is not None:
            predictions = probe.predict(images)
            found["probe_style"] = estimates.per_image_mean(predictions["style"])
            hits = [
                metrics.subject_accuracy({key: [labels[number]] for key, labels in predictions.items()}, [row.expect])
                for number, row in enumerate(samples)
            ]
            if any(hit is not None for hit in hits):
                found["adherence"] = estimates.per_image_mean([np.nan if hit is None else hit for hit in hits])
        clip = self.instruments.clip
        if clip is not None:
            by_prompt = {prompt: clip.text_features(prompt) for prompt in {row.prompt for row in samples}}
            texts = np.concatenate([by_prompt[row.prompt] for row in samples])
            # with CLIP as the feature space its image features are already computed
            image_features = (
                features if self.instruments.features == clip.image_features else clip.image_features(images)
            )
            cosines = 1.0 - np.diag(metrics.cosine_distances(image_features, texts))
            found["clip_score"] = estimates.clipped_mean(cosines, 100.0)
        return found

    def reference(self, folder: Path, size: tuple[int, int]) -> TrainingReference:
        key = (folder, tuple(size))
        if key not in self.references:
            training = training_images(folder, tuple(size))
            features = self.instruments.features(training) if self.instruments.features else None
            self.references[key] = TrainingReference(metrics.comparable_pixels(training), features)
        return self.references[key]


def measure(
    refs: list[BranchRef],
    images: SampleImages,
    instruments: Instruments,
    near_copy_distance: float = metrics.NEAR_COPY_DISTANCE,
) -> MetricTable:
    return Measurer(images, instruments, near_copy_distance).measure(refs)
