"""Mirror the metric table, the symptom profiles and the component swap's verdicts to W&B.

    log_results(products, project="burnlab")   # or into the active wandb.run, if any
    branch_summary(products, profile)          # one branch's run-summary values (burnlab's trackers too)

Logs into the W&B run already active in this process (wandb.run), else into a new run of
`project` (job_type "analysis") when a project is given; otherwise does nothing. wandb is
imported only then; WANDB_MODE=offline works (the tests use it).
"""

from __future__ import annotations

import sys
from pathlib import Path

from burnlab.analysis.report import final_against_baseline
from burnlab.analysis.results import BaseProducts
from burnlab.analysis.symptoms import SYMPTOM_NAMES, Profile

PAIR_COLUMNS = ("run", "branch", "reference", "tuned", "verdict", "sentence")


def branch_summary(products: BaseProducts, profile: Profile) -> dict:
    """A branch's run-summary values: the swap verdict of its final checkpoint against the baseline
    (None without swap corners) and its symptom profile (symptoms/<symptom>)."""
    pair = final_against_baseline(products.attributions, profile.run, profile.branch)
    return {
        "attribution/verdict": pair.verdict if pair else None,
        "attribution/sentence": pair.sentence if pair else None,
        "attribution/unet_share": pair.shares["unet"].value if pair else None,
        "attribution/text_encoder_share": pair.shares["text_encoder"].value if pair else None,
        # SDXL's second text encoder (absent on SD)
        **(
            {"attribution/text_encoder_2_share": pair.shares["text_encoder_2"].value}
            if pair and "text_encoder_2" in pair.shares
            else {}
        ),
        **{f"symptoms/{name}": profile.symptoms[name] for name in SYMPTOM_NAMES},
    }


def log_results(products: BaseProducts, *, project: str | None = None, directory: Path | None = None) -> str | None:
    """Log to W&B; returns where it went (the run's name and mode), or None if not logged."""
    loaded = sys.modules.get("wandb")
    active = getattr(loaded, "run", None)
    if active is None and not project:
        return None
    import wandb

    run = active or wandb.init(project=project, job_type="analysis", dir=str(directory) if directory else None)
    rows = products.table.rows
    columns = list(rows[0]) if rows else []
    run.log(
        {
            "analysis/metrics": wandb.Table(columns=columns, data=[[row[c] for c in columns] for row in rows]),
            "analysis/symptoms": wandb.Table(
                columns=["run", "branch", "component", *SYMPTOM_NAMES, "summary"],
                data=[
                    [p.run, p.branch, p.component, *[p.symptoms[name] for name in SYMPTOM_NAMES], p.summary()]
                    for p in products.profiles
                ],
            ),
            "analysis/attribution": wandb.Table(
                columns=[*PAIR_COLUMNS, "unet_share", "text_encoder_share", "text_encoder_2_share"],
                data=[
                    [getattr(pair, c) for c in PAIR_COLUMNS]
                    + [pair.shares["unet"].value, pair.shares["text_encoder"].value]
                    + [pair.shares["text_encoder_2"].value if "text_encoder_2" in pair.shares else None]
                    for pair in products.attributions
                ],
            ),
        }
    )
    for profile in products.profiles:
        # one W&B run may hold several branches: the run and branch go into each key
        for key, value in branch_summary(products, profile).items():
            group, name = key.split("/", 1)
            run.summary[f"{group}/{profile.run}/{profile.branch}/{name}"] = value
    where = f"W&B run {run.name} ({run.settings.mode})"
    if active is None:
        run.finish()
    return where
