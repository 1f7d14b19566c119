"""Calibrating the burn detector on branches whose answer is known, and judging it on others.

    rule, fit = calibrate([Labelled(series, truth="unet"), Labelled(series2, truth="none"), ...])
    table = confusion(detect(held_out_series, rule), truths)

`truth` is the component a branch's burn stages trained ("unet", "text_encoder") or "none" for a
control (burn stages at a learning rate too small to move anything). For each candidate z_min:
1. each symptom is assigned to the component whose calibration burns show it more: at least
   LEAN times (evidence + 1) as much on average, else "neutral";
2. each evidence threshold is put halfway between the largest evidence that must not reach it
   and the smallest that must (controls vs burns for the burn; the other component's burns vs
   this component's burns for each component), or where it makes the fewest errors;
3. the candidate with the fewest calibration errors, then the widest relative margin, wins.
Nothing here looks at held-out runs: bench/verdicts.py passes calibration runs only.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from analysis.detector import (COMPONENTS, SYMPTOM_NAMES, Z_CAP, BranchSeries, Calibration, Verdict,
                               component_evidence, evidence, signals)

Z_CANDIDATES = (2.0, 2.5, 3.0, 4.0, 5.0)  # the signal thresholds tried, in standard errors
LEAN = 2.0  # how much more evidence a symptom must show on one component's burns to implicate it
OUTCOMES = ("unet", "text_encoder", "both", "neither", "none")  # columns of the confusion table


@dataclass(frozen=True)
class Labelled:
    series: BranchSeries
    truth: str  # "unet", "text_encoder" or "none" (a control)


@dataclass(frozen=True)
class Threshold:
    value: float
    errors: int
    margin: float  # (smallest evidence that must reach it - largest that must not) / the former


def separate(below: list[float], above: list[float]) -> Threshold:
    """The threshold t with `below` < t <= `above`: halfway in the gap when there is one, else
    the candidate with the fewest errors (negative margin)."""
    if not above:
        return Threshold(max(below, default=0) + Z_CAP, 0, 1.0)
    if not below:
        return Threshold(min(above) / 2, 0, 1.0)
    low, high = max(below), min(above)
    if low < high:
        return Threshold((low + high) / 2, 0, (high - low) / max(high, 1))
    candidates = sorted(set(above) | {value + 1e-6 for value in below})
    errors = {t: sum(v >= t for v in below) + sum(v < t for v in above) for t in candidates}
    best = min(candidates, key=lambda t: (errors[t], t))
    return Threshold(best, errors[best], (high - low) / max(high, 1))


def assign(counts: list[dict[str, int]], truths: list[str]) -> dict[str, str]:
    """Symptom -> the component whose calibration burns show LEAN times its evidence (+1 each,
    so that rare weak signals decide nothing), or neutral."""
    def mean(component: str, name: str) -> float:
        picked = [count[name] for count, truth in zip(counts, truths) if truth == component]
        return sum(picked) / len(picked) if picked else 0.0
    assigned = {}
    for name in SYMPTOM_NAMES:
        unet, text_encoder = mean("unet", name) + 1, mean("text_encoder", name) + 1
        assigned[name] = ("unet" if unet >= LEAN * text_encoder else
                          "text_encoder" if text_encoder >= LEAN * unet else "neutral")
    return assigned


def fit(labelled: list[Labelled], z_min: float) -> tuple[Calibration, int, float]:
    """The rule for one z_min, with its calibration errors and smallest relative margin."""
    counts = [evidence(signals(item.series, z_min)) for item in labelled]
    truths = [item.truth for item in labelled]
    symptoms = assign(counts, truths)
    totals = [sum(count.values()) for count in counts]
    burn = separate([t for t, truth in zip(totals, truths) if truth == "none"],
                    [t for t, truth in zip(totals, truths) if truth != "none"])
    provisional = Calibration(z_min, symptoms, burn.value, 0, 0)
    by_component = [component_evidence(count, provisional) for count in counts]
    thresholds = {component: separate(
        [b[component] for b, truth in zip(by_component, truths) if truth in COMPONENTS and truth != component],
        [b[component] for b, truth in zip(by_component, truths) if truth == component])
        for component in COMPONENTS}
    rule = Calibration(z_min, symptoms, float(burn.value), float(thresholds["unet"].value),
                       float(thresholds["text_encoder"].value))
    chosen = (burn, *thresholds.values())
    return rule, int(sum(t.errors for t in chosen)), float(min(t.margin for t in chosen))


def calibrate(labelled: list[Labelled], source: str = "") -> tuple[Calibration, dict]:
    """The best rule over Z_CANDIDATES for the labelled calibration branches, and how each
    candidate did (errors, margin) for the record."""
    if not any(item.truth == "none" for item in labelled) or not all(
            any(item.truth == component for item in labelled) for component in COMPONENTS):
        raise ValueError("calibration needs at least one control and one burn of each component")
    tried = {z: fit(labelled, z) for z in Z_CANDIDATES}
    best = min(Z_CANDIDATES, key=lambda z: (tried[z][1], -tried[z][2], z))
    return replace(tried[best][0], source=source), {str(z): {"errors": errors, "margin": round(margin, 4)}
                  for z, (_, errors, margin) in tried.items()}


def confusion(verdicts: list[Verdict], truths: list[str]) -> dict[str, dict[str, int]]:
    """truth -> named outcome -> count; a control's right answer is "none" (no burn)."""
    table = {truth: {outcome: 0 for outcome in OUTCOMES} for truth in ("unet", "text_encoder", "none")}
    for verdict, truth in zip(verdicts, truths):
        table[truth][verdict.implicates] += 1
    return table
