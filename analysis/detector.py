"""Burn detector: did a branch burn, from which checkpoint, which component, and on what evidence.

    rule = Calibration.load()                       # analysis/calibration.json (make verdicts)
    verdicts = detect(branch_series(table), rule)
    verdicts[0].implicates    # "unet", "text_encoder", "both", "neither"; "none" = no burn

Signals. For every metric and prompt set, each checkpoint after the baseline (index >= 2) is
compared with the baseline (index 1) in the direction the symptom expects:
z = direction * (v_i - v_1) / sqrt(se_i^2 + se_1^2), with the bootstrap standard errors of both
values over their images (analysis/estimates.py), never below the metric's resolution. A signal
is z >= rule.z_min. Noise thus comes from the images themselves, not from one base -> baseline
pair, and a metric the fine-tune already moved can still signal a further move.

Symptoms. Metrics are grouped into the study's symptoms, each on the prompt sets it concerns
(SYMPTOMS). A symptom's evidence sums, over the (prompt set, checkpoint) cells where it signals,
the cell's strongest z, capped at Z_CAP: every prompt set and checkpoint counts, a strong move
counts more than one at the edge of noise, redundant metrics of one symptom count once per
cell, and the same symptoms work with the toy probe or with CLIP.

Verdict. Burn: the evidence of all symptoms up to a checkpoint reaches rule.burn_evidence; the
burn is called at the first such checkpoint. Component: the evidence of the symptoms the
calibration assigned to each component (rule.symptoms), over all checkpoints, against
rule.unet_evidence and rule.text_encoder_evidence: both reached -> "both", one -> that
component, none -> "neither" (the pictures changed in a way that implicates no component).
The rule's numbers are chosen on calibration runs only (analysis/calibration.py).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from analysis.measure import MetricTable
from analysis.model import AnalysisError

CALIBRATION_FILE = Path(__file__).with_name("calibration.json")  # written by make verdicts
COMPONENTS = ("unet", "text_encoder")


@dataclass(frozen=True)
class Symptom:
    """One of the study's observations: metrics with the direction a burn moves them (+1 up,
    -1 down, 0 either way), on prompt sets with or without the activation phrase, or all."""
    name: str
    metrics: dict
    prompts: str  # "all", "with_phrase", "without_phrase"
    study: str  # what the study saw


SYMPTOMS = (
    Symptom("colour shift", {"saturation": 0, "colourfulness": 0, "rms_contrast": 0}, "all",
            "UNet: saturation and contrast up; TE: a late colour shift"),
    Symptom("colour distribution", {"histogram_distance": +1}, "all", "the palette moves away from the base"),
    Symptom("texture", {"high_frequency_ratio": +1}, "all", "UNet: texture artifacts"),
    Symptom("style bleed", {"probe_style": +1, "style_distance": -1}, "without_phrase",
            "UNet: the style appears on prompts without the activation phrase"),
    Symptom("phrase weakening", {"probe_style": -1, "style_distance": +1}, "with_phrase",
            "TE: the activation phrase loses its effect"),
    Symptom("variety collapse with the phrase", {"variability_pixel": -1, "variability_feature": -1},
            "with_phrase", "UNet: the activation prompt's seeds give one image; TE: variety kept"),
    Symptom("variety loss without the phrase", {"variability_pixel": -1, "variability_feature": -1},
            "without_phrase", "fewer distinct images on the other prompts"),
    Symptom("prompt following", {"adherence": -1, "clip_score": -1}, "all",
            "TE: prompt-following failures"),
    Symptom("memorisation", {"nearest_training_distance": -1, "near_copies": +1}, "all",
            "samples drift towards training images"),
)
SYMPTOM_NAMES = tuple(symptom.name for symptom in SYMPTOMS)
# The smallest standard error a metric is given: its resolution. Shares of images (adherence,
# near-copies) and the probe's near-binary style score move in steps of one image of N, so they
# get half a step; continuous metrics a thousandth of their range (see analysis/measure.py).
HALF_IMAGE_STEP = {"adherence", "near_copies", "probe_style"}
RANGES = {"saturation": 1.0, "colourfulness": 300.0, "rms_contrast": 0.5, "histogram_distance": 1.0,
          "high_frequency_ratio": 1.0, "variability_pixel": 1.0, "variability_feature": 1.0,
          "style_distance": 1.0, "clip_score": 100.0, "nearest_training_distance": 1.0}
TRAINED = {"unet": "unet", "text_encoder": "text_encoder", "unet+text_encoder": "both"}  # what a right verdict names
Z_CAP = 10.0  # beyond ten standard errors a move is certain; the cap keeps one metric with a tiny error from outweighing the rest
WATCHED = sorted({metric for symptom in SYMPTOMS for metric in symptom.metrics})


@dataclass(frozen=True)
class Calibration:
    """The detector's rule: numbers chosen on calibration runs by analysis/calibration.py."""
    z_min: float  # a signal: a move of at least z_min standard errors in the symptom's direction
    symptoms: dict  # symptom -> "unet", "text_encoder" or "neutral"
    burn_evidence: float  # evidence (all symptoms) that makes a burn
    unet_evidence: float  # evidence of UNet symptoms that implicates the UNet
    text_encoder_evidence: float  # evidence of text-encoder symptoms that implicates the text encoder
    source: str = ""  # which runs chose these numbers

    @classmethod
    def load(cls, path: Path | None = None) -> "Calibration":
        path = Path(path) if path else CALIBRATION_FILE
        try:
            data = json.loads(path.read_text())
            rule = cls(**{key: data[key] for key in cls.__dataclass_fields__ if key != "source" or key in data})
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise AnalysisError(f"--calibration {path}: not a detector calibration ({type(error).__name__}: "
                                f"{error}); expected the calibration.json that `make verdicts` writes, "
                                f"with the keys {', '.join(cls.__dataclass_fields__)}.") from None
        unknown = {name: role for name, role in rule.symptoms.items()
                   if name not in SYMPTOM_NAMES or role not in (*COMPONENTS, "neutral")}
        if unknown:
            raise AnalysisError(f"--calibration {path}: symptoms {unknown} are not known; expected "
                                f"names from {', '.join(SYMPTOM_NAMES)} mapped to unet, text_encoder "
                                f"or neutral.")
        return rule

    def evidence_needed(self, component: str) -> float:
        return {"unet": self.unet_evidence, "text_encoder": self.text_encoder_evidence}[component]


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
        return (f"{self.symptom}: {self.metric} {'up' if self.change > 0 else 'down'} on "
                f"{self.prompt_set} at '{self.label}' ({self.change:+.3g} from the baseline, "
                f"{self.z:.1f} standard errors)")


