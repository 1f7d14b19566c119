"""Which component burned, decided by swapping: the numbers and the verdict of the swap corners.

    rule = AttributionRule.load()                      # burnlab/analysis/attribution_rule.json (make verdicts)
    found = attribute_run(run_dir, instruments, rule)  # run_dir/attribution.json -> [Attribution]
    found[0].verdict, found[0].sentence

burnlab samples, for a reference R and a tuned model M, the corners R, M_unet+R_te (the tuned UNet
with the reference text encoder), R_unet+M_te and M with the same prompts and seeds
(burnlab.attribution.swap, which writes attribution.json). Here:

- **How far a corner moved**: per prompt set and seed, the distance between the corner's image
  and R's image of the same seed, in the feature space of the instruments (CLIP, else the toy
  probe, else pixels), divided by the mean distance between two different seeds of R on that
  prompt: a corner at 1.0 is as far from R as another seed is. Averaged over seeds and prompt
  sets, so it is a mean per image: it does not grow with the number of prompts, seeds or
  checkpoints. Reported on all prompt sets, on those without the activation phrase (collateral
  damage) and on those with it (intended change).
- **Shares** (the Shapley split of the 2x2, R's distance being 0): the UNet's is
  (d(M_unet+R_te) + d(M) - d(R_unet+M_te)) / 2, the text encoder's the mirror image; they add up
  to d(M). The interaction is d(M) - d(M_unet+R_te) - d(R_unet+M_te). SDXL's three components
  (UNet, text_encoder, text_encoder_2) span a 2x2x2 cube of eight corners: each component's
  share is its Shapley value over the cube (its mean marginal distance over the orders in which
  the components could be swapped in), the shares add up to d(M) again, and the interaction is
  d(M) less the three single-swap corners.
- **Intervals**: a paired bootstrap over seeds (the same resampled seeds for every corner and
  prompt set), 95% percentile intervals.
- **Verdict**, one number (`threshold`, in seed spreads, chosen by make verdicts on calibration
  runs only): a component burned when its share's interval lies above the threshold, did not
  when it lies below; `unet`, `text_encoder`, `both`, `none`, or `undetermined` when an interval
  straddles the threshold (SDXL: `text_encoder_2` too, and the burned ones joined by `+` where
  more than one burned).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from burnlab.analysis.features import Instruments
from burnlab.analysis.images import load_rgb
from burnlab.analysis.run import AnalysisError
from burnlab.store.layout import ATTRIBUTION, COMPONENTS, IMAGE_INDEX, XL_COMPONENTS, swap_corners

RULE_FILE = Path(__file__).with_name("attribution_rule.json")  # written by make verdicts
CORNERS = tuple(swap_corners(COMPONENTS))  # SD's four: R, M_unet+R_te, R_unet+M_te, M
GROUPS = ("all prompts", "without the phrase", "with the phrase")
OUTCOMES = ("unet", "text_encoder", "both", "none", "undetermined")
# SDXL's: one component, any two or all three joined by +, none, undetermined
XL_OUTCOMES = (
    *["+".join(chosen) for size in (1, 2, 3) for chosen in itertools.combinations(XL_COMPONENTS, size)],
    "none",
    "undetermined",
)
RESAMPLES = 1000
BOOTSTRAP_SEED = 0
LEVEL = 0.95
NAMES = {"unet": "the UNet", "text_encoder": "the text encoder"}
XL_NAMES = {"unet": "the UNet", "text_encoder": "the first text encoder", "text_encoder_2": "the second text encoder"}
# corner titles: what each component is called in a corner's row of the swap grid
SHORT_LABELS = {"unet": "UNet", "text_encoder": "TE", "text_encoder_2": "TE2"}
XL_SHORT_LABELS = {"unet": "UNet", "text_encoder": "TE1", "text_encoder_2": "TE2"}


def component_names(components) -> dict[str, str]:
    return XL_NAMES if tuple(components) == XL_COMPONENTS else NAMES


def short_labels(components) -> dict[str, str]:
    """What each component is called in a table column or a swap grid's row."""
    return XL_SHORT_LABELS if tuple(components) == XL_COMPONENTS else SHORT_LABELS


@dataclass(frozen=True)
class AttributionRule:
    threshold: float  # a component burned when its share (in seed spreads) lies above this
    source: str = ""  # which runs chose it

    @classmethod
    def load(cls, path: Path | None = None) -> "AttributionRule":
        path = Path(path) if path else RULE_FILE
        try:
            data = json.loads(path.read_text())
            rule = cls(float(data["threshold"]), str(data.get("source", "")))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise AnalysisError(
                f"attribution rule {path}: not readable ({type(error).__name__}: {error}); "
                f"expected the JSON that `make verdicts` writes, with a number `threshold` "
                f"> 0."
            ) from None
        if not rule.threshold > 0:
            raise AnalysisError(f"attribution rule {path}: threshold {rule.threshold}; expected a number > 0.")
        return rule


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def text(self) -> str:
        return f"{self.value:.2f} [{self.low:.2f}, {self.high:.2f}]"


