"""Every product of one analysis, built into an output folder, then the HTML report over them.

    products = analyze(["runs/burn_unet", "runs/burn_te"], Options(out=Path("runs/report")))

Layout of the output folder (all links in report.html are relative to it):
  report.html                         the report
  losses.png                          loss overlay of every branch
  metrics.json, symptoms.json         the metric table and each branch's symptom profile
  attribution.json                    the component swap's pairs and verdicts (local runs)
  loss_stats.json                     per branch and stage: loss slopes, changes, roughness
  summary.md                          the swap verdicts, profiles, loss statistics and metrics in Markdown
  metrics/<metric>.png                each metric against checkpoint index, all branches
  <run>/<branch>/<prompt_set>/grid.png             rows = checkpoints, columns = seeds
  <run>/<branch>/<prompt_set>/checkpoint_<i>.png   the 3x3 grid of checkpoint i
  <run>/<branch>/<prompt_set>/progression.gif      a frame per checkpoint
  side_by_side/<prompt_set>.gif       UNet burn vs TE burn, when two branches are analysed
A local run also gets its own metrics.json, symptoms.json and attribution.json in RUN/analysis/.
"""

from __future__ import annotations

import re
from pathlib import Path

from burnlab.analysis import attribution, report, symptoms
from burnlab.analysis.features import Instruments, load_instruments
from burnlab.analysis.gifs import progression_frames, side_by_side_frames, write_gif
from burnlab.analysis.grids import checkpoint_grid, comparison_grid, labelled_grid
from burnlab.analysis.images import SampleImages
from burnlab.analysis.loss_stats import loss_statistics, statistics_json
from burnlab.analysis.losses import plot_losses
from burnlab.analysis.measure import MetricTable, measure
from burnlab.analysis.metric_plots import plot_metrics
from burnlab.analysis.results import Options, Products, PromptSetProducts
from burnlab.analysis.run import AnalysisError, BranchRef, Run
from burnlab.analysis.sources import WANDB_PREFIX, open_run
from burnlab.analysis.tracking import log_results
from burnlab.store.files import atomic_write_json  # the run store's one atomic writer
from burnlab.store.layout import ATTRIBUTION


def analyze(specs: list[str | Path], options: Options) -> Products:
    """Open the runs (folders or wandb: paths), load the instruments and build every product;
    raises AnalysisError for bad input."""
    check_options(options)
    out = Path(options.out) if options.out else default_out(str(specs[0]))
    runs = [open_run(str(spec), download_root=out / "wandb_artifacts") for spec in specs]
    distinct_names(runs)
    instruments = load_instruments(options.features, options.clip_model, use_probe=options.use_probe)
    return build_products(runs, out, instruments, options, attribution.AttributionRule.load(options.attribution_rule))


def check_options(options: Options) -> None:
    if not 0 <= options.smoothing < 1:
        raise AnalysisError(f"--smoothing {options.smoothing}: expected a number in [0, 1).")
    if options.max_cell < 8:
        raise AnalysisError(f"--max-cell {options.max_cell}: expected at least 8 pixels.")


def default_out(spec: str) -> Path:
    if spec.startswith(WANDB_PREFIX):
        return Path(f"analysis-{spec.rsplit('/', 1)[-1]}")
    return Path(spec) / "analysis"


def distinct_names(runs: list[Run]) -> None:
    """Two runs of the same study (e.g. two sweeps) get their folder in their name."""
    if len(runs) == 2 and runs[0].name == runs[1].name:
        for run in runs:
            run.name = f"{run.name} ({run.location})"


