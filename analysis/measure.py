"""The metric table: every metric of analysis/metrics.py for each branch, checkpoint and prompt
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

from analysis import metrics
from analysis.dataset import dataset_folder, training_images
from analysis.features import Instruments
from analysis.images import SampleImages
from analysis.model import BranchRef, SampleRow

# Each metric with what it measures and its range (analysis/metrics.py has the definitions).
METRICS = {
    "saturation": "mean HSV saturation, 0-1",
    "colourfulness": "Hasler-Süsstrunk colourfulness, 0-~180",
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
    "near_copies": "fraction of samples that are near-copies of a training image, 0-1",
}


@dataclass
class MetricTable:
    rows: list[dict]
    feature_space: str
    notes: list[str] = field(default_factory=list)

    def series(self, run: str, branch: str, prompt_set: str, metric: str) -> list[float | None]:
        """A metric's values along a branch's testing plan, in checkpoint order."""
        rows = [row for row in self.rows if (row["run"], row["branch"], row["prompt_set"])
                == (run, branch, prompt_set)]
        return [row[metric] for row in sorted(rows, key=lambda row: row["index"])]


@dataclass
class TrainingReference:
    """What samples are compared with: training pixels (memorisation), feature centroid (style)."""
    pixels: np.ndarray
    features: np.ndarray | None


class Measurer:
    def __init__(self, images: SampleImages, instruments: Instruments,
                 near_copy_distance: float = metrics.NEAR_COPY_DISTANCE):
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
                    ref.run.samples_of(ref.branch.name, prompt_set, ref.branch.plan[0].index))
                for checkpoint in ref.branch.plan:
                    samples = ref.run.samples_of(ref.branch.name, prompt_set, checkpoint.index)
                    rows.append({
                        "run": ref.run.name, "branch": ref.branch.name,
                        "component": "+".join(ref.branch.component), "index": checkpoint.index,
                        "label": checkpoint.label, "study_epoch": checkpoint.study_epoch,
                        "prompt_set": prompt_set,
                        "activation": any(row.activation for row in ref.run.samples_in(ref.branch.name, prompt_set)),
                        **self.checkpoint_metrics(samples, base_images, folder)})
        return MetricTable(rows, self.instruments.feature_space, list(dict.fromkeys(self.notes)))

    def checkpoint_metrics(self, samples: list[SampleRow], base_images: np.ndarray | None,
                           folder: Path | None) -> dict:
        values: dict = {"n_images": 0, **{name: None for name in METRICS}}
        samples, images = self.images.stack(samples)
        if images is None:
            return values
        values.update(n_images=len(images), saturation=metrics.mean_saturation(images),
                      colourfulness=metrics.colourfulness(images),
                      rms_contrast=metrics.rms_contrast(images),
                      variability_pixel=metrics.pixel_variability(images))
        if base_images is not None:
            values["histogram_distance"] = metrics.histogram_distance(images, base_images)
            values["high_frequency_ratio"] = metrics.high_frequency_ratio(images, base_images)
        features = self.instruments.features(images) if self.instruments.features else None
        if features is not None:
            values["variability_feature"] = metrics.feature_variability(features)
        reference = self.reference(folder, (images.shape[2], images.shape[1])) if folder else None
        if reference is not None:
            distances = metrics.nearest_training_distances(images, reference.pixels)
            values["nearest_training_distance"] = float(distances.mean())
            values["near_copies"] = metrics.near_copy_fraction(distances, self.near_copy_distance)
            if features is not None:
                values["style_distance"] = metrics.centroid_distance(features, reference.features)
        probe = self.instruments.probe
        if probe is not None:
            predictions = probe.predict(images)
            values["probe_style"] = float(np.mean(predictions["style"]))
            values["adherence"] = metrics.subject_accuracy(predictions, [row.expect for row in samples])
        clip = self.instruments.clip
        if clip is not None:
            by_prompt = {prompt: clip.text_features(prompt) for prompt in {row.prompt for row in samples}}
            texts = np.concatenate([by_prompt[row.prompt] for row in samples])
            values["clip_score"] = metrics.clip_score(clip.image_features(images), texts)
        return values

    def reference(self, folder: Path, size: tuple[int, int]) -> TrainingReference:
        key = (folder, tuple(size))
        if key not in self.references:
            training = training_images(folder, tuple(size))
            features = self.instruments.features(training) if self.instruments.features else None
            self.references[key] = TrainingReference(metrics.comparable_pixels(training), features)
        return self.references[key]


def measure(refs: list[BranchRef], images: SampleImages, instruments: Instruments,
            near_copy_distance: float = metrics.NEAR_COPY_DISTANCE) -> MetricTable:
    return Measurer(images, instruments, near_copy_distance).measure(refs)