@dataclass
class Attribution:
    """One (reference, tuned) pair: corner distances per prompt group, the shares, the verdict."""

    run: str
    branch: str
    reference: str
    tuned: str
    feature_space: str
    seeds: int
    distances: dict[str, dict[str, Interval]]  # group -> corner -> distance from R in seed spreads
    by_prompt_set: dict[str, dict[str, float]]  # prompt set -> corner -> distance
    shares: dict[str, Interval]  # unet, text_encoder, interaction (all prompts)
    threshold: float
    statuses: dict[str, str]  # component -> burned / clear / unsure
    verdict: str
    sentence: str
    drift: dict = field(default_factory=dict)
    corners: dict[str, str] = field(default_factory=dict)  # corner -> its sample folder
    components: tuple = COMPONENTS  # the swapped components: SD's two, SDXL's three

    def to_json(self) -> dict:
        return asdict(self)


# -- reading the corners ------------------------------------------------------------------------
def corner_images(folder: Path) -> dict[str, dict[int, Path]]:
    """prompt set -> seed -> PNG path of one sample folder (its index.jsonl)."""
    index = folder / IMAGE_INDEX
    found: dict[str, dict[int, Path]] = {}
    try:
        lines = index.read_text(encoding="utf-8").splitlines()
        for line in lines:
            if line.strip():
                row = json.loads(line)
                found.setdefault(row["prompt_set"], {})[int(row["seed"])] = folder / row["path"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise AnalysisError(
            f"swap-corner samples {index}: unreadable ({type(error).__name__}: {error}); expected "
            f"the index.jsonl of a complete sample folder. Delete the folder and run the "
            f"study again to sample it anew."
        ) from None
    return found


def pixel_features(images: np.ndarray) -> np.ndarray:
    """The fallback feature space: pixels in [0, 1], flattened."""
    return images.reshape(len(images), -1).astype(np.float32) / 255.0


def corner_features(
    corners: dict[str, Path], instruments: Instruments
) -> tuple[dict[str, dict[str, np.ndarray]], list[int], str]:
    """corner -> prompt set -> features [N, D] in seed order, over the seeds every corner has."""
    paths = {name: corner_images(folder) for name, folder in corners.items()}
    prompt_sets = [p for p in paths["R"] if all(p in paths[name] for name in corners)]
    if not prompt_sets:
        raise AnalysisError(f"swap corners {corners['R']}: no prompt set is sampled in all {len(corners)} corners.")
    seeds = sorted(set.intersection(*(set(paths[name][p]) for name in corners for p in prompt_sets)))
    extract = instruments.features or pixel_features
    space = instruments.feature_space if instruments.features else "pixels"
    found: dict[str, dict[str, np.ndarray]] = {name: {} for name in corners}
    for prompt_set in prompt_sets:
        for name in corners:
            try:
                images = np.stack([load_rgb(paths[name][prompt_set][seed]) for seed in seeds])
            except (OSError, ValueError) as error:
                raise AnalysisError(
                    f"swap-corner sample of {prompt_set} in {corners[name]}: cannot be decoded "
                    f"({error}); delete that folder and run again to sample it anew."
                ) from None
            found[name][prompt_set] = np.asarray(extract(images), dtype=np.float64)
    return found, seeds, space


# -- the numbers ----------------------------------------------------------------------------------
def seed_spread(features: np.ndarray) -> float:
    """Mean distance between two different seeds' features (the unit of every distance)."""
    distances = np.linalg.norm(features[:, None] - features[None, :], axis=-1)
    n = len(features)
    return float(distances.sum() / (n * (n - 1))) if n > 1 else 0.0


def per_seed_distances(features: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """corner -> prompt set -> [N] distance of each seed's image from R's, in seed spreads."""
    found: dict[str, dict[str, np.ndarray]] = {name: {} for name in features}
    for prompt_set, reference in features["R"].items():
        unit = seed_spread(reference)
        if unit <= 0:
            raise AnalysisError(
                f"swap corners of {prompt_set}: the reference's seeds give identical images, so "
                f"there is no seed spread to measure in; sample at least 2 seeds "
                f"(sampling.images_per_prompt)."
            )
        for name in features:
            found[name][prompt_set] = np.linalg.norm(features[name][prompt_set] - reference, axis=-1) / unit
    return found


def shares_of(d: dict[str, np.ndarray], components: tuple = COMPONENTS) -> dict[str, np.ndarray]:
    """The Shapley split of the swap cube whose R corner is at 0 (each array: one value per
    resample): a component's share is the weighted mean of what swapping it in adds to every
    corner without it, weights |S|! (n - |S| - 1)! / n!. With two components that is
    (d(M_unet+R_te) + d(M) - d(R_unet+M_te)) / 2 for the UNet. The interaction is d(M) less
    every single-swap corner."""
    n = len(components)
    corners = swap_corners(tuple(components))
    value = {frozenset(chosen): d[name] for name, chosen in corners.items()}
    value[frozenset()] = 0.0  # R against itself
    shares = {}
    for component in components:
        others = [c for c in components if c != component]
        shares[component] = sum(
            math.factorial(size)
            * math.factorial(n - size - 1)
            / math.factorial(n)
            * (value[frozenset(chosen) | {component}] - value[frozenset(chosen)])
            for size in range(n)
            for chosen in itertools.combinations(others, size)
        )
    shares["interaction"] = d["M"] - sum(value[frozenset([c])] for c in components)
    return shares


def interval(values: np.ndarray, full: float) -> Interval:
    low, high = np.percentile(values, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    return Interval(round(float(full), 6), round(float(low), 6), round(float(high), 6))


def judge(shares: dict[str, Interval], threshold: float, components: tuple = COMPONENTS) -> tuple[dict[str, str], str]:
    statuses = {}
    for component in components:
        share = shares[component]
        statuses[component] = "burned" if share.low > threshold else "clear" if share.high < threshold else "unsure"
    if "unsure" in statuses.values():
        return statuses, "undetermined"
    burned = [c for c in components if statuses[c] == "burned"]
    if not burned:
        return statuses, "none"
    return statuses, "both" if len(components) == 2 and len(burned) == 2 else "+".join(burned)


def _listed(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def sentence(
    tuned: str,
    reference: str,
    shares: dict[str, Interval],
    statuses: dict[str, str],
    verdict: str,
    threshold: float,
    components: tuple = COMPONENTS,
) -> str:
    """One sentence whose numbers are the ones the verdict was read from."""
    names = component_names(components)
    first, *others = components
    accounts = [f"{names[first]} accounts for {shares[first].text()} seed spreads"]
    accounts += [f"{names[c]} for {shares[c].text()}" for c in others]
    moved = (
        f"Of the move from '{reference}' to '{tuned}', {_listed(accounts)} "
        f"(threshold {threshold:.2f}; interaction {shares['interaction'].value:+.2f})"
    )
    words = {"burned": "lies above", "clear": "lies below", "unsure": "straddles"}
    parts = [f"{names[c]}'s interval {words[statuses[c]]} it" for c in components]
    if verdict in ("none", "undetermined"):
        outcome = {"none": "neither burned" if len(components) == 2 else "none burned", "undetermined": "undetermined"}[
            verdict
        ]
    elif verdict == "both":
        outcome = "both burned"
    else:
        outcome = _listed([names[c] for c in verdict.split("+")]) + " burned"
    return f"{moved}: {_listed(parts)}, so {outcome}."


def attribute(
    features: dict[str, dict[str, np.ndarray]],
    activation: dict[str, bool],
    threshold: float,
    components: tuple = COMPONENTS,
) -> tuple[dict, dict, dict, dict[str, str], str]:
    """(distances per group, distances per prompt set, shares, statuses, verdict) of one pair;
    `features`: corner -> prompt set -> features, every corner of `components`' swap cube."""
    corners = tuple(swap_corners(tuple(components)))
    distances = per_seed_distances(features)
    prompt_sets = list(distances["R"])
    n = len(distances["R"][prompt_sets[0]])
    draws = np.random.default_rng(BOOTSTRAP_SEED).integers(0, n, size=(RESAMPLES, n))
    groups = {
        "all prompts": prompt_sets,
        "without the phrase": [p for p in prompt_sets if not activation.get(p, False)],
        "with the phrase": [p for p in prompt_sets if activation.get(p, False)],
    }
    by_group: dict[str, dict[str, Interval]] = {}
    shares: dict[str, Interval] = {}
    for group, members in groups.items():
        if not members:
            continue
        full = {name: float(np.mean([distances[name][p].mean() for p in members])) for name in corners}
        resampled = {
            name: np.mean([distances[name][p][draws].mean(axis=1) for p in members], axis=0) for name in corners
        }
        by_group[group] = {name: interval(resampled[name], full[name]) for name in corners}
        if group == "all prompts":
            full_shares = shares_of({name: np.asarray(full[name]) for name in corners}, components)
            shares = {
                key: interval(values, float(full_shares[key]))
                for key, values in shares_of(resampled, components).items()
            }
    by_prompt_set = {p: {name: round(float(distances[name][p].mean()), 6) for name in corners} for p in prompt_sets}
    statuses, verdict = judge(shares, threshold, components)
    return by_group, by_prompt_set, shares, statuses, verdict


def attribute_pair(
    record: dict,
    base: Path,
    activation: dict[str, bool],
    instruments: Instruments,
    rule: AttributionRule,
    run: str = "",
) -> Attribution:
    components = tuple(record.get("components") or COMPONENTS)  # records before SDXL are SD's
    corners = {name: (base / record["corners"][name]) for name in swap_corners(components)}
    features, seeds, space = corner_features(corners, instruments)
    by_group, by_prompt_set, shares, statuses, verdict = attribute(features, activation, rule.threshold, components)
    reference, tuned = record["reference"]["label"], record["tuned"]["label"]
    return Attribution(
        run,
        record.get("branch", ""),
        reference,
        tuned,
        space,
        len(seeds),
        by_group,
        by_prompt_set,
        shares,
        rule.threshold,
        statuses,
        verdict,
        sentence(tuned, reference, shares, statuses, verdict, rule.threshold, components),
        record.get("drift", {}),
        {name: str(folder) for name, folder in corners.items()},
        components,
    )


def read_attribution_file(path: Path) -> dict:
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(document.get("pairs"), list):
            raise ValueError("no list `pairs`")
    except (OSError, ValueError, AttributeError) as error:
        raise AnalysisError(
            f"{path}: not an attribution file ({type(error).__name__}: {error}); expected the "
            f"attribution.json a study or burnlab-diagnose writes. Run the study again "
            f"(its samples are cached) to write it anew."
        ) from None
    return document


def attribute_run(run_dir: Path, instruments: Instruments, rule: AttributionRule, run: str = "") -> list[Attribution]:
    """Every pair of a run dir's attribution.json ([] when the run has none)."""
    path = Path(run_dir) / ATTRIBUTION
    if not path.exists():
        return []
    document = read_attribution_file(path)
    activation = {name: bool(p.get("activation")) for name, p in document.get("prompts", {}).items()}
    return [attribute_pair(record, Path(run_dir), activation, instruments, rule, run) for record in document["pairs"]]


# -- which pairs a report shows -------------------------------------------------------------------
def shown(found: list[Attribution]) -> list[Attribution]:
    """Per branch: its final checkpoint against the baseline and against the base, and the
    first checkpoint whose verdict against the baseline is not `none` (the burn's onset)."""
    picked = []
    for key in dict.fromkeys((a.run, a.branch) for a in found):
        pairs = [a for a in found if (a.run, a.branch) == key]
        against_baseline = [a for a in pairs if a.reference == pairs[0].reference]
        onset = next((a for a in against_baseline if a.verdict != "none"), None)
        for pair in (onset, against_baseline[-1], pairs[-1]):
            if pair is not None and pair not in picked:
                picked.append(pair)
    return picked


def corner_title(name: str, from_tuned: tuple, pair: Attribution) -> str:
    """R: <reference>, M: <tuned>, else e.g. "tuned UNet + ref. TE" (SDXL: "... + ref. TE1 + tuned TE2")."""
    if name in ("R", "M"):
        return f"{name}: {pair.reference if name == 'R' else pair.tuned}"
    labels = short_labels(pair.components)
    return " + ".join(("tuned " if c in from_tuned else "ref. ") + labels[c] for c in pair.components)


def corner_rows(pair: Attribution, prompt_set: str) -> list[tuple[str, list]]:
    """(row label, SampleRows) of one prompt set's corners, for burnlab.analysis.grids.labelled_grid."""
    from burnlab.analysis.run import SampleRow

    rows = []
    for name, from_tuned in swap_corners(tuple(pair.components)).items():
        title = corner_title(name, from_tuned, pair)
        distance = pair.by_prompt_set.get(prompt_set, {}).get(name)
        label = title if name == "R" or distance is None else f"{title} ({distance:.2f})"
        images = corner_images(Path(pair.corners[name])).get(prompt_set, {})
        rows.append(
            (
                label,
                [
                    SampleRow(pair.branch, 0, label, "", prompt_set, "", False, seed, path)
                    for seed, path in sorted(images.items())
                ],
            )
        )
    return rows