@dataclass
class Verdict:
    run: str
    branch: str
    component: str  # what the branch's leaf stage trains
    burn_index: int | None
    burn_label: str | None
    implicates: str  # "unet", "text_encoder", "both", "neither"; "none" when no burn
    matches_trained_component: bool | None
    evidence: dict[str, float] = field(default_factory=dict)  # symptom -> capped z summed over its cells
    component_evidence: dict[str, float] = field(default_factory=dict)  # unet/text_encoder -> evidence
    signals: list[Signal] = field(default_factory=list)

    def summary(self) -> str:
        head = f"{self.run}/{self.branch} (trains {self.component})"
        seen = ", ".join(f"{name} {count:.1f}" for name, count in self.evidence.items() if count)
        if self.burn_index is None:
            return f"{head}: no burn detected" + (f" (evidence: {seen})." if seen else ".")
        blamed = {"unet": "the UNet", "text_encoder": "the text encoder", "both": "both components",
                  "neither": "neither component"}[self.implicates]
        agreement = {True: "matches", False: "does not match", None: "cannot be compared with"}
        return (f"{head}: burn from '{self.burn_label}'; evidence UNet "
                f"{self.component_evidence['unet']:.1f}, text encoder "
                f"{self.component_evidence['text_encoder']:.1f} ({seen}) implicates {blamed}, which "
                f"{agreement[self.matches_trained_component]} the trained component.")


