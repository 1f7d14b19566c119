"""Build every product of one analysis into an output folder, then the HTML report over them.

    products = build([open_run("runs/burn_unet"), open_run("runs/burn_te")], Path("runs/report"))

Layout of the output folder (all links in report.html are relative to it):
  report.html                         the report
  losses.png                          loss overlay of every branch
  metrics.json, detector.json         the metric table and the detector's verdicts
  summary.md                          both in Markdown (for a README)
  metrics/<metric>.png                each metric against checkpoint index, all branches
  <run>/<branch>/<prompt_set>/grid.png             rows = checkpoints, columns = seeds
  <run>/<branch>/<prompt_set>/checkpoint_<i>.png   the 3x3 grid of checkpoint i
  <run>/<branch>/<prompt_set>/progression.gif      a frame per checkpoint
  side_by_side/<prompt_set>.gif       UNet burn vs TE burn, when two branches are analysed
A local run also gets its own metrics.json and detector.json in RUN/analysis/.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from analysis import detector, report
from analysis.features import Instruments
from analysis.gifs import progression_frames, side_by_side_frames, write_gif
from analysis.grids import checkpoint_grid, comparison_grid
from analysis.images import SampleImages
from analysis.losses import DEFAULT_SMOOTHING, Series, plot_losses
from analysis.measure import MetricTable, measure
from analysis.metric_plots import plot_metrics
from analysis.model import BranchRef, Run
from analysis.tracking import log_results


@dataclass
class Options:
    log_scale: bool = False
    smoothing: float = DEFAULT_SMOOTHING
    k: float = detector.DEFAULT_K
    floors: dict[str, float] | None = None
    near_copy_distance: float = 0.04
    max_cell: int = 256
    wandb_project: str | None = None


@dataclass
class PromptSetProducts:
    """One prompt set on one branch: the comparison grid, 3x3 grids and progression GIF."""
    grid: Path
    checkpoint_grids: list[tuple[str, Path]]
    gif: Path


@dataclass
class Products:
    out: Path
    refs: list[BranchRef]
    losses_png: Path
    loss_series: list[Series]
    per_branch: dict[tuple[str, str], PromptSetProducts]   # (ref.title, prompt set) -> products
    side_by_side: dict[str, Path]
    side_by_side_pair: tuple[BranchRef, BranchRef] | None
    metric_plots: dict[str, Path]
    table: MetricTable
    verdicts: list[detector.Verdict]
    problems: list[str] = field(default_factory=list)
    logged_to: str | None = None
    report: Path | None = None


def build(runs: list[Run], out: Path, instruments: Instruments,
          options: Options | None = None) -> Products:
    options = options or Options()
    out.mkdir(parents=True, exist_ok=True)
    refs = [BranchRef(run, branch) for run in runs for branch in run.branches.values()]
    images = SampleImages()
    per_branch = {(ref.title, prompt_set): branch_products(images, ref, prompt_set, out, options)
                  for ref in refs for prompt_set in ref.run.prompt_sets()}
    pair = side_by_side_pair(refs)
    side_by_side = {} if pair is None else {
        prompt_set: write_gif(side_by_side_frames(images, *pair, prompt_set, options.max_cell),
                              out / "side_by_side" / f"{safe(prompt_set)}.gif")
        for prompt_set in dict.fromkeys(p for ref in pair for p in ref.run.prompt_sets())}
    table = measure(refs, images, instruments, options.near_copy_distance)
    verdicts = detector.detect(detector.branch_series(table), options.k, options.floors)
    products = Products(
        out=out, refs=refs,
        losses_png=out / "losses.png",
        loss_series=plot_losses(refs, out / "losses.png", log_scale=options.log_scale,
                                smoothing=options.smoothing),
        per_branch=per_branch, side_by_side=side_by_side, side_by_side_pair=pair,
        metric_plots=plot_metrics(table, refs, out / "metrics"), table=table, verdicts=verdicts,
        problems=[f"{run.name}: {problem}" for run in runs for problem in run.problems]
        + images.problems)
    write_results(out, table, verdicts, options)
    for run in runs:
        if run.local_dir is not None:
            write_results(run.local_dir / "analysis", filter_table(table, run.name),
                          [v for v in verdicts if v.run == run.name], options)
    products.logged_to = log_results(table, verdicts, project=options.wandb_project, directory=out)
    report.write_summary(products)
    products.report = report.write_report(products)
    return products


def branch_products(images: SampleImages, ref: BranchRef, prompt_set: str, out: Path,
                    options: Options) -> PromptSetProducts:
    folder = out / safe(ref.run.name) / safe(ref.branch.name) / safe(prompt_set)
    folder.mkdir(parents=True, exist_ok=True)
    grid = folder / "grid.png"
    comparison_grid(images, ref, prompt_set, options.max_cell).save(grid)
    checkpoint_grids = []
    for checkpoint in ref.branch.plan:
        path = folder / f"checkpoint_{checkpoint.index}.png"
        rows = ref.run.samples_of(ref.branch.name, prompt_set, checkpoint.index)
        checkpoint_grid(images, rows, checkpoint.label, options.max_cell).save(path)
        checkpoint_grids.append((checkpoint.label, path))
    gif = write_gif(progression_frames(images, ref, prompt_set, options.max_cell),
                    folder / "progression.gif")
    return PromptSetProducts(grid, checkpoint_grids, gif)


def side_by_side_pair(refs: list[BranchRef]) -> tuple[BranchRef, BranchRef] | None:
    """The UNet-burn branch and the TE-burn branch; else the first two branches; else None."""
    unet = next((ref for ref in refs if ref.branch.component == ("unet",)), None)
    text_encoder = next((ref for ref in refs if ref.trains_text_encoder_only), None)
    if unet and text_encoder:
        return unet, text_encoder
    return (refs[0], refs[1]) if len(refs) >= 2 else None


def safe(name: str) -> str:
    """A file-name-safe form of a run, branch or prompt-set name."""
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "_"


def filter_table(table: MetricTable, run: str) -> MetricTable:
    return MetricTable([row for row in table.rows if row["run"] == run], table.feature_space,
                       table.notes)


def write_results(folder: Path, table: MetricTable, verdicts: list[detector.Verdict],
                  options: Options) -> None:
    write_json(folder / "metrics.json", {"feature_space": table.feature_space,
                                         "notes": table.notes, "rows": table.rows})
    write_json(folder / "detector.json", detector.verdicts_json(verdicts, options.k, options.floors))


def write_json(path: Path, content: dict) -> None:
    """Atomically (temp file + rename), as every run-store file is written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        json.dump(content, file, indent=1)
    os.replace(temporary, path)
