"""burnlab-analyze: grids, GIFs, loss overlay, metrics, component-swap verdicts, symptom profiles and an HTML report.

    burnlab-analyze runs/burn_unet                                  # -> runs/burn_unet/analysis/
    burnlab-analyze runs/burn_unet --compare runs/burn_te --out runs/report
    burnlab-analyze wandb:entity/project/run_id --out report        # needs a W&B key
    burnlab-analyze runs/burn_unet_multirun                         # a sweep: one report across its jobs
    burnlab-analyze RUN1 RUN2 RUN3 --out runs/lr_report --checkpoints 650,final   # any runs of one study

Bad input (not a run folder, a W&B path without a key, a corrupt file, runs of different
studies in a sweep) ends with one paragraph naming the path or key, the value and what is
expected, and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from burnlab import analysis
from burnlab.analysis.defaults import (
    DEFAULT_SMOOTHING,
    FEATURE_SPACES,
    NEAR_COPY_DISTANCE,
)
from burnlab.analysis.results import BaseProducts, Options
from burnlab.analysis.sweep.jobs import is_multirun

USAGE_ERROR = 2


def parser() -> argparse.ArgumentParser:
    arguments = argparse.ArgumentParser(
        prog="burnlab-analyze",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    arguments.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="a run folder, or wandb:entity/project/run_id; several runs, or a "
        "sweep's multirun folder (e.g. runs/burn_unet_multirun), make one sweep report",
    )
    arguments.add_argument("--compare", metavar="RUN2", help="a second run (e.g. the TE burn)")
    arguments.add_argument(
        "--out",
        type=Path,
        help="output folder (default: RUN/analysis; for a "
        "W&B run: ./analysis-<run_id>; for a sweep: MULTIRUN/analysis, for a list "
        "of runs ./analysis-sweep)",
    )
    arguments.add_argument(
        "--checkpoints",
        metavar="LIST",
        help="sweep report: the checkpoints its grids and metric plots show, "
        "comma-separated: 'final', a study epoch (e.g. 650) or a testing-plan label "
        "(e.g. 'unet_hi e100') (default: where the jobs start to differ, and final)",
    )
    arguments.add_argument("--log-scale", action="store_true", help="log-scale loss axes")
    arguments.add_argument(
        "--relative-losses",
        action="store_true",
        help="plot validation and stabilized loss minus their stage's first pass, "
        "as EveryDream2 logs them (their axes stay linear)",
    )
    arguments.add_argument(
        "--smoothing", type=float, default=DEFAULT_SMOOTHING, help="EMA weight of the smoothed train loss, in [0, 1)"
    )
    arguments.add_argument(
        "--near-copy",
        type=float,
        default=NEAR_COPY_DISTANCE,
        help="distance of standardized pixels (0-2; mirror images included) under which a sample "
        "is a near-copy of a training image",
    )
    arguments.add_argument(
        "--features",
        choices=FEATURE_SPACES,
        default="auto",
        help="feature space: CLIP if --clip-model is given, else the toy probe",
    )
    arguments.add_argument(
        "--clip-model",
        metavar="DIR_OR_HUB_ID",
        help="CLIP for CLIP score and CLIP features: a local model folder, or a hub "
        "id such as openai/clip-vit-large-patch14 (local Hugging Face cache first, "
        "else downloaded; unreachable: noted in the report)",
    )
    arguments.add_argument(
        "--no-probe", action="store_true", help="do not use the toy probe (e.g. for a real SD model)"
    )
    arguments.add_argument("--max-cell", type=int, default=256, help="largest grid cell side, px")
    arguments.add_argument(
        "--wandb-project",
        help="log metrics and verdicts to a new W&B run of this project (an active wandb.run is always used)",
    )
    return arguments


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    options = Options(
        out=args.out,
        features=args.features,
        clip_model=args.clip_model,
        use_probe=not args.no_probe,
        log_scale=args.log_scale,
        relative_losses=args.relative_losses,
        smoothing=args.smoothing,
        near_copy_distance=args.near_copy,
        max_cell=args.max_cell,
        wandb_project=args.wandb_project,
        checkpoints=tuple(args.checkpoints.split(",")) if args.checkpoints else (),
    )
    try:
        products = build(args.runs, args.compare, options)
    except analysis.AnalysisError as error:
        print(f"burnlab-analyze: {error}", file=sys.stderr)
        return USAGE_ERROR
    except OSError as error:  # e.g. an --out folder that cannot be written
        print(
            f"burnlab-analyze: {error.filename or ''}: {error.strerror or error}; expected readable "
            f"run files and a writable output folder (--out).",
            file=sys.stderr,
        )
        return USAGE_ERROR
    from burnlab.analysis.report import (
        headlines,  # loads the metrics' modules: only once the analysis ran
    )

    for line in headlines(products):
        print(line)
    if products.problems or products.table.notes:
        print(
            f"{len(products.problems)} problem(s) and {len(products.table.notes)} note(s): "
            f"see the report's 'Missing or not measured' section."
        )
    print(f"report: {products.report}")
    return 0


def build(runs: list[str], compare: str | None, options: Options) -> BaseProducts:
    """One run, or RUN --compare RUN2: the run report; several runs or a multirun folder: the
    sweep report."""
    if not compare and (len(runs) > 1 or is_multirun(runs[0])):
        return analysis.build_sweep(runs, options)
    if len(runs) > 1:
        raise analysis.AnalysisError(
            f"--compare {compare} was given with {len(runs)} runs ({' '.join(runs)}); "
            f"expected one run beside it (RUN --compare RUN2), or several runs "
            f"without --compare for a sweep report."
        )
    if options.checkpoints:
        raise analysis.AnalysisError(
            f"--checkpoints {','.join(options.checkpoints)} applies to a sweep report "
            f"(several runs, or a multirun folder); a run's report shows every "
            f"checkpoint of its testing plan."
        )
    return analysis.build([spec for spec in (runs[0], compare) if spec], options)


if __name__ == "__main__":
    sys.exit(main())
