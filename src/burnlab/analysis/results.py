"""What one analysis is asked to do (Options) and what it made (Products; a sweep report's:
SweepProducts).

    import burnlab.analysis
    products = analysis.build(["runs/burn_unet", "runs/burn_te"], analysis.Options(out=Path("runs/report")))
    products.report, products.attributions, products.profiles, products.table
    sweep = analysis.build_sweep(["runs/burn_unet_multirun"])
    sweep.report, sweep.sweep.jobs, sweep.grids

Only dataclasses and defaults: importing this module loads nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from burnlab.analysis.defaults import DEFAULT_SMOOTHING, NEAR_COPY_DISTANCE

if TYPE_CHECKING:  # annotations only
    from burnlab.analysis.attribution import Attribution
    from burnlab.analysis.loss_stats import StageLossStats
    from burnlab.analysis.losses import Series
    from burnlab.analysis.measure import MetricTable
    from burnlab.analysis.run import BranchRef
    from burnlab.analysis.sweep.jobs import Sweep
    from burnlab.analysis.symptoms import Profile


@dataclass
class Options:
    out: Path | None = None  # output folder; None: RUN/analysis (a W&B run: ./analysis-<run_id>)
    features: str = "auto"  # feature space: auto (CLIP if clip_model, else the toy probe), probe, clip, none
    clip_model: str | Path | None = None  # a hub id (local Hugging Face cache, else downloaded) or a local CLIP folder
    use_probe: bool = True  # the toy probe (toy-world runs only)
    log_scale: bool = False  # log-scale loss axes
    relative_losses: bool = False  # validation and stabilized loss minus their stage's first pass
    smoothing: float = DEFAULT_SMOOTHING  # EMA weight of the smoothed train loss, in [0, 1)
    attribution_rule: Path | None = None  # the swap verdict's threshold; None: burnlab/analysis/attribution_rule.json
    near_copy_distance: float = NEAR_COPY_DISTANCE  # memorisation threshold
    max_cell: int = 256  # largest grid cell side, px
    wandb_project: str | None = None  # log metrics, swap verdicts and profiles to a new W&B run of this project
    checkpoints: tuple[str, ...] = ()  # sweep report: which checkpoints its grids and plots show
    # ("final", a study epoch, a testing-plan label); () = where the jobs start to differ + final


@dataclass
class PromptSetProducts:
    """One prompt set on one branch: the comparison grid, 3x3 grids and progression GIF."""

    grid: Path
    checkpoint_grids: list[tuple[str, Path]]
    gif: Path


@dataclass(kw_only=True)
class BaseProducts:
    """What every report is made of: the loss overlay, metric table and plots, symptom profiles,
    the component swap's verdicts, what is missing, and where it all went."""

    out: Path
    refs: list[BranchRef]
    losses_png: Path
    loss_series: list[Series]
    metric_plots: dict[str, Path]
    table: MetricTable
    profiles: list[Profile]  # a symptom profile per branch (describes; blames nothing)
    attributions: list[Attribution] = field(default_factory=list)  # the swap corners' verdicts (local runs)
    swap_grids: dict[tuple[int, str], Path] = field(default_factory=dict)  # (index in attributions, prompt set) -> grid
    problems: list[str] = field(default_factory=list)
    logged_to: str | None = None
    report: Path | None = None


@dataclass(kw_only=True)
class Products(BaseProducts):
    """A run's report, or two runs side by side."""

    loss_statistics: list[StageLossStats]
    per_branch: dict[tuple[str, str], PromptSetProducts]  # (ref.title, prompt set) -> products
    side_by_side: dict[str, Path]
    side_by_side_pair: tuple[BranchRef, BranchRef] | None


@dataclass
class ValueGrid:
    """One grid of a sweep report: a row per job (its label, and the label of the checkpoint
    shown, None where the job has no such checkpoint), a column per seed."""

    branch: str
    prompt_set: str
    choice: str
    path: Path
    rows: list[tuple[str, str | None]]


@dataclass(kw_only=True)
class SweepProducts(BaseProducts):
    """A sweep report; `refs` holds a branch of a job each, the jobs in swept-value order."""

    sweep: Sweep
    grids: list[ValueGrid]