def build_products(
    runs: list[Run],
    out: Path,
    instruments: Instruments,
    options: Options,
    attribution_rule: attribution.AttributionRule,
) -> Products:
    out.mkdir(parents=True, exist_ok=True)
    refs = [BranchRef(run, branch) for run in runs for branch in run.branches.values()]
    images = SampleImages()
    per_branch = {
        (ref.title, prompt_set): branch_products(images, ref, prompt_set, out, options)
        for ref in refs
        for prompt_set in ref.run.prompt_sets()
    }
    pair = side_by_side_pair(refs)
    side_by_side = (
        {}
        if pair is None
        else {
            prompt_set: write_gif(
                side_by_side_frames(images, *pair, prompt_set, options.max_cell),
                out / "side_by_side" / f"{safe(prompt_set)}.gif",
            )
            for prompt_set in dict.fromkeys(p for ref in pair for p in ref.run.prompt_sets())
        }
    )
    table = measure(refs, images, instruments, options.near_copy_distance)
    profiles = symptoms.profile_all(symptoms.branch_series(table))
    attributions = [
        pair
        for run in runs
        if run.local_dir is not None
        for pair in attribution.attribute_run(run.local_dir, instruments, attribution_rule, run.name)
    ]
    products = Products(
        out=out,
        refs=refs,
        losses_png=out / "losses.png",
        loss_series=plot_losses(
            refs,
            out / "losses.png",
            log_scale=options.log_scale,
            smoothing=options.smoothing,
            relative=options.relative_losses,
        ),
        loss_statistics=loss_statistics(refs),
        per_branch=per_branch,
        side_by_side=side_by_side,
        side_by_side_pair=pair,
        metric_plots=plot_metrics(table, refs, out / "metrics"),
        table=table,
        profiles=profiles,
        attributions=attributions,
        swap_grids=swap_grids(images, attributions, out, options.max_cell),
        problems=[f"{run.name}: {problem}" for run in runs for problem in run.problems] + images.problems,
    )
    write_results(out, table, profiles, attributions)
    atomic_write_json(out / "loss_stats.json", statistics_json(products.loss_statistics))
    for run in runs:
        if run.local_dir is not None:
            write_results(
                run.local_dir / "analysis",
                filter_table(table, run.name),
                [p for p in profiles if p.run == run.name],
                [a for a in attributions if a.run == run.name],
            )
    products.logged_to = log_results(products, project=options.wandb_project, directory=out)
    report.write_summary(products)
    products.report = report.write_report(products)
    return products


def branch_products(
    images: SampleImages, ref: BranchRef, prompt_set: str, out: Path, options: Options
) -> PromptSetProducts:
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
    gif = write_gif(progression_frames(images, ref, prompt_set, options.max_cell), folder / "progression.gif")
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
    return MetricTable([row for row in table.rows if row["run"] == run], table.feature_space, table.notes)


def write_results(
    folder: Path, table: MetricTable, profiles: list[symptoms.Profile], attributions: list[attribution.Attribution]
) -> None:
    atomic_write_json(
        folder / "metrics.json", {"feature_space": table.feature_space, "notes": table.notes, "rows": table.rows}
    )
    atomic_write_json(folder / "symptoms.json", symptoms.profiles_json(profiles))
    atomic_write_json(folder / ATTRIBUTION, {"pairs": [pair.to_json() for pair in attributions]})


def swap_grids(
    images: SampleImages, attributions: list[attribution.Attribution], out: Path, max_cell: int
) -> dict[tuple[int, str], Path]:
    """(index in `attributions`, prompt set) -> the 2x2 swap grid (a row per corner, a column per
    seed) of each pair the report shows."""
    grids = {}
    for pair in attribution.shown(attributions):
        number = attributions.index(pair)
        folder = out / safe(pair.run) / safe(pair.branch) / "attribution" / safe(f"{pair.tuned} vs {pair.reference}")
        folder.mkdir(parents=True, exist_ok=True)
        for prompt_set in pair.by_prompt_set:
            path = folder / f"{safe(prompt_set)}.png"
            labelled_grid(
                images, f"{prompt_set} / seed", attribution.corner_rows(pair, prompt_set), max_cell, fit_labels=True
            ).save(path)
            grids[(number, prompt_set)] = path
    return grids


def diagnosis(out: Path, pair: attribution.Attribution) -> Path:
    """burnlab-diagnose's report: a swap grid per prompt set, the numbers and the verdict."""
    out = Path(out)
    images = SampleImages()
    grids = {}
    for prompt_set in pair.by_prompt_set:
        path = out / "analysis" / f"swap_{safe(prompt_set)}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        labelled_grid(
            images, f"{prompt_set} / seed", attribution.corner_rows(pair, prompt_set), 256, fit_labels=True
        ).save(path)
        grids[prompt_set] = path
    atomic_write_json(out / "analysis" / ATTRIBUTION, {"pairs": [pair.to_json()]})
    document = attribution.read_attribution_file(out / attribution.ATTRIBUTION)
    described = {side: document.get(side, {}).get("description", "") for side in ("reference", "tuned")}
    return report.write_diagnosis(out, pair, grids, images.problems, described)
