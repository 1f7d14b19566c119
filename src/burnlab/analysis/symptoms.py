"""Symptom profile: which of the study's symptoms moved on a branch, how strongly, and at which
checkpoints. It describes the pictures and blames no component: which component burned is the
component swap's verdict (burnlab/analysis/attribution.py).

    profiles = profile_all(branch_series(table))
    profiles[0].symptoms["style bleed"]         # mean capped z over the symptom's cells
    profiles[0].by_checkpoint["5 hi e100"]      # symptom -> mean capped z at that checkpoint

Signals. For every metric and prompt set, each checkpoint after the baseline (index >= 2) is
compared with the baseline (index 1) in the direction the symptom expects:
z = direction * (v_i - v_1) / sqrt(se_i^2 + se_1^2), with the bootstrap standard errors of both
values over their images (burnlab/analysis/estimates.py), never below the metric's resolution. A signal
is z >= Z_MIN (2, fixed). Noise thus comes from the images themselves, not from one base ->
baseline pair, and a metric the fine-tune already moved can still signal a further move.

Profile. Metrics are grouped into the study's symptoms, each on the prompt sets it concerns
(SYMPTOMS). A cell is a (prompt set, checkpoint after the baseline) where at least one of the
symptom's metrics was measured; its value is its strongest signal's z capped at Z_CAP, 0 without
a signal (redundant metrics of one symptom count once per cell, and the same symptoms work with
the toy probe or with CLIP). A symptom's number is the mean over its cells, so it is intensive:
a branch that sits at the same distance from its baseline scores the same with 3 checkpoints or
12, with one prompt set or four (a sum would grow with the testing plan). Per checkpoint, the
mean over the symptom's prompt sets there shows which symptoms moved when. A symptom with no
measured cell (e.g. style metrics without a feature space) is None: not measured, not "did not move".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from burnlab.analysis.measure import MetricTable


@dataclass(frozen=True)
class Symptom:
    """One of the study's observations: metrics with the direction a burn moves them (+1 up,
    -1 down, 0 either way), on prompt sets with or without the activation phrase, or all."""

    name: str
    metrics: dict
    prompts: str  # "all", "with_phrase", "without_phrase"
    study: str  # what the study saw


SYMPTOMS = (
    Symptom(
        "colour shift",
        {"saturation": 0, "colourfulness": 0, "rms_contrast": 0},
        "all",
        "UNet: saturation and contrast up; TE: a late colour shift",
    ),
    Symptom("colour distribution", {"histogram_distance": +1}, "all", "the palette moves away from the base"),
    Symptom("texture", {"high_frequency_ratio": +1}, "all", "UNet: texture artifacts"),
    Symptom(
        "style bleed",
        {"probe_style": +1, "style_distance": -1},
        "without_phrase",
        "UNet: the style appears on prompts without the activation phrase",
    ),
    Symptom(
        "phrase weakening",
        {"probe_style": -1, "style_distance": +1},
        "with_phrase",
        "TE: the activation phrase loses its effect",
    ),
    Symptom(
        "variety collapse with the phrase",
        {"variability_pixel": -1, "variability_feature": -1},
        "with_phrase",
        "UNet: the activation prompt's seeds give one image; TE: variety kept",
    ),
    Symptom(
        "variety loss without the phrase",
        {"variability_pixel": -1, "variability_feature": -1},
        "without_phrase",
        "fewer distinct images on the other prompts",
    ),
    Symptom("prompt following", {"adherence": -1, "clip_score": -1}, "all", "TE: prompt-following failures"),
    Symptom(
        "memorisation",
        {"nearest_training_distance": -1, "near_copies": +1},
        "all",
        "samples drift towards training images",
    ),
)
SYMPTOM_NAMES = tuple(symptom.name for symptom in SYMPTOMS)
# The smallest standard error a metric is given: its resolution. Shares of images (adherence,
# near-copies) and the probe's near-binary style score move in steps of one image of N, so they
# get half a step; continuous metrics a thousandth of their range (see burnlab/analysis/measure.py).
HALF_IMAGE_STEP = {"adherence", "near_copies", "probe_style"}
RANGES = {
    "saturation": 1.0,
    "colourfulness": 300.0,
    "rms_contrast": 0.5,
    "histogram_distance": 1.0,
    "high_frequency_ratio": 1.0,
    "variability_pixel": 1.0,
    "variability_feature": 1.0,
    "style_distance": 1.0,
    "clip_score": 100.0,
    "nearest_training_distance": 1.0,
}
Z_MIN = 2.0  # a signal: a move of at least two standard errors in the symptom's direction (fixed, not fitted)
# beyond ten standard errors a move is certain; the cap keeps one metric with a tiny error from outweighing the rest
Z_CAP = 10.0
WATCHED = sorted({metric for symptom in SYMPTOMS for metric in symptom.metrics})


@dataclass
class BranchSeries:
    """One branch's metric values along its testing plan: values[metric][prompt_set][index], and
    their bootstrap standard errors in the same layout; n_images[prompt_set][index]."""

    run: str
    branch: str
    component: str
    labels: list[str]
    activation: dict[str, bool]
    values: dict[str, dict[str, list[float | None]]]
    errors: dict[str, dict[str, list[float | None]]]
    n_images: dict[str, list[int]]


@dataclass(frozen=True)
class Signal:
    symptom: str
    metric: str
    prompt_set: str
    index: int
    label: str
    change: float  # from the baseline, signed, in the metric's units
    z: float  # the change in standard errors, in the symptom's direction

    def describe(self) -> str:
        return (
            f"{self.symptom}: {self.metric} {'up' if self.change > 0 else 'down'} on "
            f"{self.prompt_set} at '{self.label}' ({self.change:+.3g} from the baseline, "
            f"{self.z:.1f} standard errors)"
        )


@dataclass
class Profile:
    """One branch's symptom profile: per symptom the mean capped z over its cells (None: not
    measured), per checkpoint after the baseline the same over its prompt sets there, and every
    signal."""

    run: str
    branch: str
    component: str  # what the branch's leaf stage trains (said, not judged)
    symptoms: dict[str, float | None]
    by_checkpoint: dict[str, dict[str, float | None]]  # checkpoint label -> symptom -> mean capped z
    signals: list[Signal] = field(default_factory=list)

    def strongest(self, count: int) -> list[Signal]:
        return sorted(self.signals, key=lambda signal: -signal.z)[:count]

    def summary(self) -> str:
        head = f"{self.run}/{self.branch} (trains {self.component})"
        moved = sorted(((name, value) for name, value in self.symptoms.items() if value), key=lambda item: -item[1])
        if not moved:
            return f"{head}: no symptom moved {Z_MIN:g} standard errors from the baseline."
        listed = ", ".join(f"{name} {value:.2f}" for name, value in moved)
        return (
            f"{head}: symptoms moved (mean capped z per prompt set and checkpoint, 0 to {Z_CAP:g}): {listed}; "
            f"first signal at '{self.signals[0].label}'."
        )


def branch_series(table: MetricTable) -> list[BranchSeries]:
    """The metric table regrouped per branch (runs and branches in table order)."""
    grouped: dict[tuple[str, str], BranchSeries] = {}
    for row in sorted(table.rows, key=lambda row: row["index"]):
        key = (row["run"], row["branch"])
        series = grouped.setdefault(
            key,
            BranchSeries(
                row["run"],
                row["branch"],
                row["component"],
                [],
                {},
                {m: {} for m in WATCHED},
                {m: {} for m in WATCHED},
                {},
            ),
        )
        if row["label"] not in series.labels:
            series.labels.append(row["label"])
        series.activation[row["prompt_set"]] = row["activation"]
        series.n_images.setdefault(row["prompt_set"], []).append(row["n_images"])
        for metric in WATCHED:
            series.values[metric].setdefault(row["prompt_set"], []).append(row.get(metric))
            series.errors[metric].setdefault(row["prompt_set"], []).append(row.get("se", {}).get(metric))
    return list(grouped.values())


def resolution(metric: str, n_images: int) -> float:
    if metric in HALF_IMAGE_STEP:
        return 0.5 / max(n_images, 1)
    return 1e-3 * RANGES[metric]


def concerns(symptom: Symptom, has_phrase: bool) -> bool:
    return symptom.prompts == "all" or (symptom.prompts == "with_phrase") == has_phrase


def move(
    series: BranchSeries, metric: str, prompt_set: str, index: int, reference: int = 1
) -> tuple[float, float] | None:
    """(change, change / noise) of a metric from checkpoint `reference` to `index`, the noise
    from both values' standard errors (at least the metric's resolution); None if unmeasured."""
    values = series.values[metric].get(prompt_set, [])
    if max(index, reference) >= len(values) or values[index] is None or values[reference] is None:
        return None
    errors, counts = series.errors[metric][prompt_set], series.n_images[prompt_set]
    noise = np.hypot(
        max(errors[reference] or 0.0, resolution(metric, counts[reference])),
        max(errors[index] or 0.0, resolution(metric, counts[index])),
    )
    change = values[index] - values[reference]
    return change, round(change / noise, 9)


def signals(series: BranchSeries) -> list[Signal]:
    """Every (symptom, metric, prompt set, checkpoint) whose move from the baseline reaches Z_MIN;
    ties are decided on z rounded to 9 digits, not on float noise."""
    found = []
    for symptom in SYMPTOMS:
        for metric, direction in symptom.metrics.items():
            for prompt_set in series.values[metric]:
                if not concerns(symptom, series.activation.get(prompt_set, False)):
                    continue
                for index in range(2, len(series.labels)):
                    moved = move(series, metric, prompt_set, index)
                    if moved is None:
                        continue
                    z = abs(moved[1]) if direction == 0 else direction * moved[1]
                    if z >= Z_MIN:
                        found.append(Signal(symptom.name, metric, prompt_set, index, series.labels[index], moved[0], z))
    return sorted(found, key=lambda s: (s.index, SYMPTOM_NAMES.index(s.symptom), s.prompt_set, s.metric))


def cells(series: BranchSeries, found: list[Signal]) -> dict[str, dict[tuple[str, int], float]]:
    """symptom -> (prompt set, checkpoint index) -> the cell's strongest z capped at Z_CAP, 0 where
    nothing signals; only cells where one of the symptom's metrics was measured."""
    table: dict[str, dict[tuple[str, int], float]] = {}
    for symptom in SYMPTOMS:
        table[symptom.name] = {
            (prompt_set, index): 0.0
            for prompt_set, has_phrase in series.activation.items()
            if concerns(symptom, has_phrase)
            for index in range(2, len(series.labels))
            if any(move(series, metric, prompt_set, index) is not None for metric in symptom.metrics)
        }
    for signal in found:
        cell = table[signal.symptom]
        key = (signal.prompt_set, signal.index)
        cell[key] = max(cell[key], min(signal.z, Z_CAP))
    return table


def mean(values: list[float]) -> float | None:
    """Rounded to 9 digits, so the same moves give the same number whatever the order of summing."""
    return round(sum(values) / len(values), 9) if values else None


def profile(series: BranchSeries) -> Profile:
    found = signals(series)
    table = cells(series, found)
    by_checkpoint = {
        series.labels[index]: {
            name: mean([z for (_, at), z in cell.items() if at == index]) for name, cell in table.items()
        }
        for index in range(2, len(series.labels))
    }
    return Profile(
        series.run,
        series.branch,
        series.component,
        {name: mean(list(cell.values())) for name, cell in table.items()},
        by_checkpoint,
        found,
    )


def profile_all(all_series: list[BranchSeries]) -> list[Profile]:
    return [profile(series) for series in all_series]


def profiles_json(profiles: list[Profile]) -> dict:
    """symptoms.json: the fixed rule, the symptoms' definitions and every branch's profile."""
    return {
        "z_min": Z_MIN,
        "z_cap": Z_CAP,
        "symptoms": [asdict(symptom) for symptom in SYMPTOMS],
        "profiles": [{**asdict(found), "summary": found.summary()} for found in profiles],
    }
