"""Burn detector: per branch, the first checkpoint where a metric moves past its threshold, and
which component the pattern of movements implicates.

    verdicts = detect(branch_series(table), k=2.0)
    verdicts[0].implicates        # "unet", "text_encoder" or "none"

A metric (on one prompt set) "moves" at checkpoint i >= 2 when its change from the baseline
(checkpoint 1) goes, in the burn direction, beyond max(k * |baseline - base|, floor): k times
what the intended fine-tune moved it, and never less than a small floor so that a metric the
fine-tune left flat does not fire on noise.

Patterns (the study's observations):
  UNet-like: saturation / colourfulness / contrast up ("colour"), variability down, style bleed
             (closer to the style, on prompt sets without the activation phrase);
  TE-like:   adherence down with little colour shift (no "colour" signal).
The colour histogram distance marks when the picture changes but implicates neither.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from analysis.measure import MetricTable
from analysis.defaults import DEFAULT_K



@dataclass(frozen=True)
class Pattern:
    direction: int          # +1: burning raises the metric; -1: lowers it
    family: str
    implicates: str | None  # the component this family points at (None: neither)
    without_activation_only: bool = False


PATTERNS = {
    "saturation": Pattern(+1, "colour", "unet"),
    "colourfulness": Pattern(+1, "colour", "unet"),
    "rms_contrast": Pattern(+1, "colour", "unet"),
    "histogram_distance": Pattern(+1, "colour distribution", None),
    "variability_pixel": Pattern(-1, "variability", "unet"),
    "variability_feature": Pattern(-1, "variability", "unet"),
    "style_distance": Pattern(-1, "style bleed", "unet", without_activation_only=True),
    "probe_style": Pattern(+1, "style bleed", "unet", without_activation_only=True),
    "adherence": Pattern(-1, "adherence", "text_encoder"),
    "clip_score": Pattern(-1, "adherence", "text_encoder"),
}
# The smallest change that counts, in each metric's own units (see analysis/metrics.py).
DEFAULT_FLOORS = {
    "saturation": 0.03, "colourfulness": 4.0, "rms_contrast": 0.02, "histogram_distance": 0.1,
    "variability_pixel": 0.02, "variability_feature": 0.03, "style_distance": 0.03,
    "probe_style": 0.1, "adherence": 0.2, "clip_score": 2.0,
}


@dataclass
class BranchSeries:
    """One branch's metric values along its testing plan: values[metric][prompt_set][index]."""
    run: str
    branch: str
    component: str
    labels: list[str]
    activation: dict[str, bool]
    values: dict[str, dict[str, list[float | None]]]


@dataclass(frozen=True)
class Signal:
    metric: str
    prompt_set: str
    family: str
    index: int
    label: str
    change: float      # from the baseline, signed
    threshold: float

    def describe(self) -> str:
        direction = "up" if self.change > 0 else "down"
        return (f"{self.metric} {direction} on {self.prompt_set} at '{self.label}' "
                f"({self.change:+.3g} from baseline, threshold {self.threshold:.3g})")


@dataclass
class Verdict:
    run: str
    branch: str
    component: str
    burn_index: int | None
    burn_label: str | None
    implicates: str
    matches_trained_component: bool | None
    signals: list[Signal] = field(default_factory=list)

    def summary(self) -> str:
        if self.burn_index is None:
            return f"{self.run}/{self.branch} (trains {self.component}): no burn detected."
        families = {PATTERNS[s.metric].family for s in self.signals}
        blamed = {"unet": "the UNet", "text_encoder": "the text encoder",
                  "none": "neither component"}[self.implicates]
        agreement = {True: "matches", False: "does not match", None: "cannot be compared with"}
        return (f"{self.run}/{self.branch} (trains {self.component}): burn from "
                f"'{self.burn_label}'; the pattern ({', '.join(sorted(families))}) implicates "
                f"{blamed}, which {agreement[self.matches_trained_component]} the trained "
                f"component.")


def branch_series(table: MetricTable) -> list[BranchSeries]:
    """The metric table regrouped per branch (runs and branches in table order)."""
    grouped: dict[tuple[str, str], BranchSeries] = {}
    for row in sorted(table.rows, key=lambda row: row["index"]):
        key = (row["run"], row["branch"])
        series = grouped.setdefault(key, BranchSeries(row["run"], row["branch"], row["component"],
                                                      [], {}, {m: {} for m in PATTERNS}))
        if row["label"] not in series.labels:
            series.labels.append(row["label"])
        series.activation[row["prompt_set"]] = row["activation"]
        for metric in PATTERNS:
            series.values[metric].setdefault(row["prompt_set"], []).append(row[metric])
    return list(grouped.values())


def first_move(values: list[float | None], labels: list[str], metric: str, prompt_set: str,
               k: float, floor: float) -> Signal | None:
    """The first checkpoint after the baseline where the metric moves beyond its threshold in
    the burn direction, or None."""
    if len(values) < 3 or values[0] is None or values[1] is None:
        return None
    threshold = max(k * abs(values[1] - values[0]), floor)
    direction = PATTERNS[metric].direction
    for index in range(2, len(values)):
        if values[index] is not None and direction * (values[index] - values[1]) > threshold:
            return Signal(metric, prompt_set, PATTERNS[metric].family, index, labels[index],
                          values[index] - values[1], threshold)
    return None


def judge(signals: list[Signal]) -> str:
    """'text_encoder' for adherence down without a colour rise; 'unet' for a colour rise,
    variability loss or style bleed; 'none' otherwise."""
    families = {signal.family for signal in signals}
    if "adherence" in families and "colour" not in families:
        return "text_encoder"
    if families & {"colour", "variability", "style bleed"}:
        return "unet"
    return "none"


def detect_branch(series: BranchSeries, k: float = DEFAULT_K,
                  floors: dict[str, float] | None = None) -> Verdict:
    floors = {**DEFAULT_FLOORS, **(floors or {})}
    signals = [signal for metric, by_prompt in series.values.items()
               for prompt_set, values in by_prompt.items()
               if not (PATTERNS[metric].without_activation_only and series.activation.get(prompt_set))
               if (signal := first_move(values, series.labels, metric, prompt_set, k, floors[metric]))]
    signals.sort(key=lambda signal: (signal.index, signal.metric, signal.prompt_set))
    implicates = judge(signals)
    first = signals[0] if signals else None
    trained = series.component if series.component in ("unet", "text_encoder") else None
    return Verdict(series.run, series.branch, series.component,
                   first.index if first else None, first.label if first else None, implicates,
                   None if trained is None or implicates == "none" else implicates == trained,
                   signals)


def detect(all_series: list[BranchSeries], k: float = DEFAULT_K,
           floors: dict[str, float] | None = None) -> list[Verdict]:
    return [detect_branch(series, k, floors) for series in all_series]


def verdicts_json(verdicts: list[Verdict], k: float, floors: dict[str, float] | None) -> dict:
    return {"k": k, "floors": {**DEFAULT_FLOORS, **(floors or {})},
            "verdicts": [{**asdict(verdict), "summary": verdict.summary()} for verdict in verdicts]}
