"""Component-swap attribution, the harness's half: the swap corners' samples and the instruments.

For a reference model R and a tuned model M (each a UNet and a text encoder) the four corners

    R,   M_unet+R_te,   R_unet+M_te,   M

are sampled with the testing plan's prompts, seeds and sampler, through the study's Sampler: a
corner equal to a sampled checkpoint (R and M themselves, or a hybrid whose swapped component is
the same in both, as the frozen text encoder of a UNet burn) comes from the sample cache, and a
LoRA checkpoint's adapters are swapped per component. Beside them, the instruments that need no
sampling (burnlab.attribution.drift). What the corners say (distances, intervals, the Shapley split, the
verdict) is the analysis's work (burnlab/analysis/attribution.py), which reads what this writes:

    run_dir/attribution.json   {"pairs": [{branch, reference, tuned, corners, drift}, ...]}

In a study each branch is attributed at every checkpoint after the baseline against the baseline
(for a single-component branch its hybrids equal R or M: no new samples) and at its final
checkpoint against the base model. `burnlab-diagnose` calls `attribute_pair` on models a user
brings (burnlab.attribution.diagnose).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from burnlab.attribution import drift
from burnlab.models.checkpoint import base_sources, component_sources
from burnlab.models.encoding import TextConditioner
from burnlab.sampling.sampler import Component, Sampler, sample_jobs
from burnlab.store.files import atomic_write_json, hash_json, read_json
from burnlab.store.layout import ATTRIBUTION, TRAINABLE, swap_corners

log = logging.getLogger("burnlab")


@dataclass
class Model:
    """One side of a pair: a label for people, an id for the sample cache (equal ids: equal
    weights), and its components (Sources to load, or modules in memory)."""

    label: str
    id: str
    components: Dict[str, Component]


def corner_components(reference: Model, tuned: Model, from_tuned: Tuple[str, ...]) -> Dict[str, Component]:
    return {name: (tuned if name in from_tuned else reference).components[name] for name in reference.components}


def corner_id(reference: Model, tuned: Model, from_tuned: Tuple[str, ...]) -> str:
    """The sample cache's key of a corner: R's or M's own id where the corner has exactly its
    components (so the testing plan's samples serve), else an id of its own."""
    components = corner_components(reference, tuned, from_tuned)
    for model in (reference, tuned):
        if all(components[name] == model.components[name] for name in components):
            return model.id
    return hash_json(["swap", reference.id, tuned.id, sorted(from_tuned)])


def attribute_pair(
    sampler: Sampler,
    reference: Model,
    tuned: Model,
    relative_to: Path,
    conditioner: TextConditioner,
    noise_scheduler,
    drift_measured: Optional[dict] = None,
) -> dict:
    """Sample the 2^n corners (cached; SD's four, SDXL's eight) and measure the instruments
    (unless `drift_measured` holds them: a study run again); the record that attribution.json
    holds, its folders relative to `relative_to`."""
    components = tuple(sorted(reference.components, key=TRAINABLE.index))  # unet, text_encoder[, text_encoder_2]
    corners = {}
    for name, from_tuned in swap_corners(components).items():
        folder = sampler.checkpoint_samples(
            corner_id(reference, tuned, from_tuned), corner_components(reference, tuned, from_tuned)
        )
        corners[name] = os.path.relpath(folder, relative_to)
    prompts = [job["prompt"] for job in sample_jobs(sampler.config)]
    measured = drift_measured or drift.measure(
        reference.components,
        tuned.components,
        conditioner,
        noise_scheduler,
        list(dict.fromkeys(prompts)),
        sampler.device,
    )
    return {
        "components": list(components),
        "reference": {"label": reference.label, "id": reference.id},
        "tuned": {"label": tuned.label, "id": tuned.id},
        "corners": corners,
        "drift": measured,
    }


def prompt_sets(config) -> dict:
    """attribution.json's `prompts`: each prompt set's text and whether it holds the activation phrase."""
    return {
        job["prompt_set"]: {"prompt": job["prompt"], "activation": job["activation"]} for job in sample_jobs(config)
    }


def study_pairs(study: dict, run_dir: Path) -> List[Tuple[str, Model, Model]]:
    """(branch, R, M) for every pair a study attributes: each checkpoint after the baseline
    against the baseline, the final one against the base model too."""
    pairs = []
    for branch, plan in study["testing_plan"].items():
        if len(plan) < 3:  # no checkpoint after the baseline
            continue
        models = [_plan_model(entry, study, run_dir) for entry in plan]
        pairs += [(branch, models[1], tuned) for tuned in models[2:]]
        pairs.append((branch, models[0], models[-1]))
    return pairs


def _plan_model(entry: dict, study: dict, run_dir: Path) -> Model:
    sources = base_sources(study["base"]) if entry["dir"] is None else component_sources(run_dir / entry["dir"])
    return Model(entry["label"], entry["checkpoint_id"], sources)


def _measured_before(path: Path) -> Dict[Tuple[str, str, str], dict]:
    """(branch, reference id, tuned id) -> the drift a previous run of the study measured: equal
    ids are equal weights, so a study run again does not load every pair's models anew. An
    unreadable file is measured again."""
    try:
        pairs = read_json(path)["pairs"]
        return {(p["branch"], p["reference"]["id"], p["tuned"]["id"]): p["drift"] for p in pairs}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def attribute_study(
    sampler: Sampler, study: dict, run_dir: Path, conditioner: TextConditioner, noise_scheduler, stop_check=None
) -> Optional[dict]:
    """Every pair of `study_pairs` into run_dir/attribution.json (the main process writes it);
    `stop_check()` is called after each pair (a signal stops the study there)."""
    records = []
    measured = _measured_before(Path(run_dir) / ATTRIBUTION) if sampler.accelerator.num_processes == 1 else {}
    for branch, reference, tuned in study_pairs(study, Path(run_dir)):
        drift = measured.get((branch, reference.id, tuned.id))
        records.append(
            {
                "branch": branch,
                **attribute_pair(sampler, reference, tuned, Path(run_dir), conditioner, noise_scheduler, drift),
            }
        )
        if stop_check:
            stop_check()
    document = {"prompts": prompt_sets(sampler.config), "pairs": records}
    if sampler.accelerator.is_main_process:
        atomic_write_json(Path(run_dir) / ATTRIBUTION, document)
    log.info("attribution: %d pairs of swap corners in %s", len(records), Path(run_dir) / ATTRIBUTION)
    return document