def branch_series(table: MetricTable) -> list[BranchSeries]:
    """The metric table regrouped per branch (runs and branches in table order)."""
    grouped: dict[tuple[str, str], BranchSeries] = {}
    for row in sorted(table.rows, key=lambda row: row["index"]):
        key = (row["run"], row["branch"])
        series = grouped.setdefault(key, BranchSeries(
            row["run"], row["branch"], row["component"], [], {},
            {m: {} for m in WATCHED}, {m: {} for m in WATCHED}, {}))
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


def move(series: BranchSeries, metric: str, prompt_set: str, index: int, reference: int = 1
         ) -> tuple[float, float] | None:
    """(change, change / noise) of a metric from checkpoint `reference` to `index`, the noise
    from both values' standard errors (at least the metric's resolution); None if unmeasured."""
    values = series.values[metric].get(prompt_set, [])
    if max(index, reference) >= len(values) or values[index] is None or values[reference] is None:
        return None
    errors, counts = series.errors[metric][prompt_set], series.n_images[prompt_set]
    noise = np.hypot(max(errors[reference] or 0.0, resolution(metric, counts[reference])),
                     max(errors[index] or 0.0, resolution(metric, counts[index])))
    change = values[index] - values[reference]
    return change, round(change / noise, 9)


def signals(series: BranchSeries, z_min: float) -> list[Signal]:
    """Every (symptom, metric, prompt set, checkpoint) whose move from the baseline reaches z_min;
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
                    if z >= z_min:
                        found.append(Signal(symptom.name, metric, prompt_set, index,
                                            series.labels[index], moved[0], z))
    return sorted(found, key=lambda s: (s.index, SYMPTOM_NAMES.index(s.symptom), s.prompt_set, s.metric))


def evidence(found: list[Signal], up_to: int | None = None) -> dict[str, float]:
    """Per symptom, the strongest capped z of each signalling (prompt set, checkpoint) cell at
    checkpoints <= up_to, summed over the cells (rounded to 6 digits)."""
    cells = {name: {} for name in SYMPTOM_NAMES}
    for signal in found:
        if up_to is None or signal.index <= up_to:
            cell = cells[signal.symptom]
            key = (signal.prompt_set, signal.index)
            cell[key] = max(cell.get(key, 0.0), min(signal.z, Z_CAP))
    return {name: round(sum(cell.values()), 6) for name, cell in cells.items()}


def component_evidence(counts: dict[str, float], rule: Calibration) -> dict[str, float]:
    return {component: round(sum(count for name, count in counts.items()
                                 if rule.symptoms.get(name) == component), 6)
            for component in COMPONENTS}


def implicated(by_component: dict[str, float], rule: Calibration) -> str:
    reached = [c for c in COMPONENTS if by_component[c] >= rule.evidence_needed(c)]
    return {2: "both", 1: reached[0] if reached else "", 0: "neither"}[len(reached)]


def detect_branch(series: BranchSeries, rule: Calibration) -> Verdict:
    found = signals(series, rule.z_min)
    counts = evidence(found)
    by_component = component_evidence(counts, rule)
    burn_index = next((index for index in range(2, len(series.labels))
                       if sum(evidence(found, index).values()) >= rule.burn_evidence), None)
    implicates = "none" if burn_index is None else implicated(by_component, rule)
    trained = TRAINED.get(series.component)
    matches = None if trained is None or burn_index is None else implicates == trained
    return Verdict(series.run, series.branch, series.component, burn_index,
                   None if burn_index is None else series.labels[burn_index], implicates, matches,
                   counts, by_component, found)


def detect(all_series: list[BranchSeries], rule: Calibration) -> list[Verdict]:
    return [detect_branch(series, rule) for series in all_series]


def verdicts_json(verdicts: list[Verdict], rule: Calibration) -> dict:
    return {"rule": asdict(rule),
            "verdicts": [{**asdict(verdict), "summary": verdict.summary()} for verdict in verdicts]}
